"""ComfyUI's own MODEL nodes on our MODEL in the real server (issue 24): each node gives KSampler the picture on
ZImageDiTLoader -> ZImageDiTToModel that it gives on UNETLoader's native model of the same file (<= 2/255; bf16
compute <= 4/255), the cache nodes skip as many steps as on native (read from the server log), NAGuidance acts
through our NAG where native skips it, and the patches no Z-Image DiT can honour fail with our message while the
server keeps serving. The README table "ComfyUI's MODEL nodes on our MODEL" names every MODEL-input node of the
host (checked against /object_info).

Files: the session's `wide_models` (conftest.py): a 3840-wide random DiT with one main layer (bf16, ~2 GB), a
full-size random Flux VAE, the tiny text encoder. 64x64, euler / simple, few steps.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TE, WIDE_DIT, WIDE_VAE
from PIL import Image

PROMPT = "a red fox in the snow at sunrise"
NEGATIVE = "blurry, watermark"
SIZE = 64
STEPS = 2        # the guidance and patch nodes
CACHE_STEPS = 10  # the cache nodes skip only after their start_percent and once their change estimate settles
README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_HEADING = "## ComfyUI's MODEL nodes on our MODEL"


@pytest.fixture(scope="module")
def server(wide_models):
    try:
        yield wide_models
    finally:
        wide_models.free()  # the wide models leave the shared server's memory


def base_graph():
    """Loaders for both paths: "ours" (ZImageDiTLoader -> ZImageDiTToModel) and "native" (UNETLoader)."""
    return {
        "ours": {"class_type": "ZImageDiTToModel", "inputs": {"dit": ["dit", 0]}},
        "dit": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": WIDE_DIT, "weight_dtype": "auto"}},
        "native": {"class_type": "UNETLoader", "inputs": {"unet_name": WIDE_DIT, "weight_dtype": "default"}},
        "te": {"class_type": "ZImageTextEncoderLoader",
               "inputs": {"text_encoder_name": TINY_TE, "dtype": "auto", "device": "default"}},
        "pos": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["te", 0], "text": PROMPT}},
        "neg": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["te", 0], "text": NEGATIVE}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": WIDE_VAE}},
    }


def branch(tag, model, chain=(), steps=STEPS, cfg=1.0):
    """Nodes that apply `chain` ((class_type, inputs) on the previous MODEL as 'model') to `model` and sample,
    decode and save the picture as `tag`."""
    nodes, prev = {}, [model, 0]
    for i, (cls, inputs) in enumerate(chain):
        nodes[f"{tag}.{i}"] = {"class_type": cls, "inputs": {"model": prev, **inputs}}
        prev = [f"{tag}.{i}", 0]
    nodes[f"{tag}.k"] = {"class_type": "KSampler",
                         "inputs": {"model": prev, "seed": 3, "steps": steps, "cfg": cfg, "sampler_name": "euler",
                                    "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0],
                                    "latent_image": ["latent", 0], "denoise": 1.0}}
    nodes[f"{tag}.d"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}.k", 0], "vae": ["vae", 0]}}
    nodes[f"{tag}.s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{tag}.d", 0], "filename_prefix": tag}}
    return nodes


def run_pictures(server, branches, timeout=3000):
    """Runs one prompt of base_graph() + branches; returns ({tag: picture as int16 HxWx3}, the log it added)."""
    g = base_graph()
    for b in branches:
        g.update(b)
    used = {ref[0] for n in g.values() for ref in n["inputs"].values() if isinstance(ref, list)}
    for unused in [k for k in ("ours", "dit", "native", "neg") if k not in used]:
        del g[unused]  # a branch-free loader would still load its 2 GB model
    if "ours" not in g:
        g.pop("dit", None)
    start = len(server.log_text())
    entry = server.run(g, timeout=timeout)
    pictures = {}
    for node in g:
        if node.endswith(".s"):
            files = server.output_files(entry, node)
            assert len(files) == 1, entry.get("outputs")
            pictures[node[:-2]] = np.asarray(Image.open(files[0]).convert("RGB")).astype(np.int16)
    return pictures, server.log_text()[start:]


def diff(a, b) -> int:
    return int(np.abs(a - b).max())


# ------------------------------------------------------------------ nodes above or around the model: same picture

CFG = 6.0  # > 1: APG, CFGNorm, CFGZeroStar, FreSca act on the (cond, uncond) pair (a random DiT with the tiny
# text encoder keeps cond and uncond close: a high cfg makes the nodes' effect visible)
# name: (its chain of nodes, the largest difference to native in 1/255, whether it changes the picture vs plain at
# CFG, the cfg it runs at)
NODES = {
    # (CFGNorm rescales the guided prediction to the norm of the positive one: on this random DiT <= 1/255 apart)
    "CFGNorm": ([("CFGNorm", {"strength": 1.0})], 2, False, CFG),
    "APG": ([("APG", {"eta": 0.5, "norm_threshold": 2.0, "momentum": -0.5})], 2, True, CFG),
    # (CFGZeroStar scales the negative by <cond, uncond> / |uncond|^2, about 1 when the two are close: on this random
    # DiT its effect is 1/255 or less, depending on the random weights)
    "CFGZeroStar": ([("CFGZeroStar", {})], 2, False, CFG),
    "FreSca": ([("FreSca", {"scale_low": 1.0, "scale_high": 1.5, "freq_cutoff": 2})], 2, True, CFG),
    "ScaleROPE": ([("ScaleROPE", {"scale_x": 2.0, "shift_x": 3.0, "scale_y": 0.5, "shift_y": -2.0,
                                  "scale_t": 1.0, "shift_t": 0.0})], 2, True, CFG),
    # bf16 rounding, which a high cfg multiplies (5/255 at cfg 6): at cfg 1
    "ModelComputeDtype": ([("ModelComputeDtype", {"dtype": "bf16"})], 4, False, 1.0),
    "ModelMergeSimple+Subtract": (None, 2, True, CFG),  # built in merge_chain: the model merged with a subtraction of itself
}


def merge_chain(tag, model):
    """ModelMergeSimple(model, ModelMergeSubtract(model, model, 0.5), 0.5): weights 0.75x (weight patches)."""
    sub = {f"{tag}.sub": {"class_type": "ModelMergeSubtract",
                          "inputs": {"model1": [model, 0], "model2": [model, 0], "multiplier": 0.5}},
           f"{tag}.0": {"class_type": "ModelMergeSimple",
                        "inputs": {"model1": [model, 0], "model2": [f"{tag}.sub", 0], "ratio": 0.5}}}
    b = branch(tag, model, (), cfg=CFG)
    b[f"{tag}.k"]["inputs"]["model"] = [f"{tag}.0", 0]
    return {**sub, **b}


@pytest.fixture(scope="module")
def guided(server):
    """Every node of NODES on both paths, plus both paths plain, in one prompt (cfg 2, STEPS steps)."""
    branches = [branch("plain-ours", "ours", cfg=CFG), branch("plain-native", "native", cfg=CFG)]
    for name, (chain, _, _, cfg) in NODES.items():
        for path in ("ours", "native"):
            tag = f"{name}-{path}"
            branches.append(merge_chain(tag, path) if chain is None else branch(tag, path, chain, cfg=cfg))
    pictures, _ = run_pictures(server, branches)
    return pictures


def test_plain_ksampler_gives_the_same_picture_on_our_model_and_the_native_model(guided):
    assert guided["plain-native"].std() > 5  # a picture, not a flat field
    assert diff(guided["plain-ours"], guided["plain-native"]) <= 2


@pytest.mark.parametrize("name", list(NODES))
def test_comfyui_model_node_gives_the_same_picture_on_our_model_as_on_the_native_model(guided, name):
    _, tolerance, changes, _ = NODES[name]
    ours, native = guided[f"{name}-ours"], guided[f"{name}-native"]
    if changes:  # so that the match says something
        assert diff(native, guided["plain-native"]) > tolerance, f"{name} does not change native's picture here"
    assert diff(ours, native) <= tolerance


# ------------------------------------------------------------------------------------------ the cache nodes

SKIPPED = re.compile(r"(EasyCache|LazyCache) - skipped (\d+)/(\d+) steps")


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_cache_node_skips_the_steps_it_skips_on_native_and_gives_native_picture(server, cache):
    """Ours and native as separate prompts, each read from the log lines it added: the same number of skipped
    steps (more than none) and the same picture."""
    chain = [(cache, {"reuse_threshold": 1.5, "start_percent": 0.15, "end_percent": 0.95, "verbose": False})]
    skipped, pictures = {}, {}
    for path in ("native", "ours"):
        pics, log = run_pictures(server, [branch(path, path, chain, steps=CACHE_STEPS)])
        lines = SKIPPED.findall(log)
        assert len(lines) == 1, log[-3000:]
        name, n, total = lines[0]
        assert name == cache and int(total) == CACHE_STEPS, lines
        skipped[path], pictures[path] = int(n), pics[path]
    assert skipped["native"] > 0, skipped
    assert skipped["ours"] == skipped["native"], skipped
    assert diff(pictures["ours"], pictures["native"]) <= 2


# ---------------------------------------------------------------------------------------------- NAGuidance

NAG = {"nag_scale": 10.0, "nag_alpha": 1.0, "nag_tau": 5.0}
NAG_STEPS = 3


def test_nag_guidance_does_nothing_on_native_and_acts_as_our_nag_on_our_model(server):
    """NAGuidance sets an attn1_output_patch that native NextDiT never calls: native's picture is the plain one.
    On ours it is our NAG with scale nag_scale - 1 against the CFG negative: ZImageNAGModel's picture with the
    same negative. cfg 1 (NAGuidance turns off ComfyUI's cfg-1 shortcut, so the negative is still computed)."""
    zimage_nag = ("ZImageNAGModel", {"negative": ["neg", 0], "scale": NAG["nag_scale"] - 1.0,
                                     "tau": NAG["nag_tau"], "alpha": NAG["nag_alpha"]})
    pictures, _ = run_pictures(server, [
        branch(tag, path, chain, steps=NAG_STEPS) for tag, path, chain in (
            ("native-plain", "native", ()), ("native-nag", "native", [("NAGuidance", NAG)]),
            ("ours-plain", "ours", ()), ("ours-nag", "ours", [("NAGuidance", NAG)]),
            ("ours-zimage-nag", "ours", [zimage_nag]))])
    d = {f"{a} vs {b}": diff(pictures[a], pictures[b]) for a, b in (
        ("native-nag", "native-plain"), ("ours-nag", "ours-plain"), ("ours-nag", "ours-zimage-nag"),
        ("ours-plain", "native-plain"))}
    assert d["native-nag vs native-plain"] <= 1, d  # native skips the patch
    assert d["ours-nag vs ours-plain"] > 0, d  # ours guides (weakly: the tiny text encoder's captions differ little)
    assert d["ours-nag vs ours-zimage-nag"] <= 2, d


# ------------------------------------------------------------------------ refused: an error, the server serves on

REFUSED = {
    "TomePatchModel": ([("TomePatchModel", {"ratio": 0.5})], "'attn1_patch' (set by HyperTile, TomePatchModel"),
    "SkipLayerGuidanceDiT": ([("SkipLayerGuidanceDiT", {"double_layers": "0", "single_layers": "", "scale": 3.0,
                                                        "start_percent": 0.0, "end_percent": 1.0,
                                                        "rescaling_scale": 0.0})],
                             "patches_replace 'dit' (set by SkipLayerGuidanceDiT"),
    "PerturbedAttentionGuidance": ([("PerturbedAttentionGuidance", {"scale": 3.0})],
                                   "patches_replace 'attn1' (set by SelfAttentionGuidance, PerturbedAttentionGuidance"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_patch_no_zimage_dit_can_honour_fails_with_our_message_and_the_server_keeps_serving(server, name):
    from comfyui_host import ExecutionError

    chain, expected = REFUSED[name]
    with pytest.raises(ExecutionError) as ei:
        run_pictures(server, [branch("refused", "ours", chain, steps=2, cfg=CFG)])
    err = server.execution_error(ei.value.entry)
    msg = err["exception_message"]
    assert err["node_type"] == "KSampler", err
    assert msg.startswith("Z-Image MODEL: model patches") and expected in msg and "Remove that node" in msg, msg
    pictures, _ = run_pictures(server, [branch("after", "ours", steps=1)])
    assert pictures["after"].std() > 5


def test_freeu_fails_in_comfyuis_own_code_on_native_and_on_our_model_alike(server):
    """FreeU reads the UNet's model_channels from the model config, which no Lumina 2 / Z-Image config has."""
    from comfyui_host import ExecutionError

    chain = [("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2})]
    for path in ("native", "ours"):
        with pytest.raises(ExecutionError) as ei:
            run_pictures(server, [branch(path, path, chain, steps=1)])
        err = server.execution_error(ei.value.entry)
        assert err["node_type"] == "FreeU" and err["exception_type"] == "KeyError", err
        assert "model_channels" in err["exception_message"], err


# ---------------------------------------------------------------------------------- the README table is complete

def model_input_nodes(object_info: dict) -> dict:
    """{node: (python module, category)} of ComfyUI's own nodes (nodes.py, comfy_extras) that take a MODEL."""
    out = {}
    for name, info in object_info.items():
        module = str(info.get("python_module", ""))
        if module != "nodes" and not module.startswith("comfy_extras."):
            continue
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        if any(isinstance(spec, (list, tuple)) and spec and spec[0] == "MODEL" for spec in inputs.values()):
            out[name] = (module, info.get("category", ""))
    return out


def test_readme_table_names_every_comfyui_node_that_takes_a_model(comfyui_host):
    text = README.read_text()
    assert TABLE_HEADING in text
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([^`]+)`", section))
    nodes = model_input_nodes(comfyui_host.object_info())
    assert len(nodes) > 50
    missing = sorted(f"{n} ({m}, {c})" for n, (m, c) in nodes.items() if n not in named)
    assert not missing, f"README's table lacks these MODEL-input nodes of the host: {missing}"
    assert "ignored" not in section.lower()
