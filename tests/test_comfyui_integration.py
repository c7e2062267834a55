"""Integration tests against a real ComfyUI server (CPU).

Run:  python -m pytest -q tests/test_comfyui_integration.py   (after `bash tests/setup-host.sh`)
The server is the session's shared `comfyui_host` (tests/conftest.py): the pack (this repository, or
COMFYUI_TEST_PACK_DIR) is symlinked as custom_nodes/zimage_nodes into a temporary --base-directory; see
comfyui_host.py. Without a host the tests skip, except in CI where they must run.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfyui_host import PromptError  # noqa: E402


@pytest.fixture(scope="session")
def comfyui(comfyui_host):
    return comfyui_host


@pytest.fixture(scope="session")
def object_info(comfyui):
    return comfyui.object_info()


def _pack_nodes(comfyui, object_info):
    nodes = comfyui.pack_nodes(object_info)
    assert nodes, (f"no node of the pack is in /object_info (python_module custom_nodes.{comfyui.pack_name}*); "
                   f"the top-level __init__.py must export NODE_CLASS_MAPPINGS (or comfy_entrypoint).\n"
                   f"Log tail:\n{comfyui.log_tail()}")
    return nodes


def test_pack_imports_in_comfyui(comfyui, object_info):
    failures = comfyui.pack_import_failures()
    assert not failures, "pack failed to import in ComfyUI:\n" + "\n".join(failures) + \
        "\n\nLog tail:\n" + comfyui.log_tail()
    _pack_nodes(comfyui, object_info)


def _input_specs(info):
    """Yield (section, name, spec) for the visible inputs (required + optional; not hidden)."""
    inputs = info.get("input", {}) or {}
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            yield section, name, spec


def test_pack_nodes_have_description_and_tooltips(comfyui, object_info):
    problems = []
    for node, info in sorted(_pack_nodes(comfyui, object_info).items()):
        if not str(info.get("description") or "").strip():
            problems.append(f"{node}: empty description")
        for section, name, spec in _input_specs(info):
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            if not str(opts.get("tooltip") or "").strip():
                problems.append(f"{node}.{section}.{name}: no tooltip")
        if not info.get("category"):
            problems.append(f"{node}: no category")
    assert not problems, "nodes of the pack missing documentation:\n" + "\n".join(problems)


def test_harness_runs_a_core_graph(comfyui):
    """Checks the harness itself (queue, wait, outputs, validation errors) with core nodes only."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }
    entry = comfyui.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success"
    files = comfyui.output_files(entry, "2")
    assert files and all(os.path.isfile(f) for f in files)

    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}
    with pytest.raises(PromptError) as ei:
        comfyui.post_prompt(bad)
    assert ei.value.body.get("error")


# ================================================================== Z-Image nodes inside a real ComfyUI
#
# Tiny random models in the real file formats (zimage_core.tiny) are placed in the server's model folders.
# Not tested: ComfyUI's own loaders (UNETLoader / CLIPLoader / VAELoader) with these tiny files. ComfyUI builds
# those models from fixed real-size configs (comfy/model_detection.py recognises Z-Image only when the DiT
# dim is 3840; the lumina2 CLIP is always Qwen3-4B; the Flux VAE config is fixed), so the native-loader
# interop graphs need the real 20 GB weights. What is tested natively: ConditioningZeroOut as a negative,
# EmptySD3LatentImage / LatentUpscale / SetLatentNoiseMask feeding ZImageSampler.

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

OUR_NODES = ("ZImageDiTLoader", "ZImageTextEncoderLoader", "ZImageVAELoader", "ZImageTextEncode",
             "ZImageEmptyLatent", "ZImageSampler", "ZImageVAEDecode", "ZImageVAEEncode")
PROMPT = "a red fox in the snow at sunrise"


@pytest.fixture(scope="session")
def tiny_models(comfyui, tmp_path_factory):
    from zimage_core.tiny import make_tiny

    paths = make_tiny(tmp_path_factory.mktemp("tiny"))
    comfyui.put_model("diffusion_models", "z_image_tiny.safetensors", paths["dit"])
    comfyui.put_model("text_encoders", "qwen_3_4b_tiny.safetensors", paths["text_encoder"])
    comfyui.put_model("text_encoders", "tokenizer", paths["tokenizer"])  # beside the single file
    comfyui.put_model("vae", "ae_tiny.safetensors", paths["vae"])
    comfyui.put_model("diffusers", "Z-Image-Tiny", paths["diffusers"])
    # wrong files for the bad-input cases
    comfyui.put_model("diffusion_models", "wrong_is_a_vae.safetensors", paths["vae"])
    return paths


def _graph(seed=42, steps=4, width=64, height=48, te="qwen_3_4b_tiny.safetensors", dit="z_image_tiny.safetensors",
           cfg=1.0, negative=None, prefix="zimage"):
    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": dit, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": te, "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "ZImageEmptyLatent",
              "inputs": {"resolution": "custom", "width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "ZImageSampler",
              "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": steps,
                         "cfg": cfg, "shift": 3.0, "denoise": 1.0}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    if negative is not None:
        g.update(negative)
        g["6"]["inputs"]["negative"] = ["9", 0]
    return g


def _png(comfyui, entry, node="8"):
    files = comfyui.output_files(entry, node)
    assert len(files) == 1, entry.get("outputs")
    return np.asarray(Image.open(files[0]).convert("RGB")).astype(np.int16)


def _reference(paths, seed, steps, width=64, height=48, **kw):
    from zimage_core.pipeline import ZImagePipeline

    pipe = ZImagePipeline.from_files(paths["dit"], paths["diffusers"], paths["vae"])
    img = pipe.generate(PROMPT, width=width, height=height, steps=steps, seed=seed, **kw)
    return (img[0].numpy() * 255).round().astype(np.int16)  # SaveImage: clip(255 * x), uint8


def test_object_info_lists_our_nodes_and_models(comfyui, tiny_models):
    info = comfyui.object_info()
    nodes = comfyui.pack_nodes(info)
    assert set(OUR_NODES) <= set(nodes), sorted(nodes)
    for n in OUR_NODES:
        assert nodes[n]["category"].startswith("Z-Image/")
    dit_names = nodes["ZImageDiTLoader"]["input"]["required"]["dit_name"][0]
    assert "z_image_tiny.safetensors" in dit_names and "diffusers/Z-Image-Tiny" in dit_names
    te_names = nodes["ZImageTextEncoderLoader"]["input"]["required"]["text_encoder_name"][0]
    assert "qwen_3_4b_tiny.safetensors" in te_names and "diffusers/Z-Image-Tiny" in te_names
    assert "ae_tiny.safetensors" in nodes["ZImageVAELoader"]["input"]["required"]["vae_name"][0]
    assert nodes["ZImageSampler"]["output"] == ["LATENT"]


def test_graph_matches_core_pipeline(comfyui, tiny_models):
    with comfyui.websocket(timeout=300) as ws:
        r = comfyui.post_prompt(_graph(seed=42, steps=4))
        msgs = ws.wait_for(r["prompt_id"], timeout=300)
    entry = comfyui.wait_for(r["prompt_id"], timeout=300)
    got = _png(comfyui, entry)
    ref = _reference(tiny_models, 42, 4)
    assert got.shape == ref.shape == (48, 64, 3)
    assert np.abs(got - ref).max() <= 1
    progress = [m["data"] for m in msgs if m["type"] == "progress" and m["data"].get("node") == "6"]
    assert [p["value"] for p in progress][-1] == 4 and progress[-1]["max"] == 4

    # changing only the seed re-runs only the sampler (and what follows it)
    with comfyui.websocket(timeout=300) as ws:
        r = comfyui.post_prompt(_graph(seed=43, steps=4))
        msgs = ws.wait_for(r["prompt_id"], timeout=300)
    executed = {m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"].get("node")}
    assert executed == {"6", "7", "8"}, executed
    got = _png(comfyui, comfyui.wait_for(r["prompt_id"]))
    assert np.abs(got - _reference(tiny_models, 43, 4)).max() <= 1


def test_controlnet_nodes_in_comfyui_equal_the_core_pipeline(comfyui, tiny_models):
    """LoadImage -> ZImageControlNetLoader (models/model_patches) -> two chained ZImageControlNetApply (2.1 with a
    range, 1.0 from a diffusers folder) -> sampler; the picture equals zimage_core's pipeline (<= 1/255)."""
    from zimage_core.adapters.controlnet import ControlImage, load_controlnet

    cn = tiny_models["controlnets"]
    comfyui.put_model("model_patches", "cn_tiny_2.1.safetensors", cn / "controlnet_tiny_2.1.safetensors")
    comfyui.put_model("controlnet", "cn_tiny_1.0", cn / "controlnet_tiny_1.0")
    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(comfyui.input_dir, "control.png"))
    g = _graph(seed=42, steps=4, prefix="zimage_controlnet")
    g.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": "control.png"}},
        "21": {"class_type": "ZImageControlNetLoader",
               "inputs": {"controlnet_name": "cn_tiny_2.1.safetensors", "weight_dtype": "auto"}},
        "22": {"class_type": "ZImageControlNetApply",
               "inputs": {"dit": ["1", 0], "controlnet": ["21", 0], "vae": ["3", 0], "image": ["20", 0],
                          "strength": 0.8, "start_percent": 0.0, "end_percent": 0.3}},
        "23": {"class_type": "ZImageControlNetLoader", "inputs": {"controlnet_name": "cn_tiny_1.0",
                                                                  "weight_dtype": "auto"}},
        "24": {"class_type": "ZImageControlNetApply",
               "inputs": {"dit": ["22", 0], "controlnet": ["23", 0], "vae": ["3", 0], "image": ["20", 0],
                          "strength": 0.5, "start_percent": 0.0, "end_percent": 1.0}},
    })
    g["6"]["inputs"]["dit"] = ["24", 0]
    entry = comfyui.run(g, timeout=300)
    image = torch.from_numpy(rgb.astype(np.float32) / 255)[None]
    ref = _reference(tiny_models, 42, 4, controls=[
        ControlImage(load_controlnet(cn / "controlnet_tiny_2.1.safetensors"), image, 0.8, 0.0, 0.3),
        ControlImage(load_controlnet(cn / "controlnet_tiny_1.0"), image, 0.5)])
    got = _png(comfyui, entry)
    assert np.abs(got - ref).max() <= 1
    assert np.abs(got - _reference(tiny_models, 42, 4)).max() > 10


def test_ksampler_on_the_bridged_model_equals_our_sampler_in_comfyui(comfyui, tiny_models):
    """Our DiT -> ZImageDiTToModel -> ModelSamplingAuraFlow(3) -> native KSampler (res_multistep / simple, with
    ConditioningZeroOut as negative) -> our decode: the same picture as ZImageSampler with that sampler and
    scheduler (<= 1/255); a LoRA through our node before the conversion is kept, and the plain ZImageSampler
    run afterwards is unaffected by the MODEL run."""
    g = _graph(seed=42, steps=4, prefix="zimage_bridge_ref")
    g["6"]["inputs"].update(sampler_name="res_multistep", scheduler="simple")
    ref = _png(comfyui, comfyui.run(g, timeout=300))
    b = _graph(seed=42, steps=4, prefix="zimage_bridge")
    b.update({
        "30": {"class_type": "ZImageDiTToModel", "inputs": {"dit": ["1", 0]}},
        "31": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["30", 0], "shift": 3.0}},
        "32": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["31", 0], "positive": ["4", 0], "negative": ["32", 0], "latent_image": ["5", 0], "seed": 42,
            "steps": 4, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1.0}},
    })
    got = _png(comfyui, comfyui.run(b, timeout=300))
    assert np.abs(got - ref).max() <= 1
    entry = comfyui.run(_graph(seed=42, steps=4, prefix="zimage_after_bridge"), timeout=300)
    assert np.abs(_png(comfyui, entry) - _reference(tiny_models, 42, 4)).max() <= 1


def test_diffusers_folder_text_encoder(comfyui, tiny_models):
    entry = comfyui.run(_graph(seed=42, steps=4, te="diffusers/Z-Image-Tiny", dit="diffusers/Z-Image-Tiny",
                               prefix="zimage_diffusers"), timeout=300)
    assert np.abs(_png(comfyui, entry) - _reference(tiny_models, 42, 4)).max() <= 1


def test_conditioning_zero_out_as_negative(comfyui, tiny_models):
    neg = {"9": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}}}
    entry = comfyui.run(_graph(seed=7, steps=3, cfg=2.5, negative=neg, prefix="zimage_neg"), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert _png(comfyui, entry).shape == (48, 64, 3)


def test_native_latent_nodes_feed_the_sampler(comfyui, tiny_models):
    g = _graph(seed=3, steps=3, prefix="zimage_native_latent")
    g["5"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}
    g["10"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["6", 0], "upscale_method": "bilinear",
                                                         "width": 96, "height": 64, "crop": "disabled"}}
    g["11"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 96, "height": 64}}
    g["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["10", 0], "mask": ["11", 0]}}
    g["13"] = {"class_type": "ZImageSampler",
               "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["12", 0], "seed": 3, "steps": 4,
                          "cfg": 1.0, "shift": 3.0, "denoise": 0.5}}
    g["7"]["inputs"]["latent"] = ["13", 0]
    entry = comfyui.run(g, timeout=300)
    assert _png(comfyui, entry).shape == (64, 96, 3)


def test_interrupt_mid_sampling_then_next_prompt_works(comfyui, tiny_models):
    g = _graph(seed=1, steps=10000, width=128, height=128, prefix="zimage_interrupt")
    interrupted = []

    def on_message(msg):
        d = msg.get("data", {})
        if msg["type"] == "progress" and d.get("node") == "6" and d.get("value", 0) >= 3 and not interrupted:
            interrupted.append(d["value"])
            comfyui.interrupt()

    with comfyui.websocket(timeout=300) as ws:
        r = comfyui.post_prompt(g)
        msgs = ws.wait_for(r["prompt_id"], timeout=300, on_message=on_message)
    assert interrupted, "no progress message from the sampler"
    types = [m["type"] for m in msgs]
    assert "execution_interrupted" in types, types
    last = max(m["data"]["value"] for m in msgs if m["type"] == "progress" and m["data"].get("node") == "6")
    assert last < 10000
    entry = comfyui.wait_for(r["prompt_id"], raise_on_error=False)
    assert comfyui.execution_error(entry)["message_type"] == "execution_interrupted"

    entry = comfyui.run(_graph(seed=42, steps=4, prefix="zimage_after_interrupt"), timeout=300)
    assert np.abs(_png(comfyui, entry) - _reference(tiny_models, 42, 4)).max() <= 1


def _error_of(comfyui, graph):
    entry = comfyui.run(graph, timeout=300, raise_on_error=False)
    err = comfyui.execution_error(entry)
    assert err and err["message_type"] == "execution_error", entry.get("status")
    return err


def test_bad_inputs_give_execution_errors(comfyui, tiny_models):
    err = _error_of(comfyui, _graph(dit="wrong_is_a_vae.safetensors", prefix="bad1"))
    assert err["node_type"] == "ZImageDiTLoader"
    assert "wrong_is_a_vae" in err["exception_message"] and "VAE" in err["exception_message"]

    g = _graph(prefix="bad2")
    g["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}
    err = _error_of(comfyui, g)
    assert err["node_type"] == "ZImageSampler"
    assert "4 channels" in err["exception_message"] and "EmptySD3LatentImage" in err["exception_message"]

    g = _graph(prefix="bad3")
    g["5"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 72, "height": 48, "batch_size": 1}}
    err = _error_of(comfyui, g)
    assert "multiples of 16" in err["exception_message"]

    err = _error_of(comfyui, _graph(cfg=3.0, prefix="bad4"))
    assert "negative" in err["exception_message"]

    # the server is still up and the earlier loaded models still work
    entry = comfyui.run(_graph(seed=42, steps=4, prefix="after_errors"), timeout=300)
    assert np.abs(_png(comfyui, entry) - _reference(tiny_models, 42, 4)).max() <= 1


def test_free_models_then_run_again(comfyui, tiny_models):
    comfyui.free(unload_models=True, free_memory=True)
    entry = comfyui.run(_graph(seed=42, steps=4, prefix="after_free"), timeout=300)
    assert np.abs(_png(comfyui, entry) - _reference(tiny_models, 42, 4)).max() <= 1
