"""Benchmark: ComfyUI's TrainLoraNode on our MODEL from bf16 / Q8_0 / Q4_K files against the node on native's
MODEL from the bf16 file, one run.

    python tests/bench_train.py [--layers 1] [--size 256] [--steps 3] [--rank 8] [--out bench_train.json]
                                [--contenders native_bf16,ours_bf16,ours_Q8_0,ours_Q4_K]
    python tests/bench_train.py --full-size [--size 256] [--steps 2]   # ours_Q8_0 alone on the released DiT

ComfyUI builds a Z-Image model only from a 3840-wide DiT, so the files are a full-width random DiT with fewer
main layers (plus the 2 + 2 refiner blocks), written by zimage_core.tools.bench_quant.write_files. Each contender
trains in a fresh process, with the node's defaults (bf16 autocast, bf16 LoRA, gradient checkpointing at depth
1, AdamW) on one latent of `--size` pixels:
  native_bf16  comfy.sd.load_diffusion_model (UNETLoader) -> TrainLoraNode
  ours_<fmt>   zimage_core.load_dit -> ZImageDiTToModel's MODEL -> TrainLoraNode (the base stays as stored)
(`--contenders` picks some of them; native_bf16, the reference of the ratios, always runs.)
Reported: seconds per training step (wall; the whole node call divided by its steps, so the model load onto
the device and the adapters' setup are included), the CPU seconds of the call, peak RSS (VmHWM, reset after
the imports and the file load) above the RSS after the load, i.e. what training adds to a loaded model, and the
peak above the RSS before the load (file-backed pages of memory-mapped weights count once touched), plus the
ratios to native. Needs COMFYUI_PATH (tests/setup-host.sh). A benchmark, not a test: timings depend on the
machine; only the ratios of one run are comparable.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAP_DIM = 64
CONTENDERS = ("native_bf16", "ours_bf16", "ours_Q8_0", "ours_Q4_K")


def child(kind: str, path: str, size: int, steps: int, rank: int, cap_dim: int = CAP_DIM) -> None:
    from bench_bridge import comfy_in_process, load_model

    pack = comfy_in_process()
    import torch
    from comfy_extras import nodes_train

    from zimage_core.tools.bench_quant import reset_peak, status

    before_load = status("VmRSS")
    model = load_model(pack, kind == "native_bf16", path)
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 32, cap_dim, generator=g), {}]]
    latent = {"samples": torch.randn(1, 16, size // 8, size // 8, generator=g)}
    reset_peak()
    after_load = status("VmRSS")
    torch.manual_seed(0)
    args = dict(batch_size=1, steps=steps, grad_accumulation_steps=1, learning_rate=5e-4, rank=rank,
                optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="bf16", lora_dtype="bf16",
                quantized_backward=False, algorithm="LoRA", gradient_checkpointing=True, checkpoint_depth=1,
                offloading=False, existing_lora="[None]", bucket_mode=False, bypass_mode=False)
    t0, c0 = time.perf_counter(), time.process_time()
    out = nodes_train.TrainLoraNode.execute(model=[model], latents=[latent], positive=[positive],
                                            **{k: [v] for k, v in args.items()})
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    lora, loss, _ = out.result if hasattr(out, "result") else out
    peak = status("VmHWM")
    print(json.dumps({"s_per_step": wall / steps, "cpu_s": cpu, "peak_above_loaded": peak - after_load,
                      "peak_above_start": peak - before_load, "loaded": after_load - before_load,
                      "loss": loss["loss"], "lora_tensors": len(lora)}))


def run_child(kind: str, path: Path, a, cap_dim: int) -> dict | None:
    res = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(a.size), str(a.steps), str(a.rank),
                          str(cap_dim)], capture_output=True, text=True, timeout=3 * 3600)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def full_size(a) -> int:
    sys.path.insert(0, str(HERE.parent))
    from zimage_core.tools.fullsize_files import SIZES, default_cache, ensure_files

    sizes = SIZES["full"]
    path = ensure_files(["dit_q8_0"], Path(a.cache or default_cache()) / "full", sizes)["dit_q8_0"]
    r = run_child("ours_Q8_0", path, a, sizes.dit.cap_feat_dim)
    if r is None:
        return 1
    r["file_bytes"] = path.stat().st_size
    result = {"full_size": True, "size": a.size, "steps": a.steps, "rank": a.rank, "runs": {"ours_Q8_0": r}}
    print(f"ours_Q8_0 at full size: file {r['file_bytes'] / 2**30:.2f} GiB, {r['s_per_step']:.1f} s/step (wall), "
          f"{r['cpu_s']:.1f} CPU s, peak RSS {r['peak_above_start'] / 2**30:.2f} GiB above the start "
          f"({r['peak_above_loaded'] / 2**30:.2f} GiB above the loaded model), loss {r['loss']}")
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--out", default="bench_train.json")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="comma-separated, from " + ", ".join(CONTENDERS) + " (native_bf16 always runs: the reference)")
    p.add_argument("--full-size", action="store_true",
                   help="ours_Q8_0 alone on the released DiT (30 + 2 + 2 blocks, 3840 wide, 2560-wide captions) as a "
                        "GGUF Q8_0 file written by zimage_core.tools.fullsize_files (~6.5 GB, cached in --cache); "
                        "native's training is not run: ComfyUI trains the DiT in fp32 on the CPU (6.15B x 4 bytes)")
    p.add_argument("--cache", default=None, help="--full-size: where the file is kept (default ~/.cache/zimage-fullsize)")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, path, size, steps, rank, cap_dim = a.child
        child(kind, path, int(size), int(steps), int(rank), int(cap_dim))
        return 0
    if a.full_size:
        return full_size(a)

    chosen = [k.strip() for k in a.contenders.split(",") if k.strip()]
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown:
        p.error(f"--contenders: unknown {', '.join(unknown)}; expected some of {', '.join(CONTENDERS)}")
    sys.path.insert(0, str(HERE.parent))
    from zimage_core.tools.bench_quant import write_files
    from zimage_core.model.transformer import DiTConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = DiTConfig(n_layers=a.layers, n_refiner_layers=2, cap_feat_dim=CAP_DIM)
    files = write_files(cfg, tmp)
    runs = {}
    for kind in [k for k in CONTENDERS if k == "native_bf16" or k in chosen]:
        path = files[kind.split("_", 1)[1]]
        runs[kind] = run_child(kind, path, a, CAP_DIM)
        if runs[kind] is None:
            return 1
        runs[kind]["file_bytes"] = path.stat().st_size
    metrics = ("s_per_step", "cpu_s", "peak_above_loaded", "peak_above_start")
    native = runs["native_bf16"]
    result = {"layers": a.layers, "size": a.size, "steps": a.steps, "rank": a.rank, "runs": runs,
              "ratios_over_native_bf16": {k: {m: r[m] / native[m] for m in metrics} for k, r in runs.items()}}
    print(f"{'':14s} {'file MiB':>9s} {'s/step':>8s} {'cpu s':>8s} {'peak+ MiB':>10s} {'peak MiB':>9s}"
          f" {'s/step x':>9s} {'peak+ x':>8s} {'peak x':>7s}")
    for k, r in runs.items():
        x = result["ratios_over_native_bf16"][k]
        print(f"{k:14s} {r['file_bytes'] / 2**20:9.0f} {r['s_per_step']:8.2f} {r['cpu_s']:8.2f} "
              f"{r['peak_above_loaded'] / 2**20:10.0f} {r['peak_above_start'] / 2**20:9.0f} "
              f"{x['s_per_step']:9.2f} {x['peak_above_loaded']:8.2f} {x['peak_above_start']:7.2f}")
    print("peak+: above the RSS with the model loaded (what training adds); peak: above the RSS before the load")
    Path(a.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
