"""Benchmark of quantized DiT storage: load time, memory and per-step time of one full-width (3840) random DiT
with fewer layers, stored as bf16, scaled fp8, GGUF Q8_0 and GGUF Q4_K.

    python -m zimage_core.tools.bench_quant [--layers 2] [--size 256] [--device cpu] [--out bench_quant.json]

Each format is measured in a fresh subprocess. Memory: the process baseline (VmRSS after the imports) is
reported on its own; the peak is VmHWM, reset after the imports (Linux `clear_refs` 5), minus that baseline,
so it counts what the load and the forwards add: the pages of the memory-mapped file that were touched
(RssFile) plus what is allocated (RssAnon: the per-layer dequantized weight, the activations, and freed memory
the allocator keeps). The workspace (peak minus file size) does not grow with the number of layers, so the
ratio peak / file of this reduced model is also projected to the full 30-layer model (same workspace, that
model's file size). Per step: the median wall time (and the process's CPU time, less sensitive to other work
on the machine) of DiT forwards at `size` x `size` after one warm-up, with ratios to bf16 taken in the same run (on the CPU the computation is fp32, so bf16 pays a cast and GGUF a
dequantization per layer). tests/bench_quant_host.py runs the same files through ComfyUI's loaders.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..model.transformer import DiTConfig

FORMATS = ("bf16", "fp8", "Q8_0", "Q4_K")
FULL_LAYERS = 30


def status(field: str) -> int:
    """A /proc/self/status size in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    """Start VmHWM afresh, so the imports' own peak does not hide the model's (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def bench_config(layers: int) -> DiTConfig:
    """The full-width architecture ComfyUI also detects (2 + 2 refiner blocks), with `layers` main layers."""
    return DiTConfig(n_layers=layers, n_refiner_layers=2)


def write_files(cfg: DiTConfig, root: Path) -> dict[str, Path]:
    """The same architecture in each format (random weights; the GGUF bulk is random blocks). Files are
    reused when `root` already holds them for this config (its name records the layer count)."""
    from safetensors.torch import save_file

    from ..model.transformer import ZImageDiT
    from ..tiny.quantized import write_random_gguf_dit

    root = Path(root) / f"dim{cfg.dim}-L{cfg.n_layers}-R{cfg.n_refiner_layers}-cap{cfg.cap_feat_dim}"
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


def memory_after(base: int) -> dict:
    """Memory figures (MiB) relative to the baseline `base` (bytes)."""
    mib = 2**20
    return {"rss_mb": (status("VmRSS") - base) / mib, "peak_rss_mb": (status("VmHWM") - base) / mib,
            "rss_file_mb": status("RssFile") / mib, "rss_anon_mb": status("RssAnon") / mib}


def measure(path: str, size: int, steps: int, device: str) -> dict:
    """In this (fresh) process: load, then one warm-up and `steps` timed forwards."""
    from ..model.dit_loader import load_dit

    reset_peak()
    base = status("VmRSS")
    t0 = time.perf_counter()
    model = load_dit(path, device=device)
    load_s = time.perf_counter() - t0
    after_load = memory_after(base)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, size // 8, size // 8, generator=g).to(device)
    caps = [torch.randn(32, model.cfg.cap_feat_dim, generator=g).to(device)]
    t = torch.tensor([0.5], device=device)
    times, cpu = [], []
    with torch.inference_mode():
        for _ in range(steps + 1):  # the first one warms up
            t0, c0 = time.perf_counter(), time.process_time()
            model(x, t, caps)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"baseline_mb": base / 2**20, "load_s": load_s, "after_load": after_load, "after_steps": memory_after(base),
            "first_step_s": times[0], "step_s": statistics.median(times[1:]), "step_cpu_s": statistics.median(cpu[1:]),
            "file_mb": Path(path).stat().st_size / 2**20}


def full_model_file_mb(cfg: DiTConfig, file_mb: float) -> float:
    """The file size of the same format with FULL_LAYERS main layers (per-layer bytes from the file's own
    layers: the reduced file minus its non-layer part, measured as the difference of two layer counts)."""
    from ..model.transformer import ZImageDiT

    with torch.device("meta"):
        m = ZImageDiT(cfg)
    n = dict(m.named_parameters())
    per_layer = sum(p.numel() for k, p in n.items() if k.startswith("layers.0."))
    total = sum(p.numel() for p in n.values())
    bytes_per_param = file_mb / total  # the bulk dominates; small tensors are a rounding error here
    return file_mb + (FULL_LAYERS - cfg.n_layers) * per_layer * bytes_per_param


def add_ratios(res: dict, cfg: DiTConfig, bf16_step: float | None, bf16_cpu: float | None = None) -> None:
    peak, file_mb = res["after_steps"]["peak_rss_mb"], res["file_mb"]
    res["peak_vs_file"] = peak / file_mb
    res["after_load_vs_file"] = res["after_load"]["rss_mb"] / file_mb
    res["workspace_mb"] = peak - file_mb
    full = full_model_file_mb(cfg, file_mb)
    res["full_model_file_mb"] = full
    # only where the weights stay as stored (RSS after load + steps within the file size plus a workspace that
    # does not scale with depth); a loader that converts the weights (ComfyUI's bf16 -> fp32 on the CPU) has a
    # workspace that grows with the model, so no projection is made for it
    kept = res["after_load"]["rss_mb"] <= 1.1 * file_mb
    res["projected_full_model_peak_vs_file"] = (full + max(peak - file_mb, 0.0)) / full if kept else None
    if bf16_step:
        res["step_vs_bf16"] = res["step_s"] / bf16_step
        if bf16_cpu:
            res["step_cpu_vs_bf16"] = res["step_cpu_s"] / bf16_cpu


def run_child(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(layers: int, size: int, steps: int, device: str, workdir: Path) -> dict:
    cfg = bench_config(layers)
    paths = write_files(cfg, workdir)
    out = {"config": {"dim": cfg.dim, "n_layers": layers, "n_refiner_layers": cfg.n_refiner_layers, "size": size,
                      "device": device, "threads": torch.get_num_threads(), "steps": steps}, "formats": {}}
    for f in FORMATS:
        out["formats"][f] = run_child(f"import json; from zimage_core.tools.bench_quant import measure; "
                                      f"print(json.dumps(measure({str(paths[f])!r}, {size}, {steps}, {device!r})))")
    bf16 = out["formats"]["bf16"]
    for m in out["formats"].values():
        add_ratios(m, cfg, bf16["step_s"], bf16["step_cpu_s"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", help="keep the weight files here (reused across runs)")
    p.add_argument("--out", default="bench_quant.json")
    a = p.parse_args(argv)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="zimage-bench-quant-"))
    r = run(a.layers, a.size, a.steps, a.device, workdir)
    print(f"{'format':7s} {'file MB':>8s} {'load s':>7s} {'base MB':>8s} {'peak MB':>8s} {'peak/file':>9s} "
          f"{'full 30L':>8s} {'step s':>7s} {'step/bf16':>9s} {'cpu s':>7s} {'cpu/bf16':>8s}")
    for f, m in r["formats"].items():
        print(f"{f:7s} {m['file_mb']:8.0f} {m['load_s']:7.3f} {m['baseline_mb']:8.0f} "
              f"{m['after_steps']['peak_rss_mb']:8.0f} {m['peak_vs_file']:9.2f} "
              f"{m['projected_full_model_peak_vs_file']:8.2f} {m['step_s']:7.2f} {m['step_vs_bf16']:9.2f} "
              f"{m['step_cpu_s']:7.2f} {m['step_cpu_vs_bf16']:8.2f}")
    Path(a.out).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
