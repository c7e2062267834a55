"""Benchmark: our core against diffusers on the same random weights, inputs and thread count.

    python -m zimage_core.tools.bench [--config scaled|full|smoke] [--out bench.json] [--repeats 3]

Measures, with warm-up and the median of repeats:
  load       loading the DiT file (ours vs diffusers from_single_file / from_pretrained), wall time and peak
             RSS above the process baseline, each in a fresh subprocess (RSS peaks are per process), in turns;
  forward    one DiT forward at 512x512 (1024 image tokens) in fp32, and achieved GFLOP/s against a measured
             fp32 matmul peak;
  decode     one VAE decode of a 512x512 latent (ours vs diffusers AutoencoderKL) and the output difference;
  generate   a full 8-step 512x512 generation (text encoder, DiT, VAE decode) in one process;
  process    the whole `generate` process: import + load + generate + PNG, as a user runs it;
  dtypes     bf16- and fp8-stored DiT (computed in fp32 on CPU): forward time and error against fp32;
  controlnet one DiT forward with one ControlNet Union (1.0 and 2.1 layouts, control layers as dense as in the
             released files) against the plain forward, ours and diffusers' ZImageControlNetModel +
             transformer (`--only controlnet` runs just this section);
  nag        one DiT forward with NAG (a 32-token negative caption) against the plain forward and against the
             CFG forward (batch of 2) it replaces at cfg 1 (`--only nag` runs just this section).
Prints a table and writes JSON with ours/diffusers ratios. Timings depend on the machine; only the ratios
taken in the same run are comparable. Without diffusers installed only our side is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..model.transformer import DiTConfig

CONFIGS = {
    # runs in seconds on 2 CPU cores; head_dim 128 as in the real model
    "scaled": dict(dit=DiTConfig(dim=1536, n_layers=8, n_refiner_layers=2, n_heads=12, ffn_dim=4096, cap_feat_dim=512),
                   te=dict(hidden=512, layers=6, heads=8, kv_heads=4, head_dim=64, intermediate=1536),
                   vae=((128, 256, 512, 512), 2), size=512),
    "full": dict(dit=DiTConfig(), te=dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728),
                 vae=((128, 256, 512, 512), 2), size=1024),
    "smoke": dict(dit=DiTConfig(dim=64, n_layers=2, n_refiner_layers=1, n_heads=4, ffn_dim=170, cap_feat_dim=64),
                  te=dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128),
                  vae=((32, 32, 64, 64), 1), size=128),
}
PROMPT = "a red fox sitting in the snow at sunrise, soft golden light, a wooden cabin in the background"


def make_models(root: Path, name: str) -> dict[str, Path]:
    """Random weights in the real formats: native DiT (fp32, bf16, fp8), diffusers model folder, TE, VAE."""
    from safetensors.torch import save_file

    from ..model.vae import VAEConfig
    from ..tiny import write_diffusers_index
    from ..tiny.dit import random_dit_state, write_diffusers_folder
    from ..tiny.text_encoder import write_tiny_text_encoder
    from ..tiny.vae import write_tiny_vae

    cfg = CONFIGS[name]
    model = root / "model"
    paths = {"root": model, "dit": root / "dit_fp32.safetensors", "dit_bf16": root / "dit_bf16.safetensors",
             "dit_fp8": root / "dit_fp8.safetensors"}
    if paths["dit_fp8"].exists():
        return {**paths, "te": model / "text_encoder", "tokenizer": model / "tokenizer", "vae": model / "vae"}
    state = random_dit_state(cfg["dit"], seed=0)
    save_file(state, str(paths["dit"]))
    save_file({k: v.bfloat16() for k, v in state.items()}, str(paths["dit_bf16"]))
    write_diffusers_folder(state, cfg["dit"], model / "transformer")
    del state
    te = write_tiny_text_encoder(model, **cfg["te"])
    ch, blocks = cfg["vae"]
    write_tiny_vae(model, cfg=VAEConfig(channels=ch, num_res_blocks=blocks))
    write_diffusers_index(model)
    from ..model.dit_loader import load_dit

    fp8 = load_dit(paths["dit"], "fp8_e4m3fn").state_dict()
    save_file({k: v.contiguous() for k, v in fp8.items()}, str(paths["dit_fp8"]))
    return {**paths, "te": te["text_encoder"], "tokenizer": te["tokenizer"], "vae": model / "vae"}


def _interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (A B A B ...) after one warm-up each, so that slow
    drifts of the machine (other load, clock changes) hit every contender alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak_gflops(n: int = 2048, repeats: int = 15, ours: bool = False) -> float:
    """The best fp32 rate of `repeats` square products, through PyTorch's BLAS (`a @ b`) or, with `ours`, through
    `ops.linear`, the product our layers use (oneDNN or the BLAS, see ops.cpu_gemm): a peak, so the fastest run,
    not the median (a median taken during a slow spell of a shared machine once read 102 GFLOP/s against 172
    normally)."""
    from ..weights.ops import linear

    a, b = torch.randn(n, n), torch.randn(n, n)
    product = (lambda: linear(a, b)) if ours else (lambda: a @ b)
    with torch.no_grad():
        product()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def dit_forward_flops(cfg: DiTConfig, n_img: int, n_cap: int) -> float:
    """Multiply-adds x2 of the matmuls and attention of one forward (the caption refiner included)."""
    d, f = cfg.dim, cfg.ffn_dim

    def block(s):
        return 2 * s * d * 3 * d + 2 * s * d * d + 4 * s * s * d + 3 * 2 * s * d * f

    n_img = n_img + (-n_img) % 32
    n_cap = n_cap + (-n_cap) % 32
    return cfg.n_refiner_layers * (block(n_img) + block(n_cap)) + cfg.n_layers * block(n_img + n_cap)


# -- load, in a fresh process each ------------------------------------------------------------------
_LOAD_SCRIPT = r"""
import json, sys, time, psutil, torch
kind, path = sys.argv[1], sys.argv[2]
if kind.startswith("diffusers"):
    import diffusers
else:
    import zimage_core.model.dit_loader
torch.ones(8) @ torch.ones(8)  # torch's lazy start-up belongs to the baseline
base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
if kind == "ours":  # the default: lazy memory-mapped views (pages read when first used)
    m = zimage_core.model.dit_loader.load_dit(path, "auto")
elif kind == "ours_read":  # mmap=False: every tensor read into ordinary memory now
    m = zimage_core.model.dit_loader.load_dit(path, "auto", mmap=False)
elif kind == "diffusers_single_file":
    m = diffusers.ZImageTransformer2DModel.from_single_file(path, config=sys.argv[3], subfolder="transformer",
                                                            torch_dtype=torch.float32)
else:
    m = diffusers.ZImageTransformer2DModel.from_pretrained(path, torch_dtype=torch.float32)
dt = time.perf_counter() - t0
# VmHWM is this process's own peak; ru_maxrss would include the parent's RSS inherited at fork
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"seconds": dt, "peak_rss_above_baseline": peak - base}))
"""


def measure_load(kind: str, path: Path, threads: int, model_root: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, kind, str(path), str(model_root)], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


_DIFFUSERS_PROCESS = r"""
import sys, torch, diffusers
root, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pipe = diffusers.ZImagePipeline.from_pretrained(root, torch_dtype=torch.float32)
img = pipe(sys.argv[4], height=size, width=size, num_inference_steps=8, guidance_scale=0.0,
           generator=torch.Generator("cpu").manual_seed(0)).images[0]
img.save(out)
"""


def measure_process(paths: dict, size: int, threads: int, have_diffusers: bool, tmp: Path, repeats: int = 1) -> dict:
    """Wall time of a fresh process that imports, loads, generates one image and saves it (median of
    `repeats`, ours and diffusers in turns)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    ours_cmd = [sys.executable, "-m", "zimage_core", "generate", "--dit", str(paths["dit"]), "--text-encoder",
                str(paths["te"]), "--vae", str(paths["vae"]), "--tokenizer", str(paths["tokenizer"]), "--prompt",
                PROMPT, "--width", str(size), "--height", str(size), "--steps", "8", "--out", str(tmp / "ours.png")]
    cmds = {"ours": ours_cmd}
    if have_diffusers:
        cmds["diffusers"] = [sys.executable, "-c", _DIFFUSERS_PROCESS, str(paths["root"]), str(size),
                             str(tmp / "diffusers.png"), PROMPT]
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(max(1, repeats)):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                print(f"{name} process failed: {r.stderr[-500:]}", file=sys.stderr)
                continue
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) if v else None for name, v in times.items()}


def measure_controlnet(paths: dict, cfg: DiTConfig, x, t, cap, repeats: int, diffusers, tmp: Path) -> dict:
    """Seconds per forward with one control (1.0: a control layer every 5th DiT layer, plain refiner; 2.1: every
    2nd layer, control refiner) and their ratio to the plain forward; diffusers' pair when installed."""
    from safetensors.torch import save_file

    from ..adapters.controlnet import (
        Control,
        ControlNetConfig,
        ControlStep,
        load_controlnet,
    )
    from ..model.dit_loader import load_dit
    from ..tiny.controlnet import diffusers_config, random_controlnet_state

    dit = load_dit(paths["dit"], "fp32")
    ref = diffusers.ZImageTransformer2DModel.from_pretrained(str(paths["root"] / "transformer")).eval() \
        if diffusers else None
    ctl = torch.randn(1, 33, *x.shape[-2:], generator=torch.Generator().manual_seed(1))
    contenders = {"plain": lambda: dit(x, t, [cap])}
    if ref is not None:
        contenders["diffusers_plain"] = lambda: ref([x[0, :, None]], t, [cap], return_dict=False)
    for label, kind, every in (("1.0", "plain", 5), ("2.1", "refiner", 2)):
        ccfg = ControlNetConfig(dim=cfg.dim, n_heads=cfg.n_heads, ffn_dim=cfg.ffn_dim, control_in_dim=33 if
                                kind == "refiner" else 16, n_control_layers=max(1, cfg.n_layers // every),
                                variant=kind, n_refiner_layers=cfg.n_refiner_layers)
        state = random_controlnet_state(ccfg)
        save_file(state, str(tmp / f"controlnet_{label}.safetensors"))
        net = load_controlnet(tmp / f"controlnet_{label}.safetensors", "fp32")
        step = ControlStep([Control(net, ctl[:, :ccfg.control_in_dim])])
        contenders[label] = lambda step=step: dit(x, t, [cap], control=step)
        if ref is not None:
            dcfg = {k: v for k, v in diffusers_config(ccfg, cfg.n_layers).items() if not k.startswith("_")}
            dnet = diffusers.ZImageControlNetModel(**dcfg).eval()
            dnet.load_state_dict(state, strict=False)
            dnet = diffusers.ZImageControlNetModel.from_transformer(dnet, ref)
            c = ctl[:, :ccfg.control_in_dim, None]

            def pair(dnet=dnet, c=c):
                hints = dnet([x[0, :, None]], t, [cap], list(c))
                return ref([x[0, :, None]], t, [cap], controlnet_block_samples=hints, return_dict=False)
            contenders["diffusers_" + label] = pair
    with torch.no_grad():
        secs = _interleaved_medians(contenders, repeats)
    out = {"seconds": secs}
    for label in ("1.0", "2.1"):
        out[f"ours_{label}_over_plain"] = secs[label] / secs["plain"]
        if ref is not None:
            out[f"diffusers_{label}_over_plain"] = secs["diffusers_" + label] / secs["diffusers_plain"]
            out[f"ours_{label}_over_diffusers"] = secs[label] / secs["diffusers_" + label]
    return out


def measure_nag(paths: dict, x, t, cap, repeats: int) -> dict:
    """Seconds per forward: plain, with NAG (the negative encoded once, as in a sampling run), and the two-sample
    forward of CFG; the ratios NAG / plain and NAG / CFG."""
    from ..adapters.nag import NAGGuidance
    from ..model.dit_loader import load_dit

    dit = load_dit(paths["dit"], "fp32")
    neg = torch.randn(32, cap.shape[-1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pos_ctx, neg_ctx = dit.encode_context([cap]), dit.encode_context([neg])
        nag = NAGGuidance(neg_ctx, 5.0, 2.5, 0.25)
        secs = _interleaved_medians({
            "plain": lambda: dit(x, t, pos_ctx),
            "nag": lambda: dit(x, t, pos_ctx, nag=nag),
            "cfg": lambda: dit(torch.cat([x, x]), torch.cat([t, t]), pos_ctx + neg_ctx),
        }, repeats)
    return {"seconds": secs, "nag_over_plain": secs["nag"] / secs["plain"], "nag_over_cfg": secs["nag"] / secs["cfg"],
            "cfg_over_plain": secs["cfg"] / secs["plain"]}


def run(name: str, repeats: int, threads: int, workdir: Path | None, only: str | None = None) -> dict:
    torch.set_num_threads(threads)
    try:
        import diffusers
    except ImportError:
        diffusers = None
    cfg = CONFIGS[name]
    tmp = Path(workdir or tempfile.mkdtemp(prefix="zimage-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    paths = make_models(tmp, name)
    size = cfg["size"]
    result = {"config": name, "dit": cfg["dit"].__dict__, "size": size, "threads": threads, "repeats": repeats,
              "torch": torch.__version__, "diffusers": getattr(diffusers, "__version__", None)}
    weight_bytes = paths["dit"].stat().st_size
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    x = torch.randn(1, 16, lat, lat, generator=g)
    cap = torch.randn(77, cfg["dit"].cap_feat_dim, generator=g)
    t = torch.tensor([0.5])
    if only == "controlnet":
        result["controlnet"] = measure_controlnet(paths, cfg["dit"], x, t, cap, repeats, diffusers, tmp)
        return result
    if only == "nag":
        result["nag"] = measure_nag(paths, x, t, cap, repeats)
        return result

    # 1. load: fresh processes in turns, median of `repeats` (the first read of a file after other work may
    # come from disk; the turns give every contender the same page-cache conditions)
    kinds = {"ours": paths["dit"], "ours_read": paths["dit"]}
    if diffusers:
        kinds.update(diffusers_single_file=paths["dit"], diffusers_from_pretrained=paths["root"] / "transformer")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(max(1, repeats)):
        for kind, path in kinds.items():
            runs[kind].append(measure_load(kind, path, threads, paths["root"]))
    load = {}
    for kind, rs in runs.items():
        errors = [r for r in rs if "error" in r]
        load[kind] = errors[0] if errors else {
            key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_rss_above_baseline")}
    result["load"] = {**load, "weight_bytes": weight_bytes}

    # 2. one DiT forward, fp32
    from ..model.dit_loader import load_dit
    from ..pipeline import ZImagePipeline

    ours = load_dit(paths["dit"], "fp32")
    with torch.no_grad():
        contenders = {"ours": lambda: ours(x, t, [cap])}
        ref = None
        if diffusers:
            ref = diffusers.ZImageTransformer2DModel.from_pretrained(str(paths["root"] / "transformer")).eval()
            contenders["diffusers"] = lambda: ref([x[0, :, None]], t, [cap], return_dict=False)
        fwd = _interleaved_medians(contenders, repeats)
        base = ours(x, t, [cap])
    flops = dit_forward_flops(cfg["dit"], (lat // 2) ** 2, 77)
    from ..weights.ops import cpu_gemm

    fwd.update(gflop=flops / 1e9, ours_gflops=flops / fwd["ours"] / 1e9, matmul_peak_gflops=matmul_peak_gflops(),
               linear_peak_gflops=matmul_peak_gflops(ours=True), cpu_gemm=cpu_gemm())
    result["forward"] = fwd

    # 3. stored dtypes (compute fp32 on CPU)
    dtypes = {}
    for label, key in (("bf16", "dit_bf16"), ("fp8_e4m3fn", "dit_fp8")):
        m = load_dit(paths[key], "auto")
        with torch.no_grad():
            secs = _interleaved_medians({label: lambda m=m: m(x, t, [cap])}, repeats)[label]
            err = ((m(x, t, [cap]) - base).norm() / base.norm()).item()
        dtypes[label] = {"forward_s": secs, "rel_err_vs_fp32": err, "file_bytes": paths[key].stat().st_size}
        del m
    result["dtypes"] = dtypes
    ours = ref = None  # free the models before the next section
    result["controlnet"] = measure_controlnet(paths, cfg["dit"], x, t, cap, repeats, diffusers, tmp)
    result["nag"] = measure_nag(paths, x, t, cap, repeats)

    # 4. VAE decode
    from ..model.vae import load_vae

    vae = load_vae(paths["vae"])
    z = torch.randn(1, 16, lat, lat, generator=g)
    with torch.no_grad():
        contenders = {"ours": lambda: vae.decode(z)}
        if diffusers:
            dvae = diffusers.AutoencoderKL.from_pretrained(str(paths["vae"])).eval()
            contenders["diffusers"] = lambda: dvae.decode(z).sample
        dec = _interleaved_medians(contenders, repeats)
        if diffusers:
            a, b = vae.decode(z), dvae.decode(z).sample
            dec["max_rel_diff"] = ((a - b).abs().max() / b.abs().max()).item()
    result["decode"] = dec
    vae = dvae = None

    # 5. full generation in one process
    pipe = ZImagePipeline.from_files(paths["dit"], paths["te"], paths["vae"], paths["tokenizer"], "fp32")
    contenders = {"ours": lambda: pipe.generate(PROMPT, width=size, height=size, steps=8, seed=0)}
    if diffusers:
        dpipe = diffusers.ZImagePipeline.from_pretrained(str(paths["root"]), torch_dtype=torch.float32)
        contenders["diffusers"] = lambda: dpipe(PROMPT, height=size, width=size, num_inference_steps=8,
                                                guidance_scale=0.0, output_type="np")
    result["generate"] = _interleaved_medians(contenders, repeats)
    pipe = dpipe = contenders = None

    # 6. whole process
    result["process"] = measure_process(paths, size, threads, diffusers is not None, tmp, repeats)

    def ratio(d, a="ours", b="diffusers"):
        return d[a] / d[b] if d.get(a) and d.get(b) else None

    result["ratios"] = {
        "forward": ratio(fwd), "decode": ratio(dec), "generate": ratio(result["generate"]),
        "process": ratio(result["process"]),
        "load_vs_single_file": ratio({"a": load["ours"].get("seconds"), "b": load.get("diffusers_single_file", {}).get("seconds")}, "a", "b"),
        "load_vs_from_pretrained": ratio({"a": load["ours"].get("seconds"), "b": load.get("diffusers_from_pretrained", {}).get("seconds")}, "a", "b"),
        "load_peak_rss_over_weight_bytes": load["ours"].get("peak_rss_above_baseline", 0) / weight_bytes,
    }
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def print_nag(n: dict) -> None:
    s = n["seconds"]
    print(f"NAG: forward {s['nag']:.3f}s = {n['nag_over_plain']:.2f}x the plain {s['plain']:.3f}s; "
          f"CFG (2 samples) {s['cfg']:.3f}s = {n['cfg_over_plain']:.2f}x; NAG / CFG {n['nag_over_cfg']:.2f}")


def print_controlnet(c: dict) -> None:
    s = c["seconds"]
    for label in ("1.0", "2.1"):
        line = f"ControlNet {label}: forward {s[label]:.3f}s = {c[f'ours_{label}_over_plain']:.2f}x the plain {s['plain']:.3f}s"
        if f"ours_{label}_over_diffusers" in c:
            line += (f"; diffusers {s['diffusers_' + label]:.3f}s = {c[f'diffusers_{label}_over_plain']:.2f}x its plain; "
                     f"ours / diffusers {c[f'ours_{label}_over_diffusers']:.2f}")
        print(line)


def print_table(r: dict) -> None:
    def f(v, unit="s"):
        return "-" if v is None else f"{v:.3f}{unit}"

    print(f"\nZ-Image benchmark, config '{r['config']}' ({r['size']}x{r['size']}, {r['threads']} threads, "
          f"median of {r['repeats']}), torch {r['torch']}, diffusers {r['diffusers']}")
    print(f"{'measure':34s} {'ours':>10s} {'diffusers':>10s} {'ours/diff':>10s}")
    L = r["load"]
    for label, ref in (("load DiT (vs from_single_file)", "diffusers_single_file"),
                       ("load DiT (vs from_pretrained)", "diffusers_from_pretrained")):
        o, d = L["ours"].get("seconds"), L.get(ref, {}).get("seconds")
        print(f"{label:34s} {f(o):>10s} {f(d):>10s} {f(o / d if o and d else None, ''):>10s}")
    if "ours_read" in L:
        m = L["ours_read"]
        print(f"{'load DiT, mmap=False (read)':34s} {f(m.get('seconds')):>10s}   peak RSS "
              f"{f(m.get('peak_rss_above_baseline', 0) / L['weight_bytes'], 'x')} of the weight bytes")
    o, d = L["ours"].get("peak_rss_above_baseline"), L.get("diffusers_single_file", {}).get("peak_rss_above_baseline")
    print(f"{'load peak RSS / weight bytes':34s} {f(o / L['weight_bytes'], 'x'):>10s} "
          f"{f(d / L['weight_bytes'] if d else None, 'x'):>10s}")
    for label, key in (("DiT forward (fp32)", "forward"), ("VAE decode", "decode"), ("generate 8 steps", "generate"),
                       ("whole process", "process")):
        o, d = r[key].get("ours"), r[key].get("diffusers")
        print(f"{label:34s} {f(o):>10s} {f(d):>10s} {f(o / d if o and d else None, ''):>10s}")
    fw = r["forward"]
    print(f"DiT forward: {fw['gflop']:.1f} GFLOP, {fw['ours_gflops']:.1f} GFLOP/s achieved; fp32 peak of the BLAS "
          f"(a @ b) {fw['matmul_peak_gflops']:.1f} GFLOP/s, of our products ({fw.get('cpu_gemm')}) "
          f"{fw['linear_peak_gflops']:.1f} GFLOP/s ({fw['ours_gflops'] / fw['linear_peak_gflops']:.0%} of it)")
    if r["decode"].get("max_rel_diff") is not None:
        print(f"VAE decode: largest difference to diffusers {r['decode']['max_rel_diff']:.1e} of the output range")
    for k, v in r["dtypes"].items():
        print(f"{k} storage: forward {v['forward_s']:.3f}s, rel. error vs fp32 {v['rel_err_vs_fp32']:.2e}, "
              f"file {v['file_bytes'] / 2**20:.0f} MiB")
    print_controlnet(r["controlnet"])
    print_nag(r["nag"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zimage_core.tools.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(CONFIGS), default="scaled")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workdir", help="keep the generated weights here (reused across runs)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("--only", choices=["controlnet", "nag"], help="run one section only")
    args = p.parse_args(argv)
    r = run(args.config, args.repeats, args.threads, Path(args.workdir) if args.workdir else None, args.only)
    if args.only == "controlnet":
        print_controlnet(r["controlnet"])
    elif args.only == "nag":
        print_nag(r["nag"])
    else:
        print_table(r)
    Path(args.out).write_text(json.dumps(r, indent=1))
    print(f"\nJSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
