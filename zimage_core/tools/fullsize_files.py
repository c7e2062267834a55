"""Random weight files in the released sizes and layouts, for the full-size benchmark and the GPU check.

The 6.15B DiT in ComfyUI's names (bf16; scaled fp8; GGUF Q8_0 / Q4_K), Qwen3-4B (bf16, scaled fp8, GGUF with
llama.cpp names) and the full-size Flux AE, or the same files at the "tiny" sizes. Each file is streamed to
disk tensor by tensor (safetensors) or through a spilled temporary file (GGUF), so writing needs about 2 GB of
memory whatever the model size; a file is renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.qwen3 import Qwen3Config
from ..model.transformer import DiTConfig
from ..model.vae import VAEConfig

GIB = 2**30
# ComfyUI's bundled Qwen tokenizer has 151665 tokens: the tiny text encoder keeps the released vocabulary
FULL_VOCAB = 151936


@dataclass(frozen=True)
class Sizes:
    dit: DiTConfig
    te: Qwen3Config
    vae: VAEConfig


SIZES = {
    "full": Sizes(DiTConfig(), Qwen3Config(), VAEConfig(channels=(128, 256, 512, 512), num_res_blocks=2)),
    "tiny": Sizes(DiTConfig(dim=64, n_layers=2, n_refiner_layers=1, n_heads=4, ffn_dim=170, cap_feat_dim=64),
                  Qwen3Config(vocab_size=FULL_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, intermediate_size=256),
                  VAEConfig(channels=(32, 32, 64, 64), num_res_blocks=1)),
}
FORMATS = ("bf16", "fp8", "q8_0", "q4_k")
# whether a format holds the bf16 file's values (rounded to it): gguf cannot quantize Q4_K, so those files
# are random blocks of the same size and spread (another random model: no pixel difference is reported)
SAME_VALUES = {"bf16": True, "fp8": True, "q8_0": True, "q4_k": False}
# file key -> (ComfyUI model folder, file name)
FILES = {
    "dit_bf16": ("diffusion_models", "z_image_turbo_bf16.safetensors"),
    "dit_fp8": ("diffusion_models", "z_image_turbo_fp8_scaled.safetensors"),
    "dit_q8_0": ("diffusion_models", "z_image_turbo-Q8_0.gguf"),
    "dit_q4_k": ("diffusion_models", "z_image_turbo-Q4_K.gguf"),
    "te_bf16": ("text_encoders", "qwen_3_4b.safetensors"),
    "te_fp8": ("text_encoders", "qwen_3_4b_fp8_scaled.safetensors"),
    "te_q8_0": ("text_encoders", "Qwen3-4B-Q8_0.gguf"),
    "te_q4_k": ("text_encoders", "Qwen3-4B-Q4_K.gguf"),
    "vae": ("vae", "ae.safetensors"),
}


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zimage-fullsize"


# ------------------------------------------------------------------------------------------------ files

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float8_e4m3fn: "F8_E4M3"}


def write_safetensors_streamed(path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], make) -> Path:
    """A safetensors file written tensor by tensor: the header from `specs` {name: (shape, dtype)}, then
    `make(name)` for each (cast to its dtype), so only one tensor is in memory at a time. Written to a
    `.part` file first: an interrupted run leaves no file that looks complete."""
    header, offset = {}, 0
    for name, (shape, dtype) in specs.items():
        n = int(torch.Size(shape).numel()) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, (shape, dtype) in specs.items():
            t = make(name).to(dtype).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: made {tuple(t.shape)}, header says {tuple(shape)}")
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t
    os.replace(part, path)
    return path


def _generator(name: str, seed: int) -> torch.Generator:
    """A generator per tensor (its values do not depend on the order the tensors are written in)."""
    import zlib

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _fp8_scale(shape) -> float:
    """Per-tensor scale of a random matrix of std 0.5/sqrt(fan-in) (the DiT's) or 1/sqrt(fan-in) (the TE's):
    6.5 std at 448, the top of float8_e4m3fn."""
    return 6.5 / shape[1] ** 0.5 / 448


def _scaled_fp8_specs(specs: dict, bulk) -> dict:
    """specs with `bulk(name, shape)` matrices as float8_e4m3fn plus their `scale_weight`, and the marker."""
    out = {}
    for name, (shape, dtype) in specs.items():
        if bulk(name, shape):
            out[name] = (shape, torch.float8_e4m3fn)
            out[name[: -len("weight")] + "scale_weight"] = ((1,), torch.float32)
        else:
            out[name] = (shape, dtype)
    out["scaled_fp8"] = ((2,), torch.float8_e4m3fn)
    return out


def _scaled_fp8_make(make, specs: dict):
    def fp8(name):
        if name == "scaled_fp8":
            return torch.zeros(2)
        if name.endswith(".scale_weight"):
            return torch.tensor([_fp8_scale(specs[name[: -len("scale_weight")] + "weight"][0])])
        t = make(name)
        if specs[name][1] == torch.float8_e4m3fn:
            return (t / _fp8_scale(t.shape)).clamp_(-448, 448)
        return t
    return fp8


def _dit_specs(cfg: DiTConfig) -> dict:
    from ..model.transformer import ZImageDiT

    with torch.device("meta"):
        return {k: (tuple(v.shape), torch.bfloat16) for k, v in ZImageDiT(cfg).state_dict().items()}


def _te_specs(cfg: Qwen3Config) -> dict:
    from ..model.qwen3 import Qwen3LM

    with torch.device("meta"):
        sd = Qwen3LM(cfg).state_dict()
    return {k: (tuple(v.shape), torch.bfloat16) for k, v in sd.items() if not k.startswith("lm_head.")}


def _te_tensor(name: str, shape, seed: int) -> torch.Tensor:
    """Random Qwen3 weights scaled as the tiny text encoder's (norms near 1, projections ~1/sqrt(fan-in))."""
    g = _generator(name, seed)
    if name.endswith("embed_tokens.weight"):
        return torch.randn(shape, generator=g)
    if "norm" in name:
        return 1.0 + 0.2 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / shape[1] ** 0.5


class _Streamed:
    """A state dict whose tensors are made when iterated (`items()`), one at a time."""

    def __init__(self, names, make):
        self.names, self.make = list(names), make

    def items(self):
        return ((name, self.make(name)) for name in self.names)


def _dit_bulk(name, shape) -> bool:  # what ComfyUI's scaled-fp8 DiTs store in fp8: the blocks' matrices
    return (len(shape) == 2 and name.endswith(".weight") and "norm" not in name
            and name.startswith(("layers.", "noise_refiner.", "context_refiner.")))


def write_file(key: str, path: Path, sizes: Sizes, files: dict[str, Path], seed: int = 0) -> Path:
    """Write the file `key` of FILES (random weights of `sizes`); `files` gives those it is derived from."""
    from ..tiny.dit import random_dit_tensor

    if key in ("dit_bf16", "dit_fp8"):
        specs = _dit_specs(sizes.dit)

        def dit(name):
            return random_dit_tensor(name, specs[name][0], _generator(name, seed))
        if key == "dit_fp8":
            specs = _scaled_fp8_specs(specs, _dit_bulk)
            dit = _scaled_fp8_make(dit, specs)
        return write_safetensors_streamed(path, specs, dit)
    if key in ("dit_q8_0", "dit_q4_k"):  # the bf16 file's values, quantized as ComfyUI-GGUF's converter does
        from ..tiny.quantized import write_gguf_dit

        specs = _dit_specs(sizes.dit)
        values = _Streamed(specs, lambda name: random_dit_tensor(name, specs[name][0], _generator(name, seed))
                           .bfloat16().float())
        return write_gguf_dit(path, values, key.split("_", 1)[1].upper(), seed)
    if key in ("te_bf16", "te_fp8"):
        specs = _te_specs(sizes.te)  # model.embed_tokens.weight, model.layers.N..., as ComfyUI's file

        def te(name):
            return _te_tensor(name, specs[name][0], seed)
        if key == "te_fp8":
            specs = _scaled_fp8_specs(specs, lambda n, s: n.endswith("_proj.weight"))
            te = _scaled_fp8_make(te, specs)
        return write_safetensors_streamed(path, specs, te)
    if key in ("te_q8_0", "te_q4_k"):
        from ..tiny.quantized import write_gguf_text_encoder

        return write_gguf_text_encoder(path, files["te_bf16"], None, key.split("_", 1)[1].upper(), seed)
    if key == "vae":
        from safetensors.torch import save_file

        from ..tiny.vae import random_vae

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in random_vae(sizes.vae, seed).state_dict().items()}, str(path))
        return path
    raise KeyError(key)


def ensure_files(keys, root: Path, sizes: Sizes, log=print) -> dict[str, Path]:
    """The files `keys` (and what they derive from) in `root`, written where missing; {key: path}."""
    wanted = list(keys)
    if any(k.startswith("te_q") for k in wanted) and "te_bf16" not in wanted:
        wanted.insert(0, "te_bf16")
    paths = {}
    for key in sorted(set(wanted), key=lambda k: list(FILES).index(k)):
        path = root / FILES[key][1]
        if not path.exists():
            t0 = time.perf_counter()
            log(f"writing {path} ...")
            part = path.with_name(path.name + ".part")  # renamed when complete: a cut run leaves no such file
            write_file(key, part, sizes, paths)
            os.replace(part, path)
            log(f"  {path.stat().st_size / GIB:.2f} GiB in {time.perf_counter() - t0:.0f} s")
        paths[key] = path
    return paths

