#!/usr/bin/env python3
"""Throughput over ComfyUI-Distributed: N pictures on the master alone, master + 1 worker, master + 2 workers, for
our DiT (ZImageDiTLoader -> ZImageSampler) and for ComfyUI's native Z-Image model (UNETLoader -> ModelSampling
AuraFlow -> KSampler) on the same file, everything else equal (our text encoder and VAE, same steps / size).

    python tests/bench_distributed.py                     # after `bash tests/setup-host.sh`
    python tests/bench_distributed.py --images 6 --steps 2 --json bench_distributed.json

The DiT is random and full-width (ComfyUI builds a Z-Image model only from dim 3840): one main layer, the two
refiners, bf16, ~2 GB, written to a temporary folder and removed at the end; every process runs with
--bf16-unet so that the native model stays bf16 on the CPU as ours does (~2.5 GB per process). Per engine a fresh cluster (three
ComfyUI processes on 127.0.0.1, tests/distributed_cluster.py) so that only one DiT is in memory per process. Each
configuration first runs one untimed job (every participant loads its models), then ceil(N / participants)
distributed jobs queued at once; the wall time is from the first POST /distributed/queue to the last /history
entry. Printed: images/minute, wall seconds and CPU seconds (all participating processes, from /proc) per image,
and ours / native in the same configuration. The processes share this machine's cores: on a 2-core machine more
workers add no compute, the numbers show the orchestration cost; on one GPU per worker they show the scaling.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from comfyui_host import REPO_ROOT  # noqa: E402
from distributed_cluster import HOST_DIR, Cluster, distributed_pack  # noqa: E402

COMFYUI = os.environ.get("COMFYUI_PATH") or os.path.join(HOST_DIR, "ComfyUI-0.18.1")
DIT, TE, VAE = "z_image_wide_bench.safetensors", "qwen_3_4b_tiny.safetensors", "ae_tiny.safetensors"
PROMPT = "a red fox in the snow at sunrise"


def write_models(d: Path):
    import torch
    from safetensors.torch import save_file

    from zimage_core.tiny import make_tiny
    from zimage_core.tiny.dit import random_dit_state
    from zimage_core.model.transformer import DiTConfig

    tiny = make_tiny(d / "tiny")
    cfg = DiTConfig(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, ffn_dim=10240, cap_feat_dim=64)
    save_file(random_dit_state(cfg, seed=1, dtype=torch.bfloat16), str(d / DIT))
    return tiny, d / DIT


def graph(engine, seed, steps, size, prefix):
    g = {
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": TE, "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": VAE}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "30": {"class_type": "DistributedSeed", "inputs": {"seed": seed}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}},
        "31": {"class_type": "DistributedCollector", "inputs": {"images": ["7", 0], "load_balance": False}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": prefix}},
    }
    if engine == "ours":
        g["1"] = {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": DIT, "weight_dtype": "auto"}}
        g["6"] = {"class_type": "ZImageSampler",
                  "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": ["30", 0],
                             "steps": steps, "cfg": 1.0, "shift": 3.0, "denoise": 1.0, "sampler_name": "euler",
                             "scheduler": "simple"}}
    else:
        g["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}}
        g["9"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}}
        g["10"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}}
        g["6"] = {"class_type": "KSampler",
                  "inputs": {"model": ["9", 0], "positive": ["4", 0], "negative": ["10", 0], "latent_image": ["5", 0],
                             "seed": ["30", 0], "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 1.0}}
    return g


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def run_jobs(cluster, engine, workers, jobs, seed0, steps, size, timeout):
    ids = [str(i) for i in range(1, workers + 1)]
    pids = [cluster.master.pid] + [cluster.workers[i].pid for i in ids]
    prompt_ids = []
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    for j in range(jobs):
        status, body = cluster.queue(graph(engine, seed0 + 10 * j, steps, size, f"{engine}_w{workers}"), ids)
        if status != 200 or body.get("worker_count") != workers:
            raise RuntimeError(f"/distributed/queue: HTTP {status}: {body}")
        prompt_ids.append(body["prompt_id"])
    images = 0
    for pid in prompt_ids:
        entry = cluster.master.wait_for(pid, timeout=timeout)
        images += len(cluster.master.output_files(entry, "8"))
    return images, time.monotonic() - t0, cpu_seconds(pids) - cpu0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6, help="pictures per configuration (default 6)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="width = height (default 64)")
    ap.add_argument("--workers", default="0,1,2", help="worker counts to measure (default 0,1,2)")
    ap.add_argument("--engines", default="ours,native")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    dist = distributed_pack(HOST_DIR)
    if not dist or not os.path.isfile(os.path.join(COMFYUI, "main.py")):
        sys.exit(f"needs ComfyUI and ComfyUI-Distributed in {HOST_DIR}: run `bash tests/setup-host.sh`")
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="zimage-bench-dist-") as tmp:
        tiny, dit = write_models(Path(tmp))
        for engine in args.engines.split(","):
            # --bf16-unet: ComfyUI keeps the native model in bf16 on the CPU too (as our loader keeps the file's
            # bf16), so both engines hold and multiply the same weights
            with Cluster(COMFYUI, dist, REPO_ROOT, n_workers=max(counts), worker_timeout=600,
                         extra_args=["--bf16-unet"]) as c:
                c.put_model("diffusion_models", DIT, dit)
                c.put_model("text_encoders", TE, tiny["text_encoder"])
                c.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
                c.put_model("vae", VAE, tiny["vae"])
                run_jobs(c, engine, max(counts), 1, 1, args.steps, args.size, args.timeout)  # warm-up: loads
                for w in counts:
                    jobs = math.ceil(args.images / (1 + w))
                    images, wall, cpu = run_jobs(c, engine, w, jobs, 1000 * (w + 1), args.steps, args.size,
                                                 args.timeout)
                    rows.append({"engine": engine, "workers": w, "images": images, "wall_s": round(wall, 2),
                                 "images_per_min": round(60 * images / wall, 2),
                                 "wall_s_per_image": round(wall / images, 3),
                                 "cpu_s_per_image": round(cpu / images, 3)})
                    print(f"  {engine} master+{w}: {images} images in {wall:.1f} s", file=sys.stderr, flush=True)
    by = {(r["engine"], r["workers"]): r for r in rows}
    for r in rows:
        nat = by.get(("native", r["workers"]))
        r["ours_over_native_images_per_min"] = (round(by[("ours", r["workers"])]["images_per_min"]
                                                      / nat["images_per_min"], 3)
                                                if nat and ("ours", r["workers"]) in by else None)
    print(f"\nComfyUI-Distributed throughput, {args.size}x{args.size}, {args.steps} steps, DiT dim 3840 x 1 layer "
          f"bf16, {os.cpu_count()} CPU cores shared by all processes")
    print(f"{'engine':<8} {'participants':>12} {'images':>6} {'wall s':>8} {'img/min':>8} {'s/img':>7} "
          f"{'CPU s/img':>9} {'ours/native':>11}")
    for r in rows:
        ratio = r["ours_over_native_images_per_min"]
        print(f"{r['engine']:<8} {'master+' + str(r['workers']):>12} {r['images']:>6} {r['wall_s']:>8.1f} "
              f"{r['images_per_min']:>8.2f} {r['wall_s_per_image']:>7.2f} {r['cpu_s_per_image']:>9.2f} "
              f"{'' if ratio is None else f'{ratio:.3f}':>11}")
    result = {"benchmark": "bench_distributed", "size": args.size, "steps": args.steps, "rows": rows,
              "cpu_count": os.cpu_count()}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
