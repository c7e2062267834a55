"""The example workflows in workflows/: files and template discovery, editor (UI) format validity against the
nodes' current INPUT_TYPES, UI <-> API twins, every API workflow run on the tiny models through the node
classes (core ComfyUI nodes replaced by stand-ins, see workflow_executor.make_stand_ins), and, with
in tests/test_workflows_server.py, every workflow run in a real ComfyUI server.

    python -m pytest -q tests/test_workflows.py
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workflow_executor
import workflow_support as ws
from workflow_support import LORA_NAMES, SIZE, STEPS, load_api, load_ui

EXPECTED = ("turbo_t2i", "base_cfg", "prompt_enhancer_turbo", "lora_stack", "img2img", "inpaint", "adaln_variety",
            "native_mixed", "ksampler_bridge", "low_vram_fast", "controlnet_canny", "nag_turbo",
            "controlnet_depth_pose", "controlnet_inpaint", "controlnet_tile_upscale",
            "nag_ksampler", "distributed_turbo_t2i", "lora_training")
INDEX = json.loads(ws.INDEX_PATH.read_text(encoding="utf-8"))
NAMES = [w["name"] for w in INDEX["workflows"]]
# ComfyUI v0.18.1 app/custom_node_manager.py: the folders it serves templates from, and its glob per folder
COMFY_TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


@pytest.fixture(scope="module")
def maps(pack):
    return pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS


# ------------------------------------------------------------------------------------ files, discovery

def test_every_pack_node_appears_in_an_example_workflow(maps):
    used = {n["class_type"] for name in NAMES for n in load_api(name).values()}
    assert sorted(set(maps[0]) - used) == []

def test_the_workflow_set_and_its_index():
    assert INDEX["schema"] == "zimage-nodes/workflow-index/1"
    assert sorted(NAMES) == sorted(EXPECTED)
    assert sum(bool(w.get("default")) for w in INDEX["workflows"]) == 1 and INDEX["workflows"][0]["name"] == "turbo_t2i"
    for w in INDEX["workflows"]:
        assert len(w["title"]) >= 10 and len(w["description"]) >= 40, w["name"]
        assert (ws.WORKFLOWS_DIR / w["ui"]).is_file() and (ws.WORKFLOWS_DIR / w["api"]).is_file()
        assert w["ui"] == f"{w['name']}.json" and w["api"] == f"api/{w['name']}.json"
        api = load_api(w["name"])
        used = {v for n in api.values() for k, v in n["inputs"].items()
                if isinstance(v, str) and v.endswith((".safetensors", ".gguf"))}
        assert used == {m["name"] for m in w["models"]}, w["name"]
    assert sorted(p.stem for p in ws.API_DIR.glob("*.json")) == sorted(NAMES)
    readme = (ws.WORKFLOWS_DIR / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}`" in readme, f"workflows/README.md does not list {name}"


def test_comfyui_template_browser_lists_exactly_the_editor_workflows(tmp_path):
    """Emulates ComfyUI's /workflow_templates: glob custom_nodes/*/<folder>/*.json for each folder name it
    knows. Only the editor-format files may match (not meta/index.json, not api/*.json)."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "zimage_nodes").symlink_to(ws.REPO_ROOT, target_is_directory=True)
    found = {}
    for folder in COMFY_TEMPLATE_FOLDERS:
        for f in glob.glob(os.path.join(custom_nodes, f"*/{folder}/*.json")):
            found.setdefault(os.path.basename(os.path.dirname(os.path.dirname(f))), []).append(Path(f).stem)
    assert sorted(found["zimage_nodes"]) == sorted(NAMES)
    assert [f for f in COMFY_TEMPLATE_FOLDERS if (ws.REPO_ROOT / f).exists()] == ["workflows"]
    for name in NAMES:
        assert "nodes" in load_ui(name) and "version" in load_ui(name)  # every listed file loads in the editor


def test_build_script_output_is_committed(maps):
    spec = importlib.util.spec_from_file_location("zimage_workflows_build", ws.WORKFLOWS_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    files = build.build(*maps)
    stale = [rel for rel, text in files.items() if (ws.WORKFLOWS_DIR / rel).read_text(encoding="utf-8") != text]
    assert not stale, f"run `python workflows/build.py`: out of date: {stale}"
    assert sorted(files) == sorted([f"{n}.json" for n in NAMES] + [f"api/{n}.json" for n in NAMES] + ["meta/index.json"])


# ------------------------------------------------------------------------------------------ UI format

def test_frontend_widget_order(maps):
    """The widget order of frontend 1.42.8 (checked in a browser: loadGraphData, then the node's widgets):
    control_after_generate after every seed (ZImageConditioningVariance's seed has no option and still gets
    one, by name), optional widget inputs after the required ones, LoadImage's upload button."""
    def names(t):
        return [w.name for w in ws.frontend_widgets(ws.node_spec(t, *maps))]

    assert names("ZImageSampler") == ["seed", "control_after_generate", "steps", "cfg", "shift", "denoise",
                                      "cfg_truncation", "cfg_normalization", "sampler_name", "scheduler"]
    assert names("ZImagePromptEnhancer") == ["prompt", "preset", "seed", "control_after_generate", "max_new_tokens",
                                             "temperature", "system_prompt", "endpoint_url", "endpoint_model"]
    assert names("ZImageConditioningVariance") == ["strength", "until", "seed", "control_after_generate"]
    assert names("ZImageDiTLoader") == ["dit_name", "weight_dtype", "memory"]
    assert names("ZImageVAEDecode") == ["tiled"]
    assert names("LoadImage") == ["image", "upload"]
    defaults = {w.name: w.default for w in ws.frontend_widgets(ws.node_spec("ZImagePromptEnhancer", *maps))}
    assert defaults["control_after_generate"] == "fixed"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_valid_for_the_current_nodes(name, maps):
    errs = ws.validate_ui(load_ui(name), *maps)
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize("name", NAMES)
def test_ui_layout_titles_and_notes(name, maps):
    wf = load_ui(name)
    boxes = ws.node_boxes(wf)
    ids = sorted(boxes)
    overlaps = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if ws.boxes_overlap(boxes[a], boxes[b])]
    assert not overlaps, f"overlapping nodes: {overlaps}"
    groups = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                            g["bounding"][1] + g["bounding"][3])) for g in wf["groups"]]
    for i, (title, gb) in enumerate(groups):
        assert not any(ws.boxes_overlap(gb, other) for _, other in groups[i + 1:]), f"group {title} overlaps"
        inside = [nid for nid, b in boxes.items() if ws.box_inside(b, gb)]
        assert inside, f"empty group {title}"
        for nid, b in boxes.items():
            assert nid in inside or not ws.boxes_overlap(b, gb), f"node {nid} half inside group {title}"
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and len(notes[0]["widgets_values"][0]) > 200
    api = load_api(name)
    titles = [n["_meta"]["title"] for n in api.values()]
    assert len(set(titles)) == len(titles), f"duplicate titles (api_client resolves nodes by title): {titles}"


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twins_describe_the_same_graph(name, maps):
    converted = ws.ui_to_api(load_ui(name), *maps)
    api = load_api(name)
    assert ws.strip_meta(converted) == ws.strip_meta(api)
    assert {k: v["_meta"] for k, v in converted.items()} == {k: v["_meta"] for k, v in api.items()}


def test_ui_to_api_handles_dynamic_prompts_and_helper_widgets(maps):
    wf = load_ui("turbo_t2i")
    enc = next(n for n in wf["nodes"] if n["type"] == "ZImageTextEncode")
    enc["widgets_values"] = ["a fox /* comment */ in \\{snow\\} // note"]
    samp = next(n for n in wf["nodes"] if n["type"] == "ZImageSampler")
    api = ws.ui_to_api(wf, *maps)
    assert api[str(enc["id"])]["inputs"]["text"] == "a fox  in {snow} "
    assert "control_after_generate" not in api[str(samp["id"])]["inputs"]
    enc["widgets_values"] = ["a {red|blue} fox"]
    with pytest.raises(ValueError, match="random"):
        ws.ui_to_api(wf, *maps)


def test_validators_catch_broken_workflows(maps):
    wf = load_ui("turbo_t2i")
    samp = next(n for n in wf["nodes"] if n["type"] == "ZImageSampler")
    samp["widgets_values"][2] = 0  # steps below min
    samp["widgets_values"][1] = "sometimes"
    latent = next(n for n in wf["nodes"] if n["type"] == "ZImageEmptyLatent")
    latent["widgets_values"][1] = 1000  # not a multiple of 16
    dit = next(n for n in wf["nodes"] if n["type"] == "ZImageDiTLoader")
    dit["widgets_values"] = dit["widgets_values"][:2]  # a widget missing
    errs = "\n".join(ws.validate_ui(wf, *maps))
    for part in ("steps: 0 outside", "control_after_generate 'sometimes'", "width: 1000 is not on the widget's step",
                 "2 widget values"):
        assert part in errs, errs
    wf = load_ui("turbo_t2i")
    wf["links"][0][5] = "LATENT"
    assert "type LATENT but the output is" in "\n".join(ws.validate_ui(wf, *maps))

    api = load_api("native_mixed")
    s = ws.find_node(api, "ZImageSampler")
    api[s]["inputs"]["latent"] = [ws.find_node(api, "VAELoader"), 0]
    api[s]["inputs"]["cfg"] = "1.0"
    del api[s]["inputs"]["positive"]
    api[ws.find_node(api, "ZImageDiTLoader")]["inputs"]["weight_dtype"] = "fp4"
    errs = "\n".join(ws.validate_api(api, *maps))
    for part in ("latent (LATENT) linked to a VAE output", "cfg: '1.0' is not a number", "required input positive",
                 "'fp4' not in"):
        assert part in errs, errs


# ----------------------------------------------------------------------------------------- API format

@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_is_valid_for_the_current_nodes(name, maps):
    errs = ws.validate_api(load_api(name), *maps)
    assert not errs, "\n".join(errs)


def _inp(g, class_type, key=None):
    node = g[ws.find_node(g, class_type)]["inputs"]
    return node if key is None else node[key]


def _src(g, link):
    return g[link[0]]["class_type"], link[1]


def test_workflows_have_the_documented_settings():
    t = load_api("turbo_t2i")
    assert _inp(t, "ZImageDiTLoader") == {"dit_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "auto",
                                          "memory": "auto"}
    assert _inp(t, "ZImageTextEncoderLoader", "text_encoder_name") == "qwen_3_4b.safetensors"
    assert _inp(t, "ZImageVAELoader", "vae_name") == "ae.safetensors"
    s = _inp(t, "ZImageSampler")
    assert (s["steps"], s["cfg"], s["shift"], s["denoise"]) == (8, 1.0, 3.0, 1.0) and "negative" not in s
    lat = _inp(t, "ZImageEmptyLatent")
    assert (lat["resolution"], lat["width"], lat["height"]) == ("custom", 1024, 1024)
    assert _src(t, _inp(t, "SaveImage", "images")) == ("ZImageVAEDecode", 0)

    b = load_api("base_cfg")
    assert _inp(b, "ZImageDiTLoader", "dit_name") == "z_image_bf16.safetensors"
    s = _inp(b, "ZImageSampler")
    assert s["cfg"] == 4.0 and 25 <= s["steps"] <= 32
    neg, pos = b[s["negative"][0]], b[s["positive"][0]]
    assert neg["class_type"] == pos["class_type"] == "ZImageTextEncode"
    assert len(neg["inputs"]["text"]) > 30 and neg["inputs"]["text"] != pos["inputs"]["text"]

    e = load_api("prompt_enhancer_turbo")
    enc = _inp(e, "ZImageTextEncode")
    assert _src(e, enc["text"]) == ("ZImagePromptEnhancer", 0)
    assert _inp(e, "ZImagePromptEnhancer", "text_encoder") == enc["text_encoder"]  # one text encoder for both

    lo = load_api("lora_stack")
    chain = [_src(lo, _inp(lo, "ZImageSampler", "dit")), _src(lo, _inp(lo, "ZImageLoraStack", "dit")),
             _src(lo, _inp(lo, "ZImageLoraLoader", "dit"))]
    assert chain == [("ZImageLoraStack", 0), ("ZImageLoraLoader", 0), ("ZImageDiTLoader", 0)]
    names = {v for k, v in {**_inp(lo, "ZImageLoraStack"), **_inp(lo, "ZImageLoraLoader")}.items() if "lora_" in k}
    assert names == {"None", *LORA_NAMES}

    for name in ("img2img", "inpaint"):
        g = load_api(name)
        assert _src(g, _inp(g, "ZImageVAEEncode", "image")) == ("LoadImage", 0)
        assert 0 < _inp(g, "ZImageSampler", "denoise") < 1
    ip = load_api("inpaint")
    assert _src(ip, _inp(ip, "SetLatentNoiseMask", "mask")) == ("LoadImage", 1)
    assert _src(ip, _inp(ip, "ZImageSampler", "latent")) == ("SetLatentNoiseMask", 0)

    a = load_api("adaln_variety")
    assert [_src(a, _inp(a, t, "dit"))[0] for t in ("ZImageSampler", "ZImageConditioningVariance", "ZImageAdaLNScale",
                                                    "ZImageAdaLNDetail")] == \
        ["ZImageConditioningVariance", "ZImageAdaLNScale", "ZImageAdaLNDetail", "ZImageDiTLoader"]
    combine = _inp(a, "ZImageConditioningCombine")
    assert _src(a, _inp(a, "ZImageSampler", "positive")) == ("ZImageConditioningCombine", 0)
    assert _src(a, combine["conditioning_a"]) == _src(a, combine["conditioning_b"])[:1] + (0,) == ("ZImageTextEncode", 0)
    assert combine["mode"] == "concat"

    n = load_api("native_mixed")
    s = _inp(n, "ZImageSampler")
    assert _src(n, s["latent"]) == ("EmptySD3LatentImage", 0) and _src(n, s["negative"]) == ("ConditioningZeroOut", 0)
    assert _src(n, _inp(n, "ConditioningZeroOut", "conditioning")) == _src(n, s["positive"]) == ("ZImageTextEncode", 0)
    assert _inp(n, "VAELoader", "vae_name") == "ae.safetensors"
    dec = _inp(n, "VAEDecode")
    assert _src(n, dec["samples"]) == ("ZImageSampler", 0) and _src(n, dec["vae"]) == ("VAELoader", 0)
    assert not ws.find_nodes(n, "ZImageVAELoader") and not ws.find_nodes(n, "ZImageEmptyLatent")


# --------------------------------------------------------------------------- tiny runs (no ComfyUI)

@pytest.fixture(scope="module")
def tiny_env(pack, tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("workflows")
    loras = {n: str(ws.write_tiny_lora(d / "loras" / n, seed=i)) for i, n in enumerate(LORA_NAMES)}
    ws.write_example_image(d / "input" / "example.png", SIZE)
    models = ws.TinyModels(dit=str(tiny["dit"]), text_encoder=str(tiny["diffusers"]), vae=str(tiny["vae"]),
                           loras=loras, controlnet=str(tiny["controlnets"] / "controlnet_tiny_2.0.safetensors"))
    ex = workflow_executor.Executor({**pack.NODE_CLASS_MAPPINGS, **workflow_executor.make_stand_ins(d / "input", d / "output")},
                     cache_types=("ZImageDiTLoader", "ZImageTextEncoderLoader", "ZImageVAELoader", "VAELoader"))
    return models, ex, d / "output"


def tiny_run(env, name, changes=None):
    """Run a shipped API workflow on the tiny models (64x64, 3 steps) plus `changes` {node id: {input: v}}."""
    models, ex, _ = env
    g = load_api(name)
    g = ws.with_inputs(g, ws.run_overrides(g, models, SIZE, STEPS))
    if changes:
        g = ws.with_inputs(g, changes)
    return g, ex.run(g)


def saved(env, g, res) -> torch.Tensor:
    """The image the SaveImage node got, checked: one 64x64 RGB picture in 0..1, finite, not flat; its PNG."""
    sid = ws.find_node(g, "SaveImage")
    img = res.inputs[sid]["images"]
    assert img.shape == (1, SIZE, SIZE, 3) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    assert img.std() > 0.02, "the picture is flat"
    (item,) = res.ui[sid]["images"]
    assert item["filename"].startswith(g[sid]["inputs"]["filename_prefix"]) and (env[2] / item["filename"]).is_file()
    return img


def latent_of(g, res) -> torch.Tensor:
    return res.outputs[ws.find_node(g, "ZImageSampler")][0]["samples"]


def test_turbo_t2i_runs_and_equals_the_core_pipeline(tiny_env, tiny):
    from zimage_core.pipeline import ZImagePipeline

    g, res = tiny_run(tiny_env, "turbo_t2i")
    img = saved(tiny_env, g, res)
    s = g[ws.find_node(g, "ZImageSampler")]["inputs"]
    pipe = ZImagePipeline.from_files(tiny["dit"], tiny["diffusers"], tiny["vae"])
    ref = pipe.generate(_inp(g, "ZImageTextEncode", "text"), width=SIZE, height=SIZE, steps=STEPS, seed=s["seed"],
                        cfg=s["cfg"], shift=s["shift"])
    assert (img - ref).abs().max() <= 1.5 / 255


def test_base_cfg_uses_its_negative_prompt(tiny_env):
    g, res = tiny_run(tiny_env, "base_cfg")
    saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    neg_id = g[sid]["inputs"]["negative"][0]
    assert res.inputs[sid]["negative"] is res.outputs[neg_id][0]
    g2, res2 = tiny_run(tiny_env, "base_cfg", {neg_id: {"text": "a completely different negative prompt"}})
    assert (latent_of(g, res) - latent_of(g2, res2)).abs().max() > 1e-3


def test_prompt_enhancer_text_reaches_the_encoder(tiny_env):
    g, res = tiny_run(tiny_env, "prompt_enhancer_turbo")
    saved(tiny_env, g, res)
    eid, cid = ws.find_node(g, "ZImagePromptEnhancer"), ws.find_node(g, "ZImageTextEncode")
    (text,) = res.outputs[eid]
    assert isinstance(text, str) and res.inputs[cid]["text"] == text and res.ui[eid] == {"text": [text]}
    assert res.inputs[eid]["text_encoder"] is res.inputs[cid]["text_encoder"]  # the same loaded encoder
    assert res.inputs[eid]["max_new_tokens"] == 16


def test_lora_stack_applies_the_enabled_loras(tiny_env):
    g, res = tiny_run(tiny_env, "lora_stack")
    saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    patches = res.inputs[sid]["dit"].patches
    assert [p.strength for p in patches] == [0.8, 0.6]  # the stack's second slot is switched off
    plain = {sid: {"dit": [ws.find_node(g, "ZImageDiTLoader"), 0]}}
    g2, res2 = tiny_run(tiny_env, "lora_stack", plain)
    assert res2.inputs[sid]["dit"].patches == ()
    assert (latent_of(g, res) - latent_of(g2, res2)).abs().max() > 1e-2


def test_low_vram_fast_stores_fp8_and_compiles_to_the_eager_result(tiny_env):
    g, res = tiny_run(tiny_env, "low_vram_fast")
    saved(tiny_env, g, res)
    sid, lid = ws.find_node(g, "ZImageSampler"), ws.find_node(g, "ZImageDiTLoader")
    dit = res.inputs[sid]["dit"]
    assert type(dit.patches[-1]).__name__ == "TorchCompile"
    assert dit.dit.layers[0].feed_forward.w1.weight.dtype == torch.float8_e4m3fn
    assert g[lid]["inputs"]["memory"] == "8GB"  # no effect on the CPU: nothing is streamed
    assert getattr(dit.dit, "block_streamer", None) is None
    g2, res2 = tiny_run(tiny_env, "low_vram_fast", {sid: {"dit": [lid, 0]}})  # the same without compiling
    torch.testing.assert_close(latent_of(g, res), latent_of(g2, res2), rtol=1e-4, atol=1e-4)


def test_img2img_keeps_the_input_at_denoise_below_one(tiny_env):
    g, res = tiny_run(tiny_env, "img2img")
    saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    d = g[sid]["inputs"]["denoise"]
    assert d < 1
    src = res.outputs[ws.find_node(g, "ZImageVAEEncode")][0]["samples"]
    out = latent_of(g, res)
    assert out.shape == src.shape == (1, 16, SIZE // 8, SIZE // 8)
    dist = {d: (out - src).norm()}
    for other in (0.3, 1.0):  # denoise 1.0: the same graph as text to image (the input is ignored)
        g1, res1 = tiny_run(tiny_env, "img2img", {sid: {"denoise": other}})
        dist[other] = (latent_of(g1, res1) - src).norm()
    assert 0.05 * src.norm() < dist[0.3] < dist[d] < 0.9 * dist[1.0], dist


def test_inpaint_repaints_only_the_masked_area(tiny_env):
    g, res = tiny_run(tiny_env, "inpaint")
    saved(tiny_env, g, res)
    lid = ws.find_node(g, "LoadImage")
    mask = res.outputs[lid][1]
    assert mask.shape == (1, SIZE, SIZE) and mask[0, :, :32].min() == 1 and mask[0, :, 32:].max() == 0
    sid = ws.find_node(g, "ZImageSampler")
    assert res.inputs[sid]["latent"]["noise_mask"].shape == (1, 1, SIZE, SIZE)
    src = res.outputs[ws.find_node(g, "ZImageVAEEncode")][0]["samples"]
    out = latent_of(g, res)
    torch.testing.assert_close(out[..., 4:], src[..., 4:], atol=1e-5, rtol=1e-5)  # unmasked half kept
    assert (out[..., :4] - src[..., :4]).abs().mean() > 0.05  # masked half repainted


def test_adaln_and_variety_controls_change_the_result(tiny_env):
    g, res = tiny_run(tiny_env, "adaln_variety")
    saved(tiny_env, g, res)
    sid, vid = ws.find_node(g, "ZImageSampler"), ws.find_node(g, "ZImageConditioningVariance")
    assert [type(p).__name__ for p in res.inputs[sid]["dit"].patches] == ["AdaLNDetail", "AdaLNScale",
                                                                         "ConditioningVariance"]
    cid = ws.find_node(g, "ZImageConditioningCombine")
    a, b = (res.inputs[cid][k][0][0] for k in ("conditioning_a", "conditioning_b"))
    assert res.inputs[sid]["positive"][0][0].shape[1] == a.shape[1] + b.shape[1]  # concat: both prompts are read
    g2, res2 = tiny_run(tiny_env, "adaln_variety", {vid: {"seed": g[vid]["inputs"]["seed"] + 1}})
    assert (latent_of(g, res) - latent_of(g2, res2)).abs().max() > 1e-3  # another variation
    g3, res3 = tiny_run(tiny_env, "adaln_variety", {sid: {"dit": [ws.find_node(g, "ZImageDiTLoader"), 0]}})
    assert (latent_of(g, res) - latent_of(g3, res3)).abs().max() > 1e-3


def test_controlnet_canny_runs_and_the_control_changes_the_picture(tiny_env):
    canny = ws.find_node(load_api("controlnet_canny"), "Canny")
    low = {canny: {"low_threshold": 0.02, "high_threshold": 0.05}}  # the smooth test picture has soft edges
    g, res = tiny_run(tiny_env, "controlnet_canny", low)
    img = saved(tiny_env, g, res)
    edges = res.outputs[canny][0]
    assert edges.shape == (1, SIZE, SIZE, 3) and 0 < edges.mean() < 1  # real edges, not a blank picture
    cid = ws.find_node(g, "ZImageControlNetApply")
    g0, res0 = tiny_run(tiny_env, "controlnet_canny", {**low, cid: {"strength": 0.0}})
    assert (saved(tiny_env, g0, res0) - img).abs().max() > 0.02


def test_controlnet_depth_pose_stacks_two_controls_with_their_own_ranges(tiny_env):
    g, res = tiny_run(tiny_env, "controlnet_depth_pose")
    img = saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    (patch_a, patch_b) = res.inputs[sid]["dit"].patches
    (a,), (b,) = patch_a.controls, patch_b.controls
    assert (a.scale, a.end, b.scale, b.end) == (0.55, 1.0, 0.6, 0.8)
    first = g[sid]["inputs"]["dit"][0]  # the pose node; drop it and the depth control alone remains
    g1, res1 = tiny_run(tiny_env, "controlnet_depth_pose", {sid: {"dit": g[first]["inputs"]["dit"]}})
    assert (saved(tiny_env, g1, res1) - img).abs().max() > 0.02


def test_controlnet_inpaint_feeds_the_inpaint_input_and_keeps_the_unmasked_area(tiny_env):
    g, res = tiny_run(tiny_env, "controlnet_inpaint")
    saved(tiny_env, g, res)
    cid = ws.find_node(g, "ZImageControlNetApply")
    lid = ws.find_node(g, "LoadImage")
    assert g[cid]["inputs"]["inpaint_image"] == [lid, 0] and g[cid]["inputs"]["inpaint_mask"] == [lid, 1]
    src = res.outputs[ws.find_node(g, "ZImageVAEEncode")][0]["samples"]
    out = latent_of(g, res)
    torch.testing.assert_close(out[..., 4:], src[..., 4:], atol=1e-5, rtol=1e-5)  # unmasked half kept
    assert (out[..., :4] - src[..., :4]).abs().mean() > 0.05


def test_controlnet_tile_upscale_enlarges_then_controls_with_the_enlarged_picture(tiny_env):
    g, res = tiny_run(tiny_env, "controlnet_tile_upscale")
    img = saved(tiny_env, g, res)
    up = ws.find_node(g, "ImageScaleBy")
    assert load_api("controlnet_tile_upscale")[up]["inputs"]["scale_by"] == 2.0  # 1.0 in the quick run
    cid = ws.find_node(g, "ZImageControlNetApply")
    assert g[cid]["inputs"]["image"] == [up, 0] and g[ws.find_node(g, "ZImageVAEEncode")]["inputs"]["image"] == [up, 0]
    g2, res2 = tiny_run(tiny_env, "controlnet_tile_upscale", {up: {"scale_by": 2.0}})
    assert res2.outputs[up][0].shape == (1, 2 * SIZE, 2 * SIZE, 3)
    assert res2.inputs[ws.find_node(g2, "SaveImage")]["images"].shape == (1, 2 * SIZE, 2 * SIZE, 3)
    g0, res0 = tiny_run(tiny_env, "controlnet_tile_upscale", {cid: {"strength": 0.0}})
    assert (saved(tiny_env, g0, res0) - img).abs().max() > 0.02


def test_nag_turbo_runs_and_scale_zero_equals_the_graph_without_nag(tiny_env):
    g, res = tiny_run(tiny_env, "nag_turbo")
    saved(tiny_env, g, res)
    sid, nid = ws.find_node(g, "ZImageSampler"), ws.find_node(g, "ZImageNAG")
    assert [type(p).__name__ for p in res.inputs[sid]["dit"].patches] == ["NAG"] and g[sid]["inputs"]["cfg"] == 1.0
    g0, res0 = tiny_run(tiny_env, "nag_turbo", {nid: {"scale": 0.0}})
    g1, res1 = tiny_run(tiny_env, "nag_turbo", {sid: {"dit": [ws.find_node(g, "ZImageDiTLoader"), 0]}})
    assert torch.equal(latent_of(g0, res0), latent_of(g1, res1))
    assert (latent_of(g, res) - latent_of(g1, res1)).abs().max() > 1e-3


def test_native_mixed_runs_with_the_stand_ins(tiny_env, pack):
    g, res = tiny_run(tiny_env, "native_mixed")
    img = saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    neg = res.inputs[sid]["negative"]
    assert neg[0][0].abs().max() == 0 and neg[0][0].shape == res.inputs[sid]["positive"][0][0].shape
    assert res.inputs[sid]["latent"]["samples"].shape == (1, 16, SIZE // 8, SIZE // 8)
    # our decode of the same latent with the same file gives the same picture as the native-VAE stand-in
    (vae,) = pack.NODE_CLASS_MAPPINGS["ZImageVAELoader"]().load(tiny_env[0].vae)
    (ours,) = pack.NODE_CLASS_MAPPINGS["ZImageVAEDecode"]().decode(vae, res.outputs[sid][0])
    assert (ours - img).abs().max() < 1e-5
    g2, res2 = tiny_run(tiny_env, "native_mixed", {sid: {"cfg": 2.0}})  # the zeroed negative takes part
    saved(tiny_env, g2, res2)
    assert (latent_of(g, res) - latent_of(g2, res2)).abs().max() > 1e-3


def test_distributed_turbo_t2i_alone_is_the_turbo_graph(tiny_env):
    """Without workers Distributed Seed passes the seed and Distributed Collector the images: the same picture
    as turbo_t2i at that seed (the collecting across workers is tests/test_distributed.py)."""
    g, res = tiny_run(tiny_env, "distributed_turbo_t2i")
    img = saved(tiny_env, g, res)
    sid = ws.find_node(g, "ZImageSampler")
    assert _src(g, g[sid]["inputs"]["seed"]) == ("DistributedSeed", 0)
    seed = g[ws.find_node(g, "DistributedSeed")]["inputs"]["seed"]
    g2, res2 = tiny_run(tiny_env, "turbo_t2i", {ws.find_node(load_api("turbo_t2i"), "ZImageSampler"): {"seed": seed}})
    assert (saved(tiny_env, g2, res2) - img).abs().max() < 1e-6
