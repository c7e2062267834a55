"""Benchmark: quantized DiT files through our loader vs ComfyUI's loaders, same files, same machine, one run.

    python tests/bench_quant_host.py [--layers 2] [--size 256] [--steps 2] [--repeats 2] [--workdir DIR] [--out FILE]

The files are zimage_core.tools.bench_quant's: a full-width (3840) random DiT with `layers` main layers and 2 + 2
refiner blocks (what ComfyUI builds), stored as bf16, scaled fp8, GGUF Q8_0 and GGUF Q4_K. Each contender
runs in a fresh process:
  ours    zimage_core.load_dit -> DiT forwards (what ZImageSampler runs)
  ours_whole  the same with ops.CPU_CHUNK_ELEMENTS out of reach: every layer's whole weight expanded at once
          (how ops.Linear computed before the row chunking; the before/after of that change in one run)
  native  comfy.sd.load_diffusion_model (what UNETLoader does; bf16 and fp8) -> comfy.sample.sample
  gguf    ComfyUI-GGUF's UnetLoaderGGUF steps (GGMLOps, gguf_sd_loader, load_diffusion_model_state_dict,
          GGUFModelPatcher; Q8_0 and Q4_K) -> comfy.sample.sample
One sampling step (euler, cfg 1) is one DiT evaluation on the same latent size and 32 caption tokens; the
first one (ComfyUI loads the model onto the device there) is reported apart, the step time is the median of
`steps` more (wall time, and the process's CPU time, which other work on the machine skews less). Memory: the baseline (VmRSS after the imports, ComfyUI's being larger) is reported on its own;
the peak is VmHWM reset after the imports, minus that baseline. Needs COMFYUI_PATH (tests/setup-host.sh) and
ComfyUI-GGUF beside it. A benchmark, not a test: only the ratios of one run are comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
COMFYUI = os.environ.get("COMFYUI_PATH") or str(Path(os.environ.get("ZIMAGE_TEST_HOST") or "/tmp/zimage-host")
                                                 / "ComfyUI-0.18.1")
GGUF_PACK = Path(os.environ.get("COMFYUI_GGUF_PATH") or Path(COMFYUI).parent / "ComfyUI-GGUF")
THEIRS = {"bf16": "native", "fp8": "native", "Q8_0": "gguf", "Q4_K": "gguf"}
KINDS = {f: ("ours", "ours_whole", t) for f, t in THEIRS.items()}


def median_of(results: list[dict]):
    """Field by field median of the repeats' results (the first error, if any run failed)."""
    errors = [r for r in results if "error" in r]
    if errors:
        return errors[0]
    out = {}
    for k, v in results[0].items():
        if isinstance(v, dict):
            out[k] = median_of([r[k] for r in results])
        elif isinstance(v, (int, float)):
            out[k] = statistics.median(r[k] for r in results)
        else:
            out[k] = v
    return out


def comfy_child(kind: str, path: str, size: int, steps: int) -> dict:
    sys.path.insert(0, COMFYUI)  # before this repository, whose nodes/ package would hide ComfyUI's nodes.py
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import importlib

    import comfy.sample
    import comfy.sd
    import torch

    from zimage_core.tools.bench_quant import memory_after, reset_peak, status

    if kind == "gguf":
        sys.path.append(str(GGUF_PACK.parent))
        nodes = importlib.import_module(GGUF_PACK.name + ".nodes")
    reset_peak()
    base = status("VmRSS")
    t0 = time.perf_counter()
    if kind == "native":
        model = comfy.sd.load_diffusion_model(path)
    else:  # UnetLoaderGGUF.load_unet with the default dequant/patch dtypes, on a path instead of a folder name
        ops = nodes.GGMLOps()
        ops.Linear.dequant_dtype = None
        ops.Linear.patch_dtype = None
        model = comfy.sd.load_diffusion_model_state_dict(nodes.gguf_sd_loader(path),
                                                         model_options={"custom_operations": ops})
        model = nodes.GGUFModelPatcher.clone(model)
    load_s = time.perf_counter() - t0
    after_load = memory_after(base)
    cap = model.model.diffusion_model.cap_embedder[1].weight.shape[1]
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 32, cap, generator=g), {}]]
    neg = [[torch.zeros(1, 32, cap), {}]]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    times, cpu = [], []
    with torch.no_grad():
        for _ in range(steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", pos, neg, latent, seed=0, disable_pbar=True)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"baseline_mb": base / 2**20, "load_s": load_s, "after_load": after_load,
            "after_steps": memory_after(base), "first_step_s": times[0], "step_s": statistics.median(times[1:]),
            "step_cpu_s": statistics.median(cpu[1:]),
            "file_mb": Path(path).stat().st_size / 2**20, "weight_dtype": str(model.model.get_dtype())}


def run_child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workdir", help="keep the weight files here (reused across runs)")
    p.add_argument("--formats", default="bf16,fp8,Q8_0,Q4_K")
    p.add_argument("--repeats", type=int, default=2, help="turns over all contenders; medians are reported")
    p.add_argument("--out", default="bench_quant_host.json")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, path, size, steps = a.child
        if kind in ("ours", "ours_whole"):
            from zimage_core.weights import ops
            from zimage_core.tools.bench_quant import measure

            if kind == "ours_whole":  # the CPU row chunking off: each layer's whole weight expanded at once
                ops.CPU_CHUNK_ELEMENTS = 1 << 62

            print(json.dumps(measure(path, int(size), int(steps), "cpu")))
        else:
            print(json.dumps(comfy_child(kind, path, int(size), int(steps))))
        return 0

    import torch

    from zimage_core.tools.bench_quant import add_ratios, bench_config, write_files

    torch.set_num_threads(2)
    cfg = bench_config(a.layers)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="zimage-bench-quant-"))
    paths = write_files(cfg, workdir)
    formats = a.formats.split(",")
    res = {"config": {"dim": cfg.dim, "n_layers": a.layers, "n_refiner_layers": cfg.n_refiner_layers, "size": a.size,
                      "steps": a.steps, "repeats": a.repeats, "device": "cpu", "threads": torch.get_num_threads(),
                      "load_average_before": os.getloadavg()}, "formats": {}}
    runs = {f: {k: [] for k in KINDS[f]} for f in formats}
    for _ in range(a.repeats):  # in turns, so a change in the machine's other load hits every contender alike
        for f in formats:
            for kind in KINDS[f]:
                try:
                    runs[f][kind].append(run_child([kind, str(paths[f]), str(a.size), str(a.steps)]))
                except RuntimeError as e:
                    runs[f][kind].append({"error": str(e)[-1500:]})
                print(f, kind, json.dumps(runs[f][kind][-1])[:300], file=sys.stderr, flush=True)
    for f in formats:
        res["formats"][f] = {k: median_of(v) for k, v in runs[f].items()}
    res["config"]["load_average_after"] = os.getloadavg()  # other work on the machine skews every timing
    bf16 = {k: res["formats"].get("bf16", {}).get(k, {}) for k in ("ours", "ours_whole", "native")}
    for f, row in res["formats"].items():
        theirs = THEIRS[f]
        for kind, m in row.items():
            if "error" not in m:
                ref = bf16[kind if kind.startswith("ours") else "native"]
                add_ratios(m, cfg, ref.get("step_s"), ref.get("step_cpu_s"))
        if "error" not in row["ours"] and "error" not in row[theirs]:
            o, t = row["ours"], row[theirs]
            # ComfyUI's loaders defer most of the work to the first step (the model is put on the device there)
            row["ours_over_theirs"] = {
                "load_and_first_step_s": (o["load_s"] + o["first_step_s"]) / (t["load_s"] + t["first_step_s"]),
                "step_s": o["step_s"] / t["step_s"], "step_cpu_s": o["step_cpu_s"] / t["step_cpu_s"],
                "peak_rss_mb": o["after_steps"]["peak_rss_mb"] / t["after_steps"]["peak_rss_mb"]}
    print(f"{'format':6s} {'who':10s} {'file MB':>8s} {'load s':>7s} {'base MB':>8s} {'peak MB':>8s} {'peak/file':>9s} "
          f"{'30L proj':>8s} {'1st s':>6s} {'step s':>7s} {'/bf16':>6s} {'cpu s':>6s} {'/bf16':>6s}"
          "  ours/theirs: load+1st step cpu peak")
    for f, row in res["formats"].items():
        for kind in KINDS[f]:
            m = row[kind]
            if "error" in m:
                print(f"{f:6s} {kind:10s} error: {m['error'].strip().splitlines()[-1][:80]}")
                continue
            r = row.get("ours_over_theirs") if kind == "ours" else None
            rs = (f"  {r['load_and_first_step_s']:9.2f} {r['step_s']:5.2f} {r['step_cpu_s']:5.2f} "
                  f"{r['peak_rss_mb']:5.2f}" if r else "")
            proj = m["projected_full_model_peak_vs_file"]
            print(f"{f:6s} {kind:10s} {m['file_mb']:8.0f} {m['load_s']:7.2f} {m['baseline_mb']:8.0f} "
                  f"{m['after_steps']['peak_rss_mb']:8.0f} {m['peak_vs_file']:9.2f} "
                  f"{'n/a' if proj is None else f'{proj:.2f}':>8s} {m['first_step_s']:6.1f} {m['step_s']:7.2f} "
                  f"{m.get('step_vs_bf16', float('nan')):6.2f} {m['step_cpu_s']:6.2f} "
                  f"{m.get('step_cpu_vs_bf16', float('nan')):6.2f}{rs}")
    print(f"load average before/after (1 min): {res['config']['load_average_before'][0]:.1f} / "
          f"{res['config']['load_average_after'][0]:.1f} on {os.cpu_count()} CPUs")
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
