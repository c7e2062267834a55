"""One-command GPU check: full-size random weights, every memory preset, ours vs diffusers, parity.

    python -m zimage_core.tools.gpu_check --out $OUT [--workdir DIR] [--budget-s 480]
    python -m zimage_core.tools.gpu_check --tiny --out DIR      # the same code path on the CPU, in seconds
    python -m zimage_core.tools.gpu_check --dry-run             # the plan: rows, sizes, disk and VRAM estimates
    python -m zimage_core.tools.gpu_check --only comfy --out $OUT   # only the ComfyUI rows (see below)

Writes random weights in the real formats (bf16 DiT 6.15B as a ComfyUI single file + its fp8 copy,
Qwen3-4B-shaped text encoder as a Hugging Face folder, Flux VAE), drawn on the GPU. Then runs the rows in
order of importance, each under a time guard, writing `gpu_check.json` and `gpu_check.txt` after every row
so a timeout still leaves results. Rows that cannot run here (no diffusers, no GGUF loader, no ComfyUI)
say why instead of a number. The text encoder uses the small test tokenizer's vocabulary (704 tokens, not
151936): 0.4B fewer embedding parameters than the real Qwen3-4B, the same per-token compute.

The `comfy` rows are the full-size table of `python -m zimage_core bench` (zimage_core/tools/bench_full.py) on the
GPU: native ComfyUI (UNETLoader + CLIPLoader lumina2 + KSampler, with --bf16-unet and by default) and our
nodes with each memory preset of ZImageDiTLoader, each graph in a fresh ComfyUI process at the check's size
and steps, with its files in the released layouts (real vocabulary; written once in --workdir, 19.3 GiB):
peak VRAM of the process (nvidia-smi), s/step, and ratios and the pixel difference to native bf16 of the
same run. They need ComfyUI (COMFYUI_PATH); without it they say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..weights.offload import MEMORY_PRESETS, GiB, blocks_to_keep, module_bytes
from .bench import CONFIGS, PROMPT

TINY = dict(CONFIGS["smoke"], size=64, steps=2, repeats=1, budget_s=120)
FULL = dict(CONFIGS["full"], steps=8, repeats=2, budget_s=480)
TOKENIZER_VOCAB = 704  # write_tiny_text_encoder's vocabulary rounded up to 64


@dataclass
class Row:
    name: str
    kind: str  # ours | diffusers | parity | gguf
    preset: str = "high"
    dit: str = "dit_bf16"  # which weight file
    compile: bool = False
    limit_s: float = 60  # time guard (full size); the tiny run scales it down
    min_s: float = 15  # skipped when less budget than this is left
    contender: str = ""  # comfy rows: a zimage_core.tools.bench_full contender (native-bf16, ours@8GB, ...)


def plan(have_diffusers: bool) -> list[Row]:
    """The rows, most important first."""
    rows = [Row("ours bf16 high", "ours")]
    rows.append(Row("diffusers bf16", "diffusers", limit_s=90))
    rows.append(Row("parity fp32 ours vs diffusers", "parity", limit_s=120, min_s=40))
    rows += [Row(f"ours bf16 {p}", "ours", preset=p) for p in ("12GB", "8GB", "6GB")]
    rows.append(Row("ours fp8 high", "ours", dit="dit_fp8", limit_s=45))
    rows.append(Row("ours bf16 auto", "ours", preset="auto", limit_s=45))
    rows.append(Row("ours bf16 high compile", "ours", compile=True, limit_s=150, min_s=60))
    rows += [Row(f"ours gguf {q}", "gguf", dit=q) for q in ("Q8_0", "Q4_K")]
    # ComfyUI at full size: native bf16 first (the reference of the others), then ours per preset; the first row
    # also writes the files (19.3 GiB, a few minutes on the CPU)
    rows.append(Row("comfy native bf16", "comfy", contender="native-bf16", limit_s=420, min_s=120))
    rows += [Row(f"comfy ours {p}", "comfy", preset=p, contender=f"ours@{p}", limit_s=180, min_s=60)
             for p in ("high", "12GB", "8GB", "6GB")]
    rows.append(Row("comfy native default", "comfy", contender="native-default", limit_s=180, min_s=60))
    return rows


COMFY_REFERENCE = "native-bf16"


# -- weights ------------------------------------------------------------------------------------------
def build_weights(root: Path, cfg: dict, device: torch.device) -> dict[str, Path]:
    """bf16 DiT (ComfyUI single file) + fp8 copy, diffusers model folder (transformer config only: diffusers
    reads the DiT with from_single_file), bf16 text encoder folder + tokenizer, VAE. Reused when present."""
    from safetensors.torch import save_file

    from ..model.dit_loader import load_dit
    from ..model.vae import VAEConfig
    from ..tiny import write_diffusers_index
    from ..tiny.dit import diffusers_config, random_dit_state
    from ..tiny.text_encoder import write_tiny_text_encoder
    from ..tiny.vae import write_tiny_vae

    model = root / "model"
    paths = {"root": model, "dit_bf16": root / "dit_bf16.safetensors", "dit_fp8": root / "dit_fp8.safetensors",
             "te": model / "text_encoder", "tokenizer": model / "tokenizer", "vae": model / "vae"}
    if paths["dit_fp8"].exists():
        return paths
    root.mkdir(parents=True, exist_ok=True)
    state = random_dit_state(cfg["dit"], seed=0, device=device, dtype=torch.bfloat16)
    save_file({k: v.cpu() for k, v in state.items()}, str(paths["dit_bf16"]))
    del state
    (model / "transformer").mkdir(parents=True, exist_ok=True)
    (model / "transformer" / "config.json").write_text(json.dumps(diffusers_config(cfg["dit"]), indent=1))
    write_tiny_text_encoder(model, device=device, dtype=torch.bfloat16, single_file=False, **cfg["te"])
    ch, blocks = cfg["vae"]
    write_tiny_vae(model, cfg=VAEConfig(channels=ch, num_res_blocks=blocks))
    write_diffusers_index(model)
    fp8 = load_dit(paths["dit_bf16"], "fp8_e4m3fn", device).state_dict()
    save_file({k: v.contiguous().cpu() for k, v in fp8.items()}, str(paths["dit_fp8"]) + ".part")
    Path(str(paths["dit_fp8"]) + ".part").rename(paths["dit_fp8"])  # its presence marks a complete set
    return paths


def sizes(cfg: dict) -> dict[str, int]:
    """Parameter counts from the configs (meta tensors: nothing allocated)."""
    from ..model.transformer import ZImageDiT
    from ..model.vae import FluxVAE, VAEConfig

    with torch.device("meta"):
        dit = ZImageDiT(cfg["dit"])
        ch, blocks = cfg["vae"]
        vae = FluxVAE(VAEConfig(channels=ch, num_res_blocks=blocks))
    t = cfg["te"]
    h, hd = t["hidden"], t["head_dim"]
    layer = h * hd * (2 * t["heads"] + 2 * t["kv_heads"]) + 3 * h * t["intermediate"] + 2 * h + 2 * hd
    return {"dit": sum(p.numel() for p in dit.parameters()), "te": TOKENIZER_VOCAB * h + t["layers"] * layer + h,
            "vae": sum(p.numel() for p in vae.parameters()), "dit_model": dit}


# -- measuring ----------------------------------------------------------------------------------------
class RowTimeout(BaseException):
    """The row's time guard (SIGALRM); not an Exception, so no handler of the row's own code takes it for
    an error of its own (the row's cleanup still runs)."""


def _alarm(signum, frame):
    raise RowTimeout()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(gen, device, repeats: int) -> tuple[dict, torch.Tensor]:
    """Warm-up once, then the median of `repeats` runs and the peak memory of the timed runs."""
    t0 = time.perf_counter()
    gen()
    _sync(device)
    out = {"warmup_s": time.perf_counter() - t0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        image = gen()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out["generate_s"] = statistics.median(times)
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GiB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GiB
    return out, image


def _eight_bit(image) -> torch.Tensor:
    return (torch.as_tensor(image).float() * 255).round()


class Check:
    def __init__(self, cfg: dict, device: torch.device, paths: dict, out: Path, tiny: bool, work: Path | None = None):
        self.cfg, self.device, self.paths, self.out, self.tiny = cfg, device, paths, out, tiny
        self.work = Path(work or out)
        self.images: dict[str, torch.Tensor] = {}
        self.comfy: dict[str, dict] = {}  # bench_full results of the comfy rows that ran, by contender

    def run_row(self, row: Row) -> dict:
        return getattr(self, "_" + row.kind)(row)

    def _gen_ours(self, pipe):
        size, steps = self.cfg["size"], self.cfg["steps"]
        return lambda: pipe.generate(PROMPT, width=size, height=size, steps=steps, seed=0)

    def _ours(self, row: Row) -> dict:
        from ..adapters.compile import TorchCompile
        from ..pipeline import ZImagePipeline

        p = self.paths
        t0 = time.perf_counter()
        pipe = ZImagePipeline.from_files(p[row.dit], p["te"], p["vae"], p["tokenizer"], "auto", self.device,
                                         memory=row.preset)
        _sync(self.device)
        res = {"load_s": time.perf_counter() - t0}
        streamer = getattr(pipe.dit, "block_streamer", None)
        n_blocks = len(pipe.dit.layers) + len(pipe.dit.noise_refiner) + len(pipe.dit.context_refiner)
        res["blocks_on_gpu"] = len(streamer.kept) if streamer else n_blocks
        patch = TorchCompile(backend="eager" if self.tiny else "inductor") if row.compile else None
        try:
            if patch:
                patch.install(pipe.dit)
            m, image = _timed(self._gen_ours(pipe), self.device, self.cfg["repeats"])
        finally:
            if patch:
                patch.uninstall(pipe.dit)
            if streamer:
                streamer.remove()
        self.images[row.name] = image
        return {**res, **m}

    def _diffusers_pipe(self, dtype):
        import diffusers

        root = self.paths["root"]
        dit = diffusers.ZImageTransformer2DModel.from_single_file(
            str(self.paths["dit_bf16"]), config=str(root), subfolder="transformer", torch_dtype=dtype)
        return diffusers.ZImagePipeline.from_pretrained(str(root), transformer=dit, torch_dtype=dtype).to(self.device)

    def _gen_diffusers(self, pipe):
        size, steps = self.cfg["size"], self.cfg["steps"]
        return lambda: torch.from_numpy(pipe(
            PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(0), output_type="np").images)

    def _diffusers(self, row: Row) -> dict:
        t0 = time.perf_counter()
        pipe = self._diffusers_pipe(torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        _sync(self.device)
        res = {"load_s": time.perf_counter() - t0}
        m, image = _timed(self._gen_diffusers(pipe), self.device, self.cfg["repeats"])
        self.images[row.name] = image
        ours = self.images.get("ours bf16 high")
        if ours is not None:  # informational: bf16 kernels differ in rounding, only the fp32 row is a test
            res["max_8bit_diff_vs_ours_bf16"] = (_eight_bit(ours) - _eight_bit(image)).abs().max().item()
        return {**res, **m}

    def _parity(self, row: Row) -> dict:
        """fp32 everywhere (TF32 off), same bf16-valued weights and seed: pictures must agree to 1/255."""
        from ..model.dit_loader import load_dit
        from ..model.text_encoder import load_text_encoder
        from ..model.vae import load_vae
        from ..pipeline import ZImagePipeline

        p, dev = self.paths, self.device
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            ours = ZImagePipeline(load_dit(p["dit_bf16"], "fp32", dev),
                                  load_text_encoder(p["te"], torch.float32, dev, p["tokenizer"]),
                                  load_vae(p["vae"], device=dev))
            a = self._gen_ours(ours)()
            del ours
            self._free()
            b = self._gen_diffusers(self._diffusers_pipe(torch.float32))()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        diff = (_eight_bit(a) - _eight_bit(b)).abs().max().item()
        return {"max_8bit_diff": diff, "image_std_8bit": _eight_bit(b).std().item(),
                "parity": "pass" if diff <= 1 else "fail"}

    def _gguf(self, row: Row) -> dict:
        """Capability probe: our loader's answer to a .gguf file."""
        from ..errors import ZImageError
        from ..model.dit_loader import load_dit

        probe = self.out / "probe.gguf"
        probe.write_bytes(b"")
        try:
            load_dit(probe)
        except ZImageError as e:
            if "not supported" in str(e):
                return {"status": f"not available: {e}"}
        finally:
            probe.unlink()
        return {"status": f"not run: the loader reads GGUF, but this check does not write {row.dit} weights yet"}

    def _comfy(self, row: Row) -> dict:
        """One graph in a fresh ComfyUI process (zimage_core.tools.bench_full), on this check's device."""
        import os

        from . import bench_full, fullsize_files

        comfyui = Path(os.environ.get("COMFYUI_PATH") or "/nonexistent")
        if not (comfyui / "main.py").is_file():
            return {"status": "not available: no ComfyUI (set COMFYUI_PATH to a ComfyUI folder)"}
        (c,) = bench_full.parse_contenders(row.contender)
        if self.tiny and c.kind == "native":
            return {"status": "not run: native ComfyUI builds Z-Image only at the released sizes (the GPU run)"}
        if self.tiny and self.comfy:
            return {"status": "skipped: the tiny run proves the path with one ComfyUI row"}
        sizes = "tiny" if self.tiny else "full"
        files = fullsize_files.ensure_files(c.files, self.work / "comfy" / sizes, fullsize_files.SIZES[sizes],
                                            log=lambda s: print(s, flush=True))
        (self.out / "comfy").mkdir(parents=True, exist_ok=True)
        r = bench_full.run_contender(c, files, comfyui, self.cfg["size"], self.cfg["steps"], self.out / "comfy",
                                     device=self.device.type)
        if "error" in r:
            return {"status": f"error: {r['error'][:300]}", "log": r.get("log")}
        self.comfy[c.name] = r
        return comfy_entry(r, self.comfy.get(COMFY_REFERENCE))

    def _free(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def comfy_entry(r: dict, ref: dict | None) -> dict:
    """A comfy row's figures from a bench_full result, with ratios and the pixel difference to `ref` (the
    native bf16 row of the same run, when it ran)."""
    from .bench_full import max_pixel_difference

    e = {"graph_s": r["graph_s"], "step_s": r.get("later_step_s") or r.get("first_step_s"),
         "first_step_s": r.get("first_step_s"), "peak_vram_gib": r.get("peak_vram_gb"),
         "peak_rss_gib": r["peak_rss_gb"], "peak_anon_gib": r["peak_anon_gb"], "image": r.get("image")}
    if ref is not None and ref is not r:
        if e["step_s"] and (ref.get("later_step_s") or ref.get("first_step_s")):
            e["step_vs_native"] = e["step_s"] / (ref.get("later_step_s") or ref["first_step_s"])
        if e["peak_vram_gib"] and ref.get("peak_vram_gb"):
            e["vram_vs_native"] = e["peak_vram_gib"] / ref["peak_vram_gb"]
        if e["image"] and ref.get("image"):
            e["max_pixel_diff_vs_native"] = max_pixel_difference(e["image"], ref["image"])
    return e


def comfy_table(result: dict) -> list[str]:
    rows = [r for r in result["rows"] if r["kind"] == "comfy"]
    if not rows:
        return []

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)
    lines = [f"ComfyUI, released sizes, {result['size']}x{result['size']}, {result['steps']} steps, one fresh process "
             "per graph (ratios and pixels vs native bf16 of this run):",
             f"{'row':24s} {'status':8s} {'graph s':>8s} {'s/step':>7s} {'VRAM GiB':>8s} {'RSS GiB':>8s} "
             f"{'step/nat':>8s} {'VRAM/nat':>8s} {'pixels':>7s}"]
    for r in rows:
        px = r.get("max_pixel_diff_vs_native")
        lines.append(f"{r['name']:24s} {r.get('status', 'ok').split(':')[0]:8s} {f(r.get('graph_s'), '{:.1f}'):>8s} "
                     f"{f(r.get('step_s')):>7s} {f(r.get('peak_vram_gib')):>8s} {f(r.get('peak_rss_gib')):>8s} "
                     f"{f(r.get('step_vs_native')):>8s} {f(r.get('vram_vs_native')):>8s} "
                     f"{'-' if px is None else f'{px}/255':>7s}")
    return lines


# -- report -------------------------------------------------------------------------------------------
def table(result: dict) -> str:
    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"Z-Image GPU check: {result['size']}x{result['size']}, {result['steps']} steps, {result['device']}, "
             f"torch {result['torch']}, diffusers {result['diffusers']}",
             f"{'row':32s} {'status':8s} {'load s':>7s} {'warm s':>7s} {'gen s':>7s} {'alloc GiB':>9s} "
             f"{'resv GiB':>9s} {'blocks':>6s}  note"]
    for r in result["rows"]:
        if r["kind"] == "comfy":
            continue  # their own table below
        status = r.get("status", "ok")
        note = "" if status == "ok" else status
        if "parity" in r:
            note = f"parity {r['parity']}: max 8-bit diff {r['max_8bit_diff']:.0f} (<= 1 needed)"
        elif "max_8bit_diff_vs_ours_bf16" in r:
            note = f"bf16 max 8-bit diff vs ours {r['max_8bit_diff_vs_ours_bf16']:.0f} (informational)"
        lines.append(f"{r['name']:32s} {status.split(':')[0]:8s} {f(r.get('load_s')):>7s} {f(r.get('warmup_s')):>7s} "
                     f"{f(r.get('generate_s')):>7s} {f(r.get('peak_allocated_gib')):>9s} "
                     f"{f(r.get('peak_reserved_gib')):>9s} {f(r.get('blocks_on_gpu'), '{}'):>6s}  {note}")
    by = {r["name"]: r for r in result["rows"]}
    o, d = by.get("ours bf16 high", {}).get("generate_s"), by.get("diffusers bf16", {}).get("generate_s")
    if o and d:
        lines.append(f"ours / diffusers generation time (bf16, all on the GPU): {o / d:.2f}")
    return "\n".join(lines + comfy_table(result))


def write(result: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.txt").write_text(table(result) + "\n")


def dry_run(cfg: dict, rows: list[Row], total: int) -> str:
    s = sizes(cfg)
    dit = s.pop("dit_model").to(torch.bfloat16)
    lines = [f"size {cfg['size']}x{cfg['size']}, {cfg['steps']} steps; parameters: DiT {s['dit'] / 1e9:.2f}B, "
             f"text encoder {s['te'] / 1e9:.2f}B, VAE {s['vae'] / 1e6:.0f}M",
             f"disk: DiT bf16 {2 * s['dit'] / GiB:.1f} GiB + fp8 {s['dit'] / GiB:.1f} GiB, text encoder bf16 "
             f"{2 * s['te'] / GiB:.1f} GiB, VAE fp32 x2 {8 * s['vae'] / GiB:.2f} GiB; total "
             f"{(3 * s['dit'] + 2 * s['te'] + 8 * s['vae']) / GiB:.1f} GiB",
             f"rows (GPU memory {total / GiB:.0f} GiB assumed for the presets):"]
    full = (2 * s["dit"] + 2 * s["te"] + 4 * s["vae"]) / GiB
    for r in rows:
        if r.kind == "ours":
            keep = blocks_to_keep(dit, r.preset, total)
            vram = (full - s["dit"] / GiB if r.dit == "dit_fp8" else full) if keep is None else MEMORY_PRESETS[r.preset]
            what = f"all blocks on the GPU, ~{vram:.0f} GiB + activations" if keep is None else \
                f"{keep} blocks kept, the rest streamed (budget {vram} GiB)"
        elif r.kind == "diffusers":
            what = f"~{full:.0f} GiB + activations"
        elif r.kind == "parity":
            what = f"fp32 (TF32 off), ~{2 * full:.0f} GiB, one pipeline at a time"
        elif r.kind == "comfy":
            what = f"ComfyUI process, {r.contender}, released file layouts"
        else:
            what = "capability probe"
        lines.append(f"  {r.name:32s} guard {r.limit_s:4.0f} s  {what}")
    lines.append(f"DiT bf16 module bytes {module_bytes(dit) / GiB:.1f} GiB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zimage_core.tools.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.txt")
    ap.add_argument("--workdir", help="where the random weights are written (reused across runs); default: the temp folder")
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU (the same code path, seconds)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and estimates; build nothing")
    ap.add_argument("--budget-s", type=float, help="total time budget (default 480 full, 120 tiny)")
    ap.add_argument("--only", help="run only rows of these kinds, comma-separated (ours, diffusers, parity, gguf, "
                                   "comfy); the others are listed as skipped")
    args = ap.parse_args(argv)
    kinds = {r.kind for r in plan(True)}
    only = set(args.only.split(",")) if args.only else kinds
    if only - kinds:
        ap.error(f"--only: unknown row kind(s) {', '.join(sorted(only - kinds))}; expected {', '.join(sorted(kinds))}")
    cfg = TINY if args.tiny else FULL
    try:
        import diffusers
    except ImportError:
        diffusers = None
    rows = plan(diffusers is not None)
    cuda = torch.cuda.is_available() and not args.tiny
    if args.dry_run:
        total = torch.cuda.get_device_properties(0).total_memory if cuda else 80 * GiB
        print(dry_run(cfg, rows, total))
        return 0
    if not cuda and not args.tiny:
        print("no CUDA device: use --tiny for the CPU run or --dry-run for the plan", file=sys.stderr)
        return 2
    start = time.perf_counter()
    budget = args.budget_s or cfg["budget_s"]
    device = torch.device("cuda" if cuda else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or Path(tempfile.gettempdir()) / ("zimage-gpu-check-" + ("tiny" if args.tiny else "full")))
    result = {"size": cfg["size"], "steps": cfg["steps"], "torch": torch.__version__,
              "diffusers": getattr(diffusers, "__version__", None),
              "device": torch.cuda.get_device_name(device) if cuda else "cpu", "rows": []}
    t0 = time.perf_counter()
    # the comfy rows write their own files (bench_full); the in-process rows need these
    paths = build_weights(work, cfg, device) if only & {"ours", "diffusers", "parity"} else {}
    result["build_weights_s"] = time.perf_counter() - t0
    write(result, out)
    check = Check(cfg, device, paths, out, args.tiny, work)
    scale = 1 if cuda else 0.25  # the tiny rows take seconds; the guards stay generous
    old = signal.signal(signal.SIGALRM, _alarm)
    for row in rows:
        left = budget - (time.perf_counter() - start)
        entry = {"name": row.name, **asdict(row)}
        if row.kind not in only:
            entry["status"] = f"skipped: --only {args.only}"
        elif row.kind in ("diffusers", "parity") and diffusers is None:
            entry["status"] = "not available: diffusers is not installed"
        elif left < row.min_s * scale and row.kind in ("ours", "diffusers", "parity", "comfy"):
            entry["status"] = f"skipped: {left:.0f} s of the budget left"
        else:
            # a ComfyUI process starts in ~15 s whatever the model size: the tiny run keeps those guards
            guard = max(1.0, min(row.limit_s * (1 if row.kind == "comfy" else scale), left))
            signal.setitimer(signal.ITIMER_REAL, guard)
            try:
                entry.update(check.run_row(row))
            except RowTimeout:
                entry["status"] = f"timed out after {guard:.0f} s"
            except Exception as e:  # a failed row is a result; the next rows still run
                entry["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                check._free()
        entry.setdefault("status", "ok")
        result["rows"].append(entry)
        write(result, out)
        print(f"{row.name}: {entry['status']}", flush=True)
    signal.signal(signal.SIGALRM, old)
    result["total_s"] = time.perf_counter() - start
    write(result, out)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
