"""Benchmark: the MODEL bridge against ComfyUI's native path, same file, same KSampler, one run.

    python tests/bench_bridge.py [--layers 2] [--size 256] [--steps 2] [--repeats 2] [--out bench_bridge.json]
    python tests/bench_bridge.py --cache EasyCache --steps 10     # both MODELs behind ComfyUI's EasyCache node

ComfyUI builds a Z-Image model only from a 3840-wide DiT, so the file is a full-width random DiT with fewer
main layers (bf16, 2 + 2 refiner blocks as ComfyUI builds them). Each contender runs in a fresh process, in
turns (ours, ours_blas, native, ours, ...):
  native  comfy.sd.load_diffusion_model (what UNETLoader does) -> KSampler (euler / simple)
  ours    zimage_core.load_dit -> ZImageDiTToModel's MODEL (nodes/host_model.py) -> the same KSampler call
  ours_blas  the same with ZIMAGE_CPU_GEMM=blas: every fp32 product through F.linear's BLAS as in native, so
          the table separates what the choice of GEMM library (zimage_core.weights.ops.cpu_gemm) brings from the rest
Reported: load seconds, sampling seconds (wall), their sum (what a first run of a graph waits), the CPU
seconds of the sampling (all threads; steadier than wall time on a shared machine), peak RSS (VmHWM, reset
after the imports) above the RSS after the imports (file-backed pages of memory-mapped weights count as
resident once touched), the number of diffusion-model forwards (fewer than the steps when a --cache node
skips steps: EasyCache / LazyCache from comfy_extras, reuse_threshold --cache-threshold, start 0, end 1, on every
contender), and the largest difference between the two latents. Needs COMFYUI_PATH (tests/setup-host.sh). A benchmark, not a
test: timings depend on the machine; only the ratios of one run are comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMFYUI = os.environ.get("COMFYUI_PATH") or str(Path(os.environ.get("ZIMAGE_TEST_HOST") or "/tmp/zimage-host")
                                                 / "ComfyUI-0.18.1")
CAP_DIM = 64


def comfy_in_process():
    """The pack (imported first: its host adapter stays standalone) and ComfyUI's modules (`--cpu`) in this
    process, torch on 2 threads; returns the pack."""
    sys.path.insert(0, str(HERE))
    from workflow_support import load_pack

    pack = load_pack()
    sys.path.append(COMFYUI)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    torch.set_num_threads(2)
    return pack


def load_model(pack, native: bool, path: str):
    """A ComfyUI MODEL of the file: native's (what UNETLoader does) or ours (ZImageDiTToModel's)."""
    import importlib

    import comfy.sd
    import torch

    if native:
        return comfy.sd.load_diffusion_model(path)
    hm = importlib.import_module(pack.__name__ + ".nodes.host_model")
    dit = importlib.import_module(pack.__name__ + ".zimage_core.model.dit_loader").load_dit(path)
    patched = importlib.import_module(pack.__name__ + ".zimage_core.adapters.patching").PatchedDiT(dit)
    return hm.as_model(patched, torch.device("cpu"), torch.device("cpu"))


def child(kind: str, path: str, size: int, steps: int, out: str, cache: str, threshold: float) -> None:
    if kind == "ours_blas":
        os.environ["ZIMAGE_CPU_GEMM"] = "blas"
    pack = comfy_in_process()
    import importlib

    import comfy.sample
    import torch

    from zimage_core.tools.bench_quant import reset_peak, status

    reset_peak()
    base = status("VmRSS")
    t0 = time.perf_counter()
    model = load_model(pack, kind == "native", path)
    gemm = "blas" if kind == "native" else importlib.import_module(pack.__name__ + ".zimage_core.weights.ops").cpu_gemm()
    load_s = time.perf_counter() - t0
    if cache != "none":
        from comfy_extras import nodes_easycache

        node = getattr(nodes_easycache, f"{cache}Node")
        model = node.execute(model, reuse_threshold=threshold, start_percent=0.0, end_percent=1.0,
                             verbose=False).result[0]
    forwards = []
    dm = model.model.diffusion_model
    inner = dm._forward
    dm._forward = lambda *a, **k: forwards.append(1) or inner(*a, **k)  # counts the model's own forwards
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 32, CAP_DIM, generator=g), {}]]
    neg = [[torch.zeros(1, 32, CAP_DIM), {}]]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        x = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", pos, neg, latent, seed=0,
                                disable_pbar=True)
    sample_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    torch.save(x.float(), out)
    print(json.dumps({"gemm": gemm, "forwards": len(forwards), "load_s": load_s, "sample_s": sample_s, "load_plus_sample_s": load_s + sample_s,
                      "sample_cpu_s": cpu_s, "peak_rss_above_baseline": status("VmHWM") - base}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache", choices=("none", "EasyCache", "LazyCache"), default="none",
                   help="put ComfyUI's cache node on every contender's MODEL")
    p.add_argument("--cache-threshold", type=float, default=0.2, help="its reuse_threshold (node default 0.2)")
    p.add_argument("--out", default="bench_bridge.json")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, path, size, steps, out, cache, threshold = a.child
        child(kind, path, int(size), int(steps), out, cache, float(threshold))
        return 0

    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE.parent))
    from zimage_core.tiny.dit import random_dit_state
    from zimage_core.model.transformer import DiTConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    cfg = DiTConfig(dim=3840, n_layers=a.layers, n_refiner_layers=2, n_heads=30, ffn_dim=10240, cap_feat_dim=CAP_DIM)
    path = tmp / "z_image_wide_bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in random_dit_state(cfg, seed=1).items()}, str(path))
    runs = {"ours": [], "ours_blas": [], "native": []}
    for r in range(a.repeats):
        for kind in runs:
            out = tmp / f"{kind}.pt"
            res = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(a.size), str(a.steps),
                                  str(out), a.cache, str(a.cache_threshold)], capture_output=True, text=True,
                                 timeout=1800)
            if res.returncode:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            runs[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
    x_native = torch.load(tmp / "native.pt")
    metrics = ("load_s", "sample_s", "load_plus_sample_s", "sample_cpu_s", "peak_rss_above_baseline")
    med = {k: {m: statistics.median(r[m] for r in v) for m in metrics} for k, v in runs.items()}
    result = {"layers": a.layers, "size": a.size, "steps": a.steps, "repeats": a.repeats, "cache": a.cache,
              "cache_threshold": a.cache_threshold, "forwards": {k: v[0]["forwards"] for k, v in runs.items()},
              "file_bytes": path.stat().st_size, "ours_gemm": runs["ours"][0]["gemm"], "median": med,
              "ratios_ours_over_native": {m: med["ours"][m] / med["native"][m] for m in metrics},
              "ratios_ours_blas_over_native": {m: med["ours_blas"][m] / med["native"][m] for m in metrics},
              "max_abs_latent_diff": {k: (torch.load(tmp / f"{k}.pt") - x_native).abs().max().item()
                                      for k in ("ours", "ours_blas")},
              "latent_abs_max": x_native.abs().max().item()}
    print(f"{'':24s} {'ours':>9s} {'ours_blas':>10s} {'native':>9s} {'ours/native':>12s} {'blas/native':>12s}")
    for m in metrics:
        o, b, n = med["ours"][m], med["ours_blas"][m], med["native"][m]
        scale = 2**20 if m.startswith("peak") else 1
        print(f"{m:24s} {o / scale:9.2f} {b / scale:10.2f} {n / scale:9.2f} {o / n:12.2f} {b / n:12.2f}")
    diff = result["max_abs_latent_diff"]
    print(f"file {result['file_bytes'] / 2**20:.0f} MiB; ours computed its fp32 products with {result['ours_gemm']}; "
          f"largest latent difference to native {diff['ours']:.2e} (ours), {diff['ours_blas']:.2e} (ours_blas), "
          f"latent max {result['latent_abs_max']:.2f}")
    fw = result["forwards"]
    print(f"cache {a.cache}: diffusion-model forwards for {a.steps} steps: ours {fw['ours']}, ours_blas "
          f"{fw['ours_blas']}, native {fw['native']}")
    Path(a.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp)  # the 2 GiB file and the latents
    return 0


if __name__ == "__main__":
    sys.exit(main())
