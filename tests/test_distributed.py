"""Scale out with ComfyUI-Distributed (robertvoy, v1.4.4): a master and two workers, three real ComfyUI processes on
127.0.0.1 (tests/distributed_cluster.py), each with this pack, its own copy of ComfyUI-Distributed and its own
model folders holding the same tiny random model files.

A graph sent to POST /distributed/queue on the master runs on the master and on every worker; `DistributedSeed`
gives the master the seed s and worker i the seed s + i; `DistributedCollector` gathers the images on the master
(master's first, then worker 1's, worker 2's). What is proven: the collected images equal single-process runs
(plain /prompt on one server) at s, s + 1, s + 2 (<= 1/255) for our sampler, for our MODEL through KSampler and
for a LoRA + ControlNet graph; UltimateSDUpscaleDistributed on our MODEL equals its single-process mode; and
what the master answers when a worker lacks a model file, has an older copy of the pack (a node missing), has a
broken copy of a model file, or dies in the middle of the job: ComfyUI-Distributed's own answer, and the answer
of our headless client (zimage_core.client), which checks the workers first and names the worker and the
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
    from distributed_cluster import HOST_DIR, Cluster, distributed_pack, older_pack_copy

    comfy = os.environ.get("COMFYUI_PATH")
    dist = distributed_pack(HOST_DIR)
    if not comfy or not dist:
        pytest.skip(f"needs ComfyUI and ComfyUI-Distributed in {HOST_DIR}: run `bash tests/setup-host.sh`")
    from comfyui_host import REPO_ROOT

    old = older_pack_copy(REPO_ROOT, str(tmp_path_factory.mktemp("older_pack") / "zimage_nodes"))
    # workers 1 and 2: this pack; worker 3: an older copy of it (no ZImageDiTToModel), used by the fault tests only
    c = Cluster(comfy, dist, REPO_ROOT, n_workers=3, worker_timeout=WORKER_TIMEOUT, worker_pack_dirs={"3": old})
    c.start()
    c.tiny = tiny
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

def _base(seed, sampler="ours", lora=False, control=False, steps=3):
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
    g.update(_sampler("6", sampler, dit, seed, steps))
    g["7"] = {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}}
    return g


def _sampler(nid, kind, dit, seed, steps):
    if kind == "ours":
        return {nid: {"class_type": "ZImageSampler",
                      "inputs": {"dit": dit, "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": steps,
                                 "cfg": 1.0, "shift": 3.0, "denoise": 1.0}}}
    return {  # our MODEL through ComfyUI's own KSampler
        f"{nid}m": {"class_type": "ZImageDiTToModel", "inputs": {"dit": dit}},
        f"{nid}a": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": [f"{nid}m", 0], "shift": 3.0}},
        f"{nid}z": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        nid: {"class_type": "KSampler",
              "inputs": {"model": [f"{nid}a", 0], "positive": ["4", 0], "negative": [f"{nid}z", 0],
                         "latent_image": ["5", 0], "seed": seed, "steps": steps, "cfg": 1.0,
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


def run_distributed(cluster, graph, worker_ids=("1", "2"), timeout=300):
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


def _assert_images(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and np.abs(g - w).max() <= 1, f"image {i} differs"


def _history_len(host):
    return len(host.history())


def client_run(cluster, graph, workers, tmp_path, on_event=None):
    from zimage_core.client import Client

    return Client(cluster.master.url, timeout=300).run(graph, out_dir=tmp_path, workers=workers, on_event=on_event)


def _files(result):
    return [np.asarray(Image.open(p).convert("RGB")).astype(np.int16) for p in result.images]


def test_api_client_runs_a_distributed_workflow_and_downloads_every_image(cluster, tmp_path, capsys):
    """zimage_core.client on the master with --workers: /distributed/queue, then the 3 collected images
    (master's, worker 1's, worker 2's) downloaded, equal to single-process runs at s, s + 1, s + 2."""
    import json

    from zimage_core.client import main

    seed = 400
    result = client_run(cluster, distributed_graph(seed, "client_py"), ["1", "2"], tmp_path / "py")
    assert result.warnings == [] and result.status["status_str"] == "success"
    want = single_process_images(cluster, [seed, seed + 1, seed + 2], "client_ref")
    _assert_images(_files(result), want)

    wf = tmp_path / "dist.json"
    wf.write_text(json.dumps(distributed_graph(seed + 10, "client_cli")))
    assert main(["run", str(wf), "--server", cluster.master.url, "--workers", "1,2", "--out",
                 str(tmp_path / "cli"), "-q"]) == 0
    saved = capsys.readouterr().out.split()
    assert len(saved) == 3 and all(os.path.isfile(p) for p in saved)


def test_a_worker_without_the_model_file(cluster, tmp_path):
    """ComfyUI-Distributed itself: the worker refuses the graph at dispatch (its dit_name list lacks the file), and
    /distributed/queue answers HTTP 500 at once with the worker's validation error but without its name; nothing
    is queued on the master, and worker 1, which got the graph too, renders for nothing. Our client checks the workers first: it leaves worker 2 out, names it and the file,
    and returns the master's and worker 1's images (seeds s, s + 1)."""
    seed = 500
    w2 = cluster.workers["2"]
    w2.remove_model("diffusion_models", DIT)
    try:
        before, w1_before = _history_len(cluster.master), _history_len(cluster.workers["1"])
        t = time.monotonic()
        status, body = cluster.queue(distributed_graph(seed, "missing_raw"), ["1", "2"])
        assert time.monotonic() - t < 30
        assert status == 500 and DIT in body["error"] and "value_not_in_list" in body["error"], body
        deadline = time.monotonic() + 60  # worker 1 got the graph anyway and renders a picture nobody collects
        while _history_len(cluster.workers["1"]) == w1_before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _history_len(cluster.workers["1"]) == w1_before + 1
        assert _history_len(cluster.master) == before and not cluster.master.queue()["queue_pending"]

        result = client_run(cluster, distributed_graph(seed, "missing_client"), ["1", "2"], tmp_path)
    finally:
        w2.put_model("diffusion_models", DIT, cluster.tiny["dit"])
    assert len(result.warnings) == 1, result.warnings
    msg = result.warnings[0]
    assert "worker 2" in msg and w2.url.split("//")[1] in msg and DIT in msg and "dit_name" in msg, msg
    _assert_images(_files(result), single_process_images(cluster, [seed, seed + 1], "missing_ref"))


def test_a_worker_with_an_older_copy_of_the_pack(cluster, tmp_path):
    """Worker 3 runs an older copy of the pack without ZImageDiTToModel. ComfyUI-Distributed: HTTP 500 naming the
    missing node, not the worker, nothing on the master. Our client leaves worker 3 out with a message naming it and
    the node, and the master and worker 1 deliver (seeds s, s + 1). Graphs the older copy has all nodes for still
    run there."""
    seed = 600
    status, body = cluster.queue(distributed_graph(seed, "old_raw", sampler="ksampler"), ["1", "3"])
    assert status == 500 and "ZImageDiTToModel" in body["error"], body

    result = client_run(cluster, distributed_graph(seed, "old_client", sampler="ksampler"), ["1", "3"], tmp_path)
    assert len(result.warnings) == 1, result.warnings
    msg = result.warnings[0]
    assert "worker 3" in msg and "no node ZImageDiTToModel" in msg and "older" in msg, msg
    _assert_images(_files(result), single_process_images(cluster, [seed, seed + 1], "old_ref", sampler="ksampler"))

    body, entry = run_distributed(cluster, distributed_graph(seed, "old_ours"), ["3"])
    assert body["worker_count"] == 1 and len(cluster.master.output_files(entry, "8")) == 2


def test_a_worker_whose_model_file_is_broken(cluster, tmp_path):
    """Worker 2 lists the DiT file but its copy is not a safetensors file: it passes every check, takes the job and
    fails in ZImageDiTLoader with the pack's error naming the file. The master waits worker_timeout_seconds for it,
    then delivers its own and worker 1's images; our client names worker 2, the node and the loader's message."""
    seed, name = 800, "z_image_broken_on_w2.safetensors"
    cluster.put_model("diffusion_models", name, cluster.tiny["dit"], on=[cluster.master, cluster.workers["1"]])
    cluster.workers["2"].put_model("diffusion_models", name, data=b"this is not a safetensors file")
    g = distributed_graph(seed, "broken")
    g["1"]["inputs"]["dit_name"] = name
    try:
        result = client_run(cluster, g, ["1", "2"], tmp_path)
    finally:
        for h in cluster.hosts:
            h.remove_model("diffusion_models", name)
    assert result.status["status_str"] == "success"
    assert len(result.warnings) == 1, result.warnings
    msg = result.warnings[0]
    assert "worker 2" in msg and "ZImageDiTLoader" in msg and name in msg and "images are missing" in msg, msg
    _assert_images(_files(result), single_process_images(cluster, [seed, seed + 1], "broken_ref"))


@pytest.fixture(scope="module")
def usdu_files(cluster, tmp_path_factory):
    """A full-size random Flux VAE (ComfyUI's VAELoader builds only that shape; 335 MB, removed at the end) in
    every process's models/vae, and a 128x128 picture in every input/ folder."""
    from safetensors.torch import save_file

    from zimage_core.tiny.vae import random_vae
    from zimage_core.model.vae import VAEConfig

    d = tmp_path_factory.mktemp("usdu")
    ae = random_vae(VAEConfig(channels=(128, 256, 512, 512), num_res_blocks=2, z_channels=16), seed=1)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(d / "ae_full.safetensors"))
    del ae
    cluster.put_model("vae", "ae_full.safetensors", d / "ae_full.safetensors")
    rgb = (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "usdu_in.png")
    cluster.put_input("usdu_in.png", d / "usdu_in.png")
    yield
    for h in cluster.hosts:
        h.remove_model("vae", "ae_full.safetensors")
    (d / "ae_full.safetensors").unlink()


def usdu_graph(prefix, padding=0, mask_blur=0):
    """UltimateSDUpscaleDistributed on our MODEL (ZImageDiTToModel + ModelSamplingAuraFlow): a 128x128 picture in
    four 64x64 tiles, 2 steps at denoise 0.5."""
    return {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": DIT, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": TE, "dtype": "auto", "device": "default"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "6": {"class_type": "ZImageDiTToModel", "inputs": {"dit": ["1", 0]}},
        "7": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["6", 0], "shift": 3.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "ae_full.safetensors"}},
        "9": {"class_type": "LoadImage", "inputs": {"image": "usdu_in.png"}},
        "10": {"class_type": "UltimateSDUpscaleDistributed", "inputs": {
            "upscaled_image": ["9", 0], "model": ["7", 0], "positive": ["4", 0], "negative": ["5", 0],
            "vae": ["8", 0], "seed": 11, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 0.5, "tile_width": 64, "tile_height": 64, "padding": padding, "mask_blur": mask_blur,
            "force_uniform_tiles": True, "tiled_decode": False}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": prefix}},
    }


def test_ultimate_sd_upscale_tiles_dealt_to_workers_equal_its_single_process_mode(cluster, usdu_files):
    """UltimateSDUpscaleDistributed with our MODEL: the tiles dealt out to the master and two workers give the
    picture its single-process mode gives (plain /prompt, no workers) on the same tiles (<= 1/255).

    With padding 0 and mask_blur 0, so that the tiles are disjoint: the single-process mode is progressive (each
    tile is cut from the picture with the earlier tiles already blended in), the workers cut theirs from the
    original, so with padding / blur the tiles' overlaps differ between the two modes whatever the model (measured
    with this graph at padding 16, mask_blur 4: up to 75/255 at places, most pixels within 1/255)."""
    single = _pngs(cluster.master, cluster.master.run(usdu_graph("usdu_single"), timeout=600), "11")
    body, entry = run_distributed(cluster, usdu_graph("usdu_dist"), timeout=600)
    assert body["worker_count"] == 2, body
    dist = _pngs(cluster.master, entry, "11")
    assert len(single) == len(dist) == 1 and single[0].shape == dist[0].shape == (128, 128, 3)
    src = np.asarray(Image.open(os.path.join(cluster.master.input_dir, "usdu_in.png")).convert("RGB")).astype(np.int16)
    assert np.abs(single[0] - src).max() > 10  # the tiles were resampled
    assert np.abs(dist[0] - single[0]).max() <= 1
    taken = {wid: w.get("/distributed/local_log?lines=3000")["content"].count("Assigned tile_id")
             for wid, w in cluster.workers.items() if wid in ("1", "2")}
    assert sum(taken.values()) >= 1, taken  # tiles were sampled on the workers, not all on the master


def test_a_worker_that_dies_mid_job(cluster, tmp_path):
    """Worker 2 is killed (SIGKILL by its pid) right after the job was dispatched to it. The master waits
    settings.worker_timeout_seconds without news, probes worker 2 (gone), and finishes with its own and worker 1's
    images (seeds s, s + 1) in bounded time; its console names worker 2 ("Heartbeat timeout"), and our client's
    warning names worker 2 and says it stopped answering. Last in the module: worker 2 stays down."""
    seed = 700
    w2 = cluster.workers["2"]

    def kill_worker_2(msg):
        if msg["type"] == "client_queued":
            os.kill(w2.pid, signal.SIGKILL)

    t = time.monotonic()
    result = client_run(cluster, distributed_graph(seed, "died", steps=6), ["1", "2"], tmp_path, kill_worker_2)
    elapsed = time.monotonic() - t
    assert w2.proc.wait(timeout=10) == -signal.SIGKILL
    assert elapsed < WORKER_TIMEOUT + 60, elapsed
    assert result.status["status_str"] == "success"
    console = cluster.master.get("/distributed/local_log?lines=400")["content"]  # the master's console
    assert "Heartbeat timeout: worker=2" in console, console[-3000:]
    assert len(result.warnings) == 1 and "worker 2" in result.warnings[0] \
        and "stopped answering" in result.warnings[0], result.warnings
    _assert_images(_files(result), single_process_images(cluster, [seed, seed + 1], "died_ref", steps=6))
