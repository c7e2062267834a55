"""Command line: `python -m zimage_core generate ...`, `python -m zimage_core make-tiny --out DIR` and
`python -m zimage_core bench --full-size` (zimage_core.tools.bench_full)."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path

from ..adapters.controlnet import TOKENS
from ..errors import ZImageError
from ..weights.offload import MEMORY_PRESETS

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """For a CPU run: make glibc serve every allocation from its heap and keep freed memory there.

    By default glibc maps each large block (a 17 MB activation, a 134 MB VAE feature map) freshly from the
    kernel and unmaps it when freed, so every step faults all of its activation pages in again: about
    2.5 million page faults and 7 s of system time for one scaled-config 512x512 generation on 2 cores.
    Reusing the heap cuts that to ~0.5 million faults and ~3.5 s, ~7% of the wall time, for ~10% more peak
    RSS. Only this command-line process is tuned (never a host such as ComfyUI), and only where the CPU
    computes: a GPU run's big host buffers should go back to the system. ZIMAGE_KEEP_FREED_MEMORY=0 turns
    it off. Returns whether it applied.
    """
    if os.environ.get("ZIMAGE_KEEP_FREED_MEMORY") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))  # int: at most 2 GiB
    except (OSError, AttributeError):
        return False


def _tiny_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zimage-nodes" / "tiny"


class ProgressBar:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.start = total, stream, time.perf_counter()

    def __call__(self, step: int, total: int, x, x0) -> None:
        done = step + 1
        bar = "#" * (30 * done // total)
        rate = (time.perf_counter() - self.start) / done
        self.stream.write(f"\rsampling [{bar:<30}] {done}/{total} {rate:.2f}s/step")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _load_image(path: str, mode: str):
    import numpy as np
    import torch
    from PIL import Image

    try:
        img = Image.open(path).convert(mode)
    except (OSError, ValueError) as e:
        raise ZImageError(f"{path}: cannot read image ({e}).") from None
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return a[None] if mode == "L" else a[None, ..., :3]


def _save_png(image, path: Path, params: dict) -> None:
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", json.dumps(params))
    arr = (image.numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, pnginfo=info)


def cmd_make_tiny(args) -> int:
    from ..tiny import make_tiny

    paths = make_tiny(Path(args.out), seed=args.seed)
    for k, p in paths.items():
        print(f"{k:13s} {p}")
    if args.quant:
        from ..tiny.quantized import (
            QUANT_TYPES,
            write_gguf_text_encoder,
            write_tiny_gguf_dits,
        )

        qtypes = [q.strip().upper() for q in args.quant.split(",") if q.strip()]
        bad = [q for q in qtypes if q not in QUANT_TYPES]
        if bad:
            raise ZImageError(f"--quant {', '.join(bad)}: not a GGUF type this pack writes ({', '.join(QUANT_TYPES)}).")
        for q, p in write_tiny_gguf_dits(paths["dit"].parent, qtypes, seed=args.seed).items():
            print(f"{'dit ' + q:13s} {p}")
        for q in qtypes:
            te = paths["text_encoder"]
            p = write_gguf_text_encoder(te.with_name(f"{te.stem}-{q}.gguf"), te, paths["tokenizer"], q, args.seed)
            print(f"{'te ' + q:13s} {p}")
    return 0


def parse_lora_arg(text: str) -> tuple[str, float]:
    """'FILE[:STRENGTH]' -> (file, strength); a drive letter's colon (C:\\x) is part of the file."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def cmd_generate(args) -> int:
    import torch

    from ..pipeline import ZImagePipeline, check_size
    from ..sampling.schedules import parse_sigmas

    check_size(args.width, args.height)
    if args.tiny:
        from ..tiny import make_tiny

        paths = make_tiny(Path(args.tiny_dir))
        args.dit = args.dit or paths["dit"]
        args.text_encoder = args.text_encoder or paths["text_encoder"]
        args.vae = args.vae or paths["vae"]
        args.tokenizer = args.tokenizer or paths["tokenizer"]
    missing = [n for n in ("dit", "text_encoder", "vae") if not getattr(args, n)]
    if missing:
        raise ZImageError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing) + " (or use --tiny).")
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cpu":
        keep_freed_memory()
    t0 = time.perf_counter()
    pipe = ZImagePipeline.from_files(args.dit, args.text_encoder, args.vae, args.tokenizer, args.weight_dtype, args.device,
                                     args.memory)
    patches = []
    for spec in args.lora or []:
        from ..adapters.lora import load_lora

        path, strength = parse_lora_arg(spec)
        patch = load_lora(path, pipe.dit, strength)  # warns (stderr) about unused keys, like the node
        print(f"LoRA {patch.report.summary()} at strength {strength:g}", file=sys.stderr)
        patches.append(patch)
    t_load = time.perf_counter() - t0
    params = {k: v for k, v in vars(args).items() if k not in ("func", "tiny_dir", "threads")}
    params = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
    image = _load_image(args.image, "RGB") if args.image else None
    mask = _load_image(args.mask, "L") if args.mask else None
    controls = _controls(args, image, mask)
    if args.control_inpaint:  # the image and mask go to the ControlNet, not to latent inpainting
        image = mask = None
    from ..adapters.patching import PatchedDiT

    with PatchedDiT(pipe.dit, tuple(patches)).applied():
        images = pipe.generate(
            args.prompt, args.negative_prompt, args.width, args.height, args.steps, args.cfg, args.shift, args.seed,
            args.batch, parse_sigmas(args.sigmas) if args.sigmas else None, image, args.denoise, mask,
            args.cfg_truncation, args.cfg_normalization, ProgressBar(args.steps), sampler=args.sampler,
            scheduler=args.scheduler, controls=controls,
        )
    out = Path(args.out)
    for i, img in enumerate(images):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        _save_png(img, path, {**params, "seed": args.seed, "batch_index": i})
        print(f"saved {path}")
    print(f"load {t_load:.2f}s, total {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0


def _controls(args, image, mask) -> list:
    """--control IMAGE --control-model FILE pairs (repeatable), each with its scale / start / end."""
    if not args.control and not args.control_model:
        if args.control_inpaint:
            raise ZImageError("--control-inpaint needs a ControlNet (--control IMAGE --control-model FILE).")
        return []
    from ..adapters.controlnet import ControlImage, load_controlnet

    n = len(args.control or [])
    if n != len(args.control_model or []):
        raise ZImageError(f"{n} --control image(s) but {len(args.control_model or [])} --control-model file(s); "
                          "give one model per control image.")
    if args.control_inpaint and (image is None or mask is None):
        raise ZImageError("--control-inpaint needs --image (the picture to inpaint) and --mask (white = repaint).")

    def nth(values, i, default):
        values = values or []
        if len(values) not in (0, 1, n):
            raise ZImageError(f"give one value for all controls or one per control ({n}); got {len(values)}.")
        return values[i] if len(values) == n else (values[0] if values else default)

    out = []
    for i, (img, model) in enumerate(zip(args.control, args.control_model)):
        inpaint = args.control_inpaint and i == 0
        out.append(ControlImage(
            load_controlnet(model, args.weight_dtype, args.device), _load_image(img, "RGB"),
            nth(args.control_scale, i, 0.75), nth(args.control_start, i, 0.0), nth(args.control_end, i, 1.0),
            inpaint_image=image if inpaint else None, inpaint_mask=mask if inpaint else None,
            tokens=nth(args.control_tokens, i, "unified")))
    return out


def build_parser() -> argparse.ArgumentParser:
    from ..sampling.samplers import SAMPLERS
    from ..sampling.schedules import DEFAULT_SCHEDULER, SCHEDULERS

    p = argparse.ArgumentParser(prog="python -m zimage_core", description="Z-Image / Z-Image-Turbo on PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="prompt to PNG")
    g.add_argument("--dit", help="DiT: ComfyUI single file or diffusers folder/file")
    g.add_argument("--text-encoder", help="Qwen3-4B: qwen_3_4b.safetensors or a text_encoder/ folder")
    g.add_argument("--vae", help="Flux VAE: ae.safetensors or a diffusers vae/ folder")
    g.add_argument("--tokenizer", help="tokenizer folder (default: tokenizer/ beside a diffusers model)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None, help="used when --cfg is not 1")
    g.add_argument("--width", type=int, default=1024)
    g.add_argument("--height", type=int, default=1024)
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--cfg", type=float, default=1.0, help="guidance weight; 1 = no CFG (Turbo), 3-5 for the base model")
    g.add_argument("--shift", type=float, default=3.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--sampler", default="euler", choices=list(SAMPLERS),
                   help="sampling method (default euler, the reference Turbo sampler); same seed = same noise as ComfyUI")
    g.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=list(SCHEDULERS),
                   help="noise schedule: zimage (the reference Turbo schedule, default) or one of ComfyUI's")
    g.add_argument("--sigmas", help="custom schedule, e.g. '1,0.9,0.75,0.5,0.3' (overrides --steps/--shift)")
    g.add_argument("--image", help="input image for image-to-image / inpainting")
    g.add_argument("--denoise", type=float, default=1.0, help="image-to-image strength (< 1 keeps more of --image)")
    g.add_argument("--mask", help="inpainting mask image, white = regenerate")
    g.add_argument("--control", action="append", metavar="IMAGE",
                   help="control image (canny, depth, pose, ... already preprocessed); repeatable, one per "
                        "--control-model")
    g.add_argument("--control-model", action="append", metavar="FILE",
                   help="Z-Image ControlNet Union file or diffusers folder (1.0, 2.0, 2.1, lite, tile)")
    g.add_argument("--control-scale", action="append", type=float, help="conditioning scale (default 0.75)")
    g.add_argument("--control-start", action="append", type=float,
                   help="where the control starts acting, as model time 1 - sigma (0 = first step)")
    g.add_argument("--control-end", action="append", type=float, help="where it stops acting (1 = last step)")
    g.add_argument("--control-tokens", action="append", choices=TOKENS,
                   help="unified (default): hints on the whole image+caption sequence, as the reference; image: "
                        "as ComfyUI's ZImageFunControlnet (image tokens only)")
    g.add_argument("--control-inpaint", action="store_true",
                   help="give --image and --mask to the (2.0+) ControlNet's inpaint input instead of latent "
                        "inpainting")
    g.add_argument("--cfg-truncation", type=float, default=1.0)
    g.add_argument("--cfg-normalization", type=float, default=0.0)
    g.add_argument("--weight-dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"])
    g.add_argument("--device", default="cpu")
    g.add_argument("--memory", default="auto", choices=list(MEMORY_PRESETS),
                   help="GPU memory preset: high = whole DiT on the GPU; 12GB/8GB/6GB stream part of the blocks "
                        "from pinned CPU memory; auto decides from the GPU's memory (no effect on the CPU)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--tiny", action="store_true", help="use (and create if needed) the tiny random test models")
    g.add_argument("--tiny-dir", default=str(_tiny_dir()))
    g.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]",
                   help="apply a LoRA/LoHa/LoKr/DoRA file (strength default 1); repeat for several")
    g.add_argument("--out", default="out.png")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("make-tiny", help="write tiny random models in the real file formats")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quant", default="", help="also write GGUF DiTs of these types, e.g. Q8_0,Q4_K,Q6_K "
                   "(diffusion_models/z_image_tiny-<TYPE>.gguf, a 768-wide tiny DiT so K-quant rows are whole blocks; "
                   "text_encoders/qwen_3_4b_tiny-<TYPE>.gguf with llama.cpp names)")
    t.set_defaults(func=cmd_make_tiny)

    from . import bench_full

    b = sub.add_parser("bench", help="native ComfyUI against our nodes at the released sizes (random weights), "
                                     "each in a fresh ComfyUI process: time, peak RSS / anonymous RSS, pixels")
    bench_full.add_arguments(b)
    b.set_defaults(func=bench_full.main_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
