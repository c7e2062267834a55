"""Benchmark of quantized DiT storage: load time, memory and per-step time of one full-width (3840) random DiT
with fewer layers, stored as bf16, scaled fp8, GGUF Q8_0 and GGUF Q4_K.

    python -m zimage_core.bench_quant [--layers 2] [--size 512] [--device cpu] [--out bench_quant.json]

Each format is measured in a fresh subprocess: load wall time, RSS above the process baseline after the load
and after one step (touched pages of the memory-mapped file plus what the forward allocates) against the
file size, and the median time of DiT forwards at `size` x `size`. Per-step ratios to bf16 are taken in the
same run (on the CPU the computation is fp32, so bf16 pays a cast and GGUF a dequantization per layer).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .transformer import DiTConfig

FORMATS = ("bf16", "fp8", "Q8_0", "Q4_K")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_files(cfg: DiTConfig, root: Path) -> dict[str, Path]:
    """The same architecture in each format (random weights; the GGUF bulk is random blocks)."""
    from safetensors.torch import save_file

    from .tiny.quantized import write_random_gguf_dit
    from .transformer import ZImageDiT

    root.mkdir(parents=True, exist_ok=True)
    paths = {f: root / (f"wide-{f}.gguf" if f.startswith("Q") else f"wide-{f}.safetensors") for f in FORMATS}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageDiT(cfg).state_dict().items()}
    if not paths["bf16"].exists() or not paths["fp8"].exists():
        g = torch.Generator().manual_seed(0)
        bf16, fp8 = {}, {}
        for name, shape in shapes.items():
            t = (1 + 0.1 * torch.randn(shape, generator=g)) if "norm" in name else (
                torch.randn(shape, generator=g) * (0.5 / shape[-1] ** 0.5))
            bf16[name] = t.to(torch.bfloat16)
            if len(shape) == 2 and "pad_token" not in name and shape[0] * shape[1] > 1 << 20:
                scale = t.abs().amax() / 448
                fp8[name] = (t / scale).to(torch.float8_e4m3fn)
                fp8[name[: -len("weight")] + "scale_weight"] = scale.reshape(1).float()
            else:
                fp8[name] = bf16[name]
        save_file(bf16, str(paths["bf16"]))
        fp8["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
        save_file(fp8, str(paths["fp8"]))
        del bf16, fp8
    for q in ("Q8_0", "Q4_K"):
        if not paths[q].exists():
            write_random_gguf_dit(paths[q], cfg, q)
    return paths


def measure(path: str, size: int, steps: int, device: str) -> dict:
    """In this (fresh) process: load, then `steps` forwards."""
    from .dit_loader import load_dit

    base = _rss_mb()
    t0 = time.perf_counter()
    model = load_dit(path, device=device)
    load_s = time.perf_counter() - t0
    after_load = _rss_mb() - base
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, size // 8, size // 8, generator=g).to(device)
    caps = [torch.randn(32, model.cfg.cap_feat_dim, generator=g).to(device)]
    t = torch.tensor([0.5], device=device)
    times = []
    with torch.inference_mode():
        for _ in range(steps + 1):  # the first one warms up
            t0 = time.perf_counter()
            model(x, t, caps)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"load_s": load_s, "rss_after_load_mb": after_load, "rss_after_step_mb": _rss_mb() - base,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base,
            "step_s": statistics.median(times[1:]), "file_mb": Path(path).stat().st_size / 2**20}


def run(layers: int, size: int, steps: int, device: str, workdir: Path) -> dict:
    cfg = DiTConfig(n_layers=layers, n_refiner_layers=1)
    paths = write_files(cfg, workdir)
    out = {"config": {"dim": cfg.dim, "n_layers": layers, "n_refiner_layers": 1, "size": size, "device": device,
                      "threads": torch.get_num_threads()}, "formats": {}}
    for f in FORMATS:
        code = (f"import json; from zimage_core.bench_quant import measure; "
                f"print(json.dumps(measure({str(paths[f])!r}, {size}, {steps}, {device!r})))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out["formats"][f] = json.loads(r.stdout.strip().splitlines()[-1])
    bf16 = out["formats"]["bf16"]["step_s"]
    for f, m in out["formats"].items():
        m["step_vs_bf16"] = m["step_s"] / bf16
        m["rss_after_load_vs_file"] = m["rss_after_load_mb"] / m["file_mb"]
        m["peak_rss_vs_file"] = m["peak_rss_mb"] / m["file_mb"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", help="keep the weight files here (reused across runs)")
    p.add_argument("--out", default="bench_quant.json")
    a = p.parse_args(argv)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="zimage-bench-quant-"))
    r = run(a.layers, a.size, a.steps, a.device, workdir)
    print(f"{'format':7s} {'file MB':>8s} {'load s':>7s} {'RSS load/file':>14s} {'peak RSS/file':>14s} "
          f"{'step s':>7s} {'step/bf16':>9s}")
    for f, m in r["formats"].items():
        print(f"{f:7s} {m['file_mb']:8.0f} {m['load_s']:7.3f} {m['rss_after_load_vs_file']:14.2f} "
              f"{m['peak_rss_vs_file']:14.2f} {m['step_s']:7.2f} {m['step_vs_bf16']:9.2f}")
    Path(a.out).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
