"""The example workflows in a real ComfyUI server (the session's `comfyui_host`) through zimage_core.client: the
template list, the core-node table against /object_info, every workflow run, native VAE decode against ours,
NAG at scale 0, and LoRA training end to end (the whole file, its effect on the test picture, an interrupt).

    python -m pytest -q tests/test_workflows_server.py
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workflow_support as ws
from workflow_support import LORA_NAMES, SIZE, STEPS, TRAIN_STEPS, load_api, load_ui, workflow_names

NAMES = workflow_names()


@pytest.fixture(scope="module")
def maps(pack):
    return pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS


# ------------------------------------------------------------------------------- a real ComfyUI server

FULL_VAE = "ae.safetensors"  # a full-size random Flux VAE under the real name (ComfyUI's VAELoader needs the shape)


@pytest.fixture(scope="module")
def server(comfyui_host, tiny, tmp_path_factory):
    """The session's ComfyUI server with the tiny models under the workflows' real file names, a full-size
    random Flux VAE as ae.safetensors, tiny LoRAs under the LoRA names and input/example.png."""
    from safetensors.torch import save_file

    from zimage_core.tiny.vae import random_vae
    from zimage_core.model.vae import VAEConfig

    d, paths, host = tmp_path_factory.mktemp("server_models"), tiny, comfyui_host
    # ComfyUI builds the Flux VAE with a fixed config (ch 128, ch_mult 1,2,4,4, 2 res blocks; comfy/sd.py), so
    # its VAELoader needs ae-shaped weights: 83.8M random parameters, 335 MB in fp32 (deleted afterwards).
    ae = random_vae(VAEConfig(channels=(128, 256, 512, 512), num_res_blocks=2, z_channels=16), seed=1)
    full_vae = d / "ae_full.safetensors"
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(full_vae))
    del ae
    try:
        for name in ("z_image_turbo_bf16.safetensors", "z_image_bf16.safetensors"):
            host.put_model("diffusion_models", name, paths["dit"])
        host.put_model("text_encoders", "qwen_3_4b.safetensors", paths["text_encoder"])
        host.put_model("text_encoders", "tokenizer", paths["tokenizer"])  # beside the single file
        host.put_model("vae", FULL_VAE, full_vae)
        for i, n in enumerate(LORA_NAMES):
            host.put_model("loras", n, ws.write_tiny_lora(d / n, seed=i))
        host.put_model("model_patches", "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors",
                       paths["controlnets"] / "controlnet_tiny_2.0.safetensors")
        host.put_model("model_patches", "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors",
                       paths["controlnets"] / "controlnet_tiny_tile.safetensors")
        ws.write_example_image(Path(host.input_dir) / "example.png", SIZE)
        # lora_training: the tiny DiT as a GGUF (Q8_0 where rows are whole blocks) under the workflow's name, and
        # its dataset folder in input/
        from safetensors.torch import load_file

        from zimage_core.tiny.quantized import write_gguf_dit

        host.put_model("diffusion_models", TRAIN_GGUF, write_gguf_dit(d / TRAIN_GGUF, load_file(str(paths["dit"])), "Q8_0"))
        write_dataset(Path(host.input_dir) / TRAIN_FOLDER)
        yield host
    finally:
        host.remove_model("vae", FULL_VAE)
        host.remove_model("diffusion_models", TRAIN_GGUF)
        shutil.rmtree(Path(host.input_dir) / TRAIN_FOLDER, ignore_errors=True)
        full_vae.unlink(missing_ok=True)


_TRAIN = load_api("lora_training")
TRAIN_GGUF = _TRAIN[ws.find_node(_TRAIN, "ZImageDiTLoader")]["inputs"]["dit_name"]
TRAIN_FOLDER = _TRAIN[ws.find_node(_TRAIN, "LoadImageTextDataSetFromFolder")]["inputs"]["folder"]
# (width, height, caption): sizes that do not match (after the 64-pixel resize: 64x64, 64x48 and 45x64, which the
# VAE encode crops to 32x64), one picture without a caption file
DATASET = ((64, 64, "zmg_style, a smooth gradient"), (96, 72, "zmg_style, a wide gradient"), (35, 50, None))


def write_dataset(folder: Path) -> Path:
    """A LoRA dataset as a user makes one: pictures in input/<folder>, a caption .txt of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h, caption) in enumerate(DATASET):
        from PIL import Image

        pic = ws.write_example_image(folder / f"pic_{i}.png", max(w, h), hole=None)
        Image.open(pic).convert("RGB").resize((w, h)).save(pic)
        if caption is not None:
            (folder / f"pic_{i}.txt").write_text(caption, encoding="utf-8")
    return folder


def server_run(server, graph, out_dir):
    from zimage_core.client import Client, apply_overrides

    graph = apply_overrides(graph, ws.overrides_as_strings(ws.run_overrides(graph, None, SIZE, STEPS,
                                                                            train_steps=TRAIN_STEPS)))
    return Client(server=f"127.0.0.1:{server.port}", timeout=300).run(graph, out_dir=out_dir)


def png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_server_lists_and_serves_the_templates(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[server.pack_name]) == sorted(NAMES)
    served = server.get(f"/api/workflow_templates/{server.pack_name}/turbo_t2i.json")
    assert served == load_ui("turbo_t2i")
    assert not server.pack_import_failures()


def test_core_node_table_matches_the_server(server, maps):
    info = server.object_info()
    for t, c in ws.CORE_NODES.items():
        if t in ws.VIRTUAL_NODES:
            continue
        real = info[t]
        assert (real["display_name"] or t) == c["display"], t  # V3 nodes without a display name show their id
        assert real["output"] == [typ for _, typ in c["outputs"]] and real["output_name"] == [n for n, _ in c["outputs"]], t
        assert bool(real["output_node"]) == c["output_node"], t
        ours = ws.node_spec(t, *maps)
        theirs = [(name, section == "required") for section in ("required", "optional")
                  for name in (real["input"].get(section) or {})]
        assert [(i.name, i.required) for i in ours.inputs] == theirs, t
        for i in ours.inputs:
            spec = real["input"]["required" if i.required else "optional"][i.name]
            typ = "COMBO" if isinstance(spec[0], list) or spec[0] == "COMBO" else spec[0]
            assert typ == i.type, (t, i.name)
            opts = spec[1] if len(spec) > 1 else {}
            for k in ("default", "min", "max", "step", "image_upload"):
                assert opts.get(k) == i.opts.get(k), (t, i.name, k)


# lora_training makes two pictures (the loss graph and the test picture) and writes a LoRA: its own test below
@pytest.mark.parametrize("name", [n for n in NAMES if n != "lora_training"])
def test_server_runs_the_workflow(server, name, tmp_path):
    graph = load_api(name)
    result = server_run(server, graph, tmp_path)
    assert len(result.images) == 1, result.outputs
    for eid in ws.find_nodes(graph, "ZImagePromptEnhancer"):  # its ui text (what the editor shows) came back
        (text,) = result.outputs[eid]["text"]
        assert isinstance(text, str)
    img = png(result.images[0])
    assert img.shape == (SIZE, SIZE, 3) and img.std() > 2


def test_native_vae_decode_matches_ours_on_the_same_latent(server, tmp_path):
    """native_mixed plus our VAE loader + decode on the sampler's latent: ComfyUI's VAELoader / VAEDecode and
    ZImageVAEDecode, same full-size ae.safetensors, same latent, same pixels (within 2/255)."""
    g = load_api("native_mixed")
    sid = ws.find_node(g, "ZImageSampler")
    g["90"] = {"class_type": "ZImageVAELoader", "inputs": {"vae_name": FULL_VAE}}
    g["91"] = {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["90", 0], "latent": [sid, 0], "tiled": False}}
    g["92"] = {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "ours"}}
    result = server_run(server, g, tmp_path)
    native = [p for p in result.images if p.name.startswith(g[ws.find_nodes(g, "SaveImage")[0]]["inputs"]["filename_prefix"])]
    mine = [p for p in result.images if p.name.startswith("ours")]
    assert len(native) == len(mine) == 1, result.images
    native, ours = png(native[0]), png(mine[0])
    assert native.shape == ours.shape == (SIZE, SIZE, 3)
    assert native.std() > 2
    assert np.abs(native - ours).max() <= 2, np.abs(native - ours).max()


def test_server_nag_on_model_scale_zero_equals_the_graph_without_nag(server, tmp_path):
    """nag_ksampler on the real ComfyUI: KSampler on the MODEL with NAG at scale 0 gives exactly the picture of
    the MODEL without the NAG node; NAG changes it."""
    g = load_api("nag_ksampler")
    nid, shift = ws.find_node(g, "ZImageNAGModel"), ws.find_node(g, "ModelSamplingAuraFlow")
    pics = {}
    for label, change in (("nag", {}), ("zero", {nid: {"scale": 0.0}}),
                          ("plain", {shift: {"model": g[nid]["inputs"]["model"]}})):
        (path,) = server_run(server, ws.with_inputs(g, change), tmp_path / label).images
        pics[label] = png(path)
    assert np.array_equal(pics["zero"], pics["plain"])
    assert np.abs(pics["nag"] - pics["plain"]).max() > 2


def test_server_nag_scale_zero_equals_the_graph_without_nag_and_bad_input_is_refused(server, tmp_path):
    """nag_turbo on the real ComfyUI: scale 0 gives the picture of the graph without the NAG node, NAG changes it;
    a MODEL (another family's type) on NAG's dit input and a negative longer than the DiT's context are clear
    errors, and the server keeps serving."""
    from zimage_core.client import PromptExecutionError, PromptValidationError

    g = load_api("nag_turbo")
    sid, nid, lid = ws.find_node(g, "ZImageSampler"), ws.find_node(g, "ZImageNAG"), ws.find_node(g, "ZImageDiTLoader")
    pics = {}
    for label, change in (("nag", {}), ("zero", {nid: {"scale": 0.0}}), ("plain", {sid: {"dit": [lid, 0]}})):
        (path,) = server_run(server, ws.with_inputs(g, change), tmp_path / label).images
        pics[label] = png(path)
    assert np.array_equal(pics["zero"], pics["plain"])
    assert np.abs(pics["nag"] - pics["plain"]).max() > 2

    bad = ws.with_inputs(g, {nid: {"dit": ["90", 0]}})
    bad["90"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                        "weight_dtype": "default"}}
    with pytest.raises(PromptValidationError) as ei:
        server_run(server, bad, tmp_path / "bad_model")
    assert any(e.get("node_id") == nid for e in ei.value.errors), ei.value.errors

    neg = g[nid]["inputs"]["negative"][0]
    assert g[neg]["class_type"] == "ZImageTextEncode"
    long = ws.with_inputs(g, {neg: {"text": " ".join(["blurry watermark"] * 400)}})
    long["91"] = {"class_type": "ZImageConditioningCombine", "inputs": {"conditioning_a": [neg, 0],
                                                                        "conditioning_b": [neg, 0], "mode": "concat",
                                                                        "weight": 0.5}}
    long["92"] = dict(long["91"], inputs=dict(long["91"]["inputs"], conditioning_a=["91", 0], conditioning_b=["91", 0]))
    long[nid]["inputs"]["negative"] = ["92", 0]
    with pytest.raises(PromptExecutionError) as ei:
        server_run(server, long, tmp_path / "bad_long")
    assert ei.value.node_type == "ZImageNAG" and "longer than the DiT's context" in ei.value.exception_message

    (path,) = server_run(server, g, tmp_path / "after").images  # still serving, same picture
    assert np.array_equal(png(path), pics["nag"])


def _lora_files(server, prefix):
    return sorted((Path(server.output_dir) / "loras").glob(f"{prefix}_*.safetensors"))


def test_server_lora_training_writes_the_whole_lora_and_the_lora_changes_the_test_picture(server, tiny, tmp_path):
    """lora_training on the real ComfyUI, as a user runs it: the dataset folder in input/ (pictures of three sizes,
    one without a caption), the tiny DiT from a GGUF file, TRAIN_STEPS training steps. SaveLoRA writes one whole file with
    ComfyUI's keys (diffusion_model.<layer>.lora_up / lora_down / alpha for every matrix, .diff for the norms,
    .diff_b for the biases) at the node's rank; the test picture differs from the picture without the LoRA (strength
    0: the same MODEL, the training cached), and the saved file through LoraLoaderModelOnly gives the test picture
    (within 2/255) with every key loaded."""
    from safetensors import safe_open

    g = load_api("lora_training")
    tid, sid, lid = (ws.find_node(g, t) for t in ("TrainLoraNode", "SaveLoRA", "LoraModelLoader"))
    prefix = f"zimage_lora_test_{os.getpid()}"
    g = ws.with_inputs(g, {tid: {"learning_rate": 0.001}, sid: {"prefix": f"loras/{prefix}"}})
    save_image = ws.find_node(g, "SaveImage")

    def picture(graph, label):
        result = server_run(server, graph, tmp_path / label)
        (item,) = result.outputs[save_image]["images"]
        img = png(Path(server.output_dir) / item.get("subfolder", "") / item["filename"])
        assert img.shape == (SIZE, SIZE, 3) and img.std() > 2
        return img, result

    trained, result = picture(g, "trained")
    loss = ws.find_node(g, "LossGraphNode")
    assert len(result.outputs[loss]["images"]) == 1  # the loss graph is shown
    log = server.log_text()
    assert "centre-cropped to 32x64" in log  # the 45x64 picture, cropped to multiples of 16 by our VAE encode

    (path,) = _lora_files(server, f"{prefix}_{TRAIN_STEPS}_steps")
    with safe_open(str(path), "pt") as f:  # parses: written whole
        lora = {k: f.get_tensor(k) for k in f.keys()}
    assert all(torch.isfinite(v.float()).all() for v in lora.values())
    from safetensors.torch import load_file

    state = load_file(str(tiny["dit"]))  # the weights of the GGUF file
    want = set()
    for k, v in state.items():
        layer, _, kind = k.rpartition(".")
        if kind == "weight" and v.ndim == 2:
            want |= {f"diffusion_model.{layer}.{n}" for n in ("lora_up.weight", "lora_down.weight", "alpha")}
        elif kind == "weight":
            want.add(f"diffusion_model.{layer}.diff")
        elif kind == "bias":
            want.add(f"diffusion_model.{layer}.diff_b")
    assert set(lora) == want, (sorted(set(lora) - want)[:5], sorted(want - set(lora))[:5])
    rank = g[tid]["inputs"]["rank"]
    assert all(v.shape[0] == rank for k, v in lora.items() if k.endswith("lora_down.weight"))
    assert any(v.abs().max() > 0 for k, v in lora.items() if k.endswith("lora_down.weight"))  # it learned

    plain, _ = picture(ws.with_inputs(g, {lid: {"strength_model": 0.0}}), "plain")
    assert np.abs(trained - plain).max() > 2, np.abs(trained - plain).max()

    server.put_model("loras", path.name, path)
    try:
        from_file = ws.with_inputs(g, {ws.find_node(g, "KSampler"): {"model": ["90", 0]}})
        from_file["90"] = {"class_type": "LoraLoaderModelOnly",
                           "inputs": {"model": g[lid]["inputs"]["model"], "lora_name": path.name, "strength_model": 1.0}}
        before = len(server.log_text())
        loaded, _ = picture(from_file, "from_file")
        assert "lora key not loaded" not in server.log_text()[before:]
        assert np.abs(loaded - trained).max() <= 2, np.abs(loaded - trained).max()
    finally:
        server.remove_model("loras", path.name)


def test_server_lora_training_interrupted_writes_no_file_and_the_model_gives_its_picture_after(server, tmp_path):
    """Interrupting lora_training from the UI (POST /interrupt, the queue's X) while TrainLoraNode runs: the prompt
    ends interrupted, SaveLoRA never runs (no file with its prefix), and the same server then makes the test
    picture without a LoRA that it made before the interrupted run."""
    g = load_api("lora_training")
    tid, sid, lid = (ws.find_node(g, t) for t in ("TrainLoraNode", "SaveLoRA", "LoraModelLoader"))
    prefix = f"zimage_lora_interrupted_{os.getpid()}"
    plain = ws.with_inputs(g, {lid: {"strength_model": 0.0}})
    (before,) = [p for p in server_run(server, plain, tmp_path / "before").images if "lora-test" in p.name]

    long = ws.with_inputs(g, ws.run_overrides(g, None, SIZE, STEPS))
    # ComfyUI checks for an interrupt in its progress hook, which its ProgressBar calls every 0.5% of the steps (and
    # 0.1 s): with 400 steps an interrupt stops the training within 2 steps
    long = ws.with_inputs(long, {tid: {"steps": 400, "seed": 7}, sid: {"prefix": f"loras/{prefix}"}})
    seen = []
    with server.websocket(timeout=120) as listener:
        queued = server.post_prompt(long)
        stopped = []

        def on_message(msg):
            data = msg.get("data") or {}
            seen.append((msg.get("type"), data.get("node"), data.get("value")))
            if msg.get("type") == "progress" and str(data.get("node")) == tid and data.get("value", 0) >= 1 and not stopped:
                stopped.append(data["value"])
                server.interrupt()

        try:
            listener.wait_for(queued["prompt_id"], timeout=120, on_message=on_message)
        except Exception:  # a websocket timeout: the training went on
            server.interrupt()
            raise AssertionError(f"not interrupted; messages: {seen[-30:]}") from None
    entry = server.wait_for(queued["prompt_id"], raise_on_error=False)
    assert stopped, "TrainLoraNode reported no progress"
    assert max(m[2] for m in seen if m[0] == "progress") == stopped[0], seen  # its next progress update stopped it
    assert server.execution_error(entry)["message_type"] == "execution_interrupted", entry["status"]
    assert not _lora_files(server, prefix)
    # the KSampler straight on the MODEL (another input: run again, not taken from ComfyUI's cache)
    again = ws.with_inputs(g, {ws.find_node(g, "KSampler"): {"model": g[lid]["inputs"]["model"]}})
    (after,) = [p for p in server_run(server, again, tmp_path / "after").images if "lora-test" in p.name]
    assert np.array_equal(png(after), png(before))
