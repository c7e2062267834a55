"""Soak test: one ComfyUI server (the session's `comfyui_host`) takes a long mixed queue and stays correct.

The queue (ZIMAGE_SOAK_PROMPTS prompts, default 60) is made of rounds; each round mixes
- generations at different sizes and step counts (tiny models, 64-128 px, 2-4 steps),
- LoRA switches (two LoRAs at different strengths, then none again),
- model swaps (a second tiny DiT; the text encoder from the diffusers folder instead of the single file),
- bad inputs: a model file that is missing (a link to nowhere), a model of the wrong family (a VAE as the DiT),
  a corrupt file, a size out of range (not a multiple of 16),
- one prompt interrupted in the middle of its sampling.
Every prompt is queued up front; the websocket must report the end of every one of them. Every good prompt's
image equals its reference: the core ZImagePipeline (the LoRA merged into a copy of the DiT) within 1/255, and
every later run of the same graph equals the first run exactly. Every bad prompt ends in `execution_error`
naming the file or value. After the queue: the server's RSS is within 10% of its RSS after the first round,
its open file descriptors did not grow, no temp file is left (ComfyUI's temp folder, /tmp entries of the
pack). The figures go to test-artifacts/soak.json (the `artifacts_dir` fixture; ZIMAGE_TEST_ARTIFACTS).

Run:  python -m pytest -q tests/test_soak.py      (ZIMAGE_SOAK_PROMPTS=300 for a longer soak)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

pytestmark = [pytest.mark.soak, pytest.mark.comfyui]

N_PROMPTS = int(os.environ.get("ZIMAGE_SOAK_PROMPTS") or 60)
PROMPT = "a lighthouse on a cliff at dusk, waves below"
DIT, DIT2 = "soak_dit.safetensors", "soak_dit_other.safetensors"
TE, TE_DIFFUSERS, VAE = "soak_qwen.safetensors", "diffusers/soak-Z-Image-Tiny", "soak_vae.safetensors"
LORA1, LORA2 = "soak_lora_a.safetensors", "soak_lora_b.safetensors"
MISSING, WRONG, CORRUPT = "soak_missing.safetensors", "soak_is_a_vae.safetensors", "soak_corrupt.safetensors"
SAMPLER = "6"


# ------------------------------------------------------------------------------------------------ graphs

def graph(prefix, dit=DIT, te=TE, width=64, height=64, steps=2, seed=1, lora=None):
    """A text-to-image graph of the pack's nodes; lora = (name, strength) adds a ZImageLoraLoader."""
    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": dit, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": te, "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": VAE}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "ZImageEmptyLatent",
              "inputs": {"resolution": "custom", "width": width, "height": height, "batch_size": 1}},
        SAMPLER: {"class_type": "ZImageSampler",
                  "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed,
                             "steps": steps, "cfg": 1.0, "shift": 3.0, "denoise": 1.0}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": [SAMPLER, 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    if lora is not None:
        g["9"] = {"class_type": "ZImageLoraLoader",
                  "inputs": {"dit": ["1", 0], "lora_name": lora[0], "strength": lora[1]}}
        g[SAMPLER]["inputs"]["dit"] = ["9", 0]
    return g


# Distinct good configurations: name -> graph() keywords. Consecutive prompts always differ, so ComfyUI's
# cache (it keeps only what the last prompt used) never answers a generation from memory.
GOOD = {
    "plain_64": dict(width=64, height=64, steps=2, seed=1),
    "wide_128x64": dict(width=128, height=64, steps=3, seed=2),
    "lora_a": dict(width=64, height=64, steps=2, seed=1, lora=(LORA1, 1.0)),
    "other_dit_64x128": dict(dit=DIT2, width=64, height=128, steps=4, seed=3),
    "lora_b_half": dict(width=128, height=64, steps=3, seed=2, lora=(LORA2, 0.5)),
    "diffusers_te_96": dict(te=TE_DIFFUSERS, width=96, height=96, steps=2, seed=4),
    "plain_64_again": dict(width=64, height=64, steps=2, seed=1),  # after a LoRA: the plain image again
}
# Bad prompts: name -> (graph() keywords, node type that fails, substrings the message must contain).
BAD = {
    "missing_file": (dict(dit=MISSING), "ZImageDiTLoader", [MISSING]),
    "wrong_family": (dict(dit=WRONG), "ZImageDiTLoader", [WRONG, "VAE"]),
    "corrupt_file": (dict(dit=CORRUPT), "ZImageDiTLoader", [CORRUPT]),
    "bad_size": (dict(width=72), "ZImageEmptyLatent", ["width 72", "multiples of 16"]),
}
INTERRUPT = dict(width=64, height=64, steps=400, seed=9)
# A round ends with a prompt that shares no sampler input with the next round's first one.
ROUND = ["plain_64", "missing_file", "wide_128x64", "lora_a", "wrong_family", "other_dit_64x128", "interrupt",
         "lora_b_half", "corrupt_file", "diffusers_te_96", "plain_64_again", "bad_size"]


def plan(n):
    """The queue: whole rounds, then the head of one more round up to n prompts (at least one round)."""
    n = max(n, len(ROUND))
    return [ROUND[i % len(ROUND)] for i in range(n)]


# ------------------------------------------------------------------------------------------- references

def reference(paths, cfg, lora_paths):
    """IMAGE of the core pipeline for a GOOD config, as SaveImage writes it (uint8 rounding)."""
    from zimage_core.adapters.lora import load_lora, merged_copy
    from zimage_core.pipeline import ZImagePipeline

    dit = paths["dit2"] if cfg.get("dit") == DIT2 else paths["dit"]
    pipe = ZImagePipeline.from_files(dit, paths["diffusers"], paths["vae"])
    if cfg.get("lora"):
        name, strength = cfg["lora"]
        pipe.dit = merged_copy(pipe.dit, load_lora(lora_paths[name], pipe.dit, strength))
    img = pipe.generate(PROMPT, width=cfg["width"], height=cfg["height"], steps=cfg["steps"], seed=cfg["seed"])
    return (img[0].numpy() * 255).round().astype(np.int16)


def png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


# ------------------------------------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def soak_server(comfyui_host, tiny, tmp_path_factory):
    from workflow_support import write_tiny_lora
    from zimage_core.tiny import make_tiny

    host, d = comfyui_host, tmp_path_factory.mktemp("soak_models")
    other = make_tiny(d / "other", seed=1)
    loras = {LORA1: write_tiny_lora(d / LORA1, seed=11), LORA2: write_tiny_lora(d / LORA2, seed=12, scale=0.5)}
    host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])  # beside the single file; shared, left there
    placed = [("diffusion_models", DIT, tiny["dit"]), ("diffusion_models", DIT2, other["dit"]),
              ("text_encoders", TE, tiny["text_encoder"]),
              ("vae", VAE, tiny["vae"]), ("diffusers", TE_DIFFUSERS.split("/", 1)[1], tiny["diffusers"]),
              ("diffusion_models", WRONG, tiny["vae"]), ("loras", LORA1, loras[LORA1]),
              ("loras", LORA2, loras[LORA2])]
    for kind, name, src in placed:
        host.put_model(kind, name, src)
    # a file listed by ComfyUI that is gone when the loader opens it: a link to nowhere
    host.remove_model("diffusion_models", MISSING)
    os.symlink(d / "deleted.safetensors", os.path.join(host.model_dir("diffusion_models"), MISSING))
    host.put_model("diffusion_models", CORRUPT, data=b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    paths = dict(tiny, dit2=other["dit"])
    try:
        yield host, paths, {k: str(v) for k, v in loras.items()}
    finally:
        for kind, name, _ in placed:
            host.remove_model(kind, name)
        for name in (MISSING, CORRUPT):
            host.remove_model("diffusion_models", name)


def _tmp_entries():
    """Top-level /tmp entries that the pack would name (zimage*, z_image*), with their device/inode."""
    root = Path("/tmp")
    out = set()
    for p in root.iterdir():
        if p.name.lower().startswith(("zimage", "z_image", "z-image")):
            try:
                out.add((p.name, p.stat().st_ino))
            except OSError:
                pass
    return out


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def test_soak_mixed_queue(soak_server, artifacts_dir):
    import psutil

    host, paths, lora_paths = soak_server
    proc = psutil.Process(host.pid)
    names = plan(N_PROMPTS)
    temp_dir = Path(host.base_dir) / "temp"
    temp_before, tmp_before = _files(temp_dir), _tmp_entries()
    rss_start = proc.memory_info().rss
    t0 = time.monotonic()

    queued = []  # (name, prompt_id, prefix)
    with host.websocket(timeout=600) as ws:
        for i, name in enumerate(names):
            cfg = GOOD.get(name) or (BAD[name][0] if name in BAD else INTERRUPT)
            prefix = f"soak_{i:04d}_{name}"
            queued.append((name, host.post_prompt(graph(prefix, **cfg))["prompt_id"], prefix))

        finished, ran, interrupted_at, rss_round1, fds_round1 = {}, {}, {}, None, None
        for i, (name, pid, prefix) in enumerate(queued):
            def on_message(msg, name=name, pid=pid):
                d = msg.get("data") or {}
                if name == "interrupt" and msg["type"] == "progress" and d.get("node") == SAMPLER \
                        and d.get("value", 0) >= 2 and pid not in interrupted_at:
                    interrupted_at[pid] = d["value"]
                    host.interrupt()

            msgs = ws.wait_for(pid, timeout=300, on_message=on_message)
            finished[pid] = [m["type"] for m in msgs]
            ran[pid] = {m["data"].get("node") for m in msgs if m["type"] == "executing"}
            if i == len(ROUND) - 1:
                rss_round1, fds_round1 = proc.memory_info().rss, proc.num_fds()
    duration = time.monotonic() - t0
    rss_end, fds_end = proc.memory_info().rss, proc.num_fds()

    # every prompt's end reached the websocket client
    assert set(finished) == {pid for _, pid, _ in queued}

    firsts, refs, errors, problems, messages = {}, {}, 0, [], {}
    for name, pid, prefix in queued:
        entry = host.wait_for(pid, timeout=60, raise_on_error=False)
        err = host.execution_error(entry)
        if name in GOOD:
            if err is not None or entry["status"]["status_str"] != "success":
                problems.append(f"{prefix}: {err}")
                continue
            if SAMPLER not in ran[pid]:
                problems.append(f"{prefix}: the sampler did not run (answered from ComfyUI's cache)")
            files = host.output_files(entry, "8")
            assert len(files) == 1 and Path(files[0]).name.startswith(prefix), files
            img = png(files[0])
            cfg = GOOD[name]
            assert img.shape == (cfg["height"], cfg["width"], 3), (prefix, img.shape)
            key = json.dumps({k: v for k, v in cfg.items() if k != "te"}, sort_keys=True)  # same TE weights
            if key not in refs:
                refs[key] = reference(paths, cfg, lora_paths)
                diff = int(np.abs(img - refs[key]).max())
                if diff > 1:
                    problems.append(f"{prefix}: differs from the core pipeline by {diff}/255")
                firsts[key] = img
            elif not np.array_equal(img, firsts[key]):
                problems.append(f"{prefix}: differs from the first run of the same graph by "
                                f"{int(np.abs(img - firsts[key]).max())}/255")
        elif name in BAD:
            _, node_type, needles = BAD[name]
            errors += 1
            if err is None or err["message_type"] != "execution_error":
                problems.append(f"{prefix}: expected execution_error, got {entry['status']}")
                continue
            if "execution_error" not in finished[pid]:
                problems.append(f"{prefix}: execution_error not sent over the websocket")
            msg = err["exception_message"]
            messages.setdefault(name, msg)
            if err["node_type"] != node_type or not all(s in msg for s in needles):
                problems.append(f"{prefix}: {err['node_type']} says {msg!r}; expected {node_type} naming {needles}")
            if "Traceback" in msg or len(msg) > 600:
                problems.append(f"{prefix}: not a clear message: {msg!r}")
        else:  # interrupted
            if pid not in interrupted_at:
                problems.append(f"{prefix}: no sampler progress to interrupt")
            elif err is None or err["message_type"] != "execution_interrupted" \
                    or "execution_interrupted" not in finished[pid]:
                problems.append(f"{prefix}: not interrupted: {entry['status']}")
    assert not problems, "\n".join(problems)

    # the plain image again after LoRA switches is the plain image (the LoRA patch did not stay on the DiT)
    plain = firsts[json.dumps(GOOD["plain_64"], sort_keys=True)]
    assert not np.array_equal(firsts[json.dumps(GOOD["lora_a"], sort_keys=True)], plain), "the LoRA changed nothing"

    good = sum(n in GOOD for n in names)
    figures = {
        "prompts": len(names), "rounds": round(len(names) / len(ROUND), 2), "good": good, "errors_answered": errors,
        "interrupted": sum(n == "interrupt" for n in names), "distinct_references": len(refs),
        "rss_start_mb": round(rss_start / 2**20, 1), "rss_after_round1_mb": round(rss_round1 / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1), "rss_growth_vs_round1": round(rss_end / rss_round1 - 1, 4),
        "fds_after_round1": fds_round1, "fds_end": fds_end, "duration_s": round(duration, 1),
        "s_per_prompt": round(duration / len(names), 2), "error_messages": messages,
    }
    (Path(artifacts_dir) / "soak.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print("\nsoak:", json.dumps(figures))

    assert abs(rss_end / rss_round1 - 1) <= 0.10, figures
    assert fds_end <= fds_round1 + 2, figures  # no file handle leaks (loaded files are closed)
    assert _files(temp_dir) == temp_before, "files left in ComfyUI's temp folder"
    assert _tmp_entries() <= tmp_before, f"new /tmp entries: {sorted(_tmp_entries() - tmp_before)}"
    assert not host.pack_import_failures()
    # the server is idle afterwards and still answers
    assert host.queue() == {"queue_running": [], "queue_pending": []}
