"""Reading weight files: safetensors only (never pickle), single file, sharded set or folder.

`WeightSource` is a lazy, memory-mapped view: keys, shapes and dtypes come from the headers, a tensor
is read only when asked for. `identify` tells what a set of keys looks like (Z-Image DiT, Flux DiT,
SDXL UNet, LoRA, VAE, text encoder, ...) so that every loader can say "this file is X, use loader Y".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def _shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: from an index json if there is one, else all of them."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{indexes[0]}: unreadable shard index ({e}).") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{folder}: the index {indexes[0].name} lists {len(names)} shard(s) but "
                f"{len(missing)} are missing: {', '.join(missing[:5])}. Download the missing shard(s)."
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = (
            f" It has pickle files ({', '.join(pickled[:3])}), which this pack never loads for safety;"
            " use the .safetensors version of the model." if pickled else ""
        )
        raise CheckpointError(f"{folder}: no .safetensors files in this folder.{hint}")
    return files


class WeightSource:
    """Tensors of one safetensors file, a sharded index, or a folder of files.

    mmap=True: `get` returns zero-copy views of the memory-mapped file (instant, lazily paged in).
    mmap=False: `get` reads each tensor into ordinary process memory with plain file reads, so no
    file-backed pages stay mapped (the file may then be replaced while the model is in use).
    """

    def __init__(self, path: str | os.PathLike, mmap: bool = True):
        self.path = Path(path)
        self.mmap = mmap
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or folder.")
        if self.path.is_dir():
            self.files = _shard_files(self.path)
        elif self.path.name.endswith(".safetensors.index.json"):
            self.files = _shard_files(self.path.parent)
        elif self.path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{self.path.name}: pickle checkpoints ({self.path.suffix}) are never loaded by this pack because "
                "unpickling can run arbitrary code. Use the .safetensors version of the model."
            )
        elif self.path.suffix.lower() == ".gguf":
            raise CheckpointError(
                f"{self.path.name}: a GGUF file; only the DiT and text-encoder loaders read GGUF. Use a "
                ".safetensors file here."
            )
        else:
            self.files = [self.path]
        self._handles = {}
        self._offsets: dict[Path, tuple] = {}  # file -> (open file, data start, header), for mmap=False
        self._where: dict[str, Path] = {}
        self.metadata: dict[str, str] = {}
        for f in self.files:
            h = self._open(f)
            self.metadata.update(h.metadata() or {})
            for k in h.keys():
                self._where[k] = f

    def _open(self, f: Path):
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types for every header problem
                size = f.stat().st_size if f.exists() else 0
                raise CheckpointError(
                    f"{f.name}: not a readable safetensors file ({size:,} bytes): {e}. The file is probably "
                    "truncated or corrupt (an interrupted download?); download it again."
                ) from None
        return self._handles[f]

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._open(self._where[key]).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._open(self._where[key]).get_slice(key).get_dtype()
        return SAFETENSORS_DTYPES.get(name, torch.float32)

    def get(self, key: str) -> torch.Tensor:
        f = self._where[key]
        try:
            return self._open(f).get_tensor(key) if self.mmap else self._read(f, key)
        except Exception as e:
            raise CheckpointError(f"{f.name}: tensor '{key}' could not be read ({e}); the file may be corrupt.") from None

    def _read(self, f: Path, key: str) -> torch.Tensor:
        """One tensor read from the file into freshly allocated memory (no mmap)."""
        if f not in self._offsets:
            fh = open(f, "rb")  # noqa: SIM115  (kept open for the tensors still to read, like safe_open's handle)
            n = int.from_bytes(fh.read(8), "little")
            self._offsets[f] = (fh, 8 + n, json.loads(fh.read(n)))
        fh, start, header = self._offsets[f]
        info = header[key]
        begin, end = info["data_offsets"]
        out = torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]])
        buf = out.reshape(-1).view(torch.uint8).numpy()
        if buf.nbytes != end - begin:
            raise ValueError(f"header gives {end - begin} bytes for a {info['dtype']} tensor of shape {info['shape']}")
        fh.seek(start + begin)
        if fh.readinto(buf) != buf.nbytes:
            raise ValueError("unexpected end of file")
        return out

    def describe(self) -> str:
        return self.path.name if self.path.is_file() else f"{self.path} ({len(self.files)} file(s))"


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}

# Prefixes that wrappers put in front of a model's own key names.
COMMON_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")


def strip_prefix(keys: list[str], prefixes=COMMON_PREFIXES) -> str:
    """The longest listed prefix that every key starts with ('' when none)."""
    for p in prefixes:
        if keys and all(k.startswith(p) for k in keys):
            return p
    return ""


@dataclass(frozen=True)
class Identity:
    kind: str  # 'zimage_dit', 'lora', 'vae', 'text_encoder', 'other'
    description: str  # "a Flux DiT", ...
    loader: str | None  # node id that loads it, when this pack has one


def identify(keys: list[str], shape=lambda k: None) -> Identity:
    """Guess what a checkpoint is from its key names (and a few shapes)."""
    ks = set(keys)

    def has(sub: str) -> bool:
        return any(sub in k for k in ks)

    def ends(suffix: str) -> str | None:
        return next((k for k in ks if k.endswith(suffix)), None)

    if (has("lora_A") or has("lora_down") or has("lora_up") or has("lora_B") or has("lokr_w") or has(".lora.down")
            or has("hada_w1_")
            or any(k.endswith((".diff", ".diff_b", ".set_weight", ".a1.weight")) for k in ks)
            or has(".oft_blocks")):
        return Identity("lora", "a LoRA", "ZImageLoraLoader")
    # ControlNets of other families (before the DiT checks: some carry DiT-style block names)
    if has("controlnet_blocks.") and has(".y_rms."):
        return Identity("other", "a Qwen-Image blockwise ControlNet (DiffSynth model patch)", None)
    if has("controlnet_blocks.") and (has("img_mod.") or has("txt_mod.")):
        return Identity("other", "a Qwen-Image ControlNet", None)
    if has("controlnet_blocks.") or has("controlnet_single_blocks.") or has("controlnet_x_embedder"):
        return Identity("other", "a Flux ControlNet", None)
    if has("control_model.") or has("zero_convs.") or has("input_hint_block.") or has("controlnet_cond_embedding."):
        return Identity("other", "a Stable Diffusion / SDXL ControlNet", None)
    tk = ends("t_embedder.mlp.2.weight")
    if ends("cap_embedder.1.weight") and tk:
        s = shape(tk)
        if s is not None and s[0] > 256:  # Lumina-2 conditions on a 1024-wide vector, Z-Image on 256
            return Identity("other", "a Lumina-Image-2.0 DiT", None)
        return Identity("zimage_dit", "a Z-Image DiT", "ZImageDiTLoader")
    if has("double_blocks.") and has("single_blocks."):
        return Identity("other", "a Flux DiT (BFL format)", None)
    if has("single_transformer_blocks.") and has("transformer_blocks."):
        return Identity("other", "a Flux DiT (diffusers format)", None)
    if has("joint_blocks."):
        return Identity("other", "a Stable Diffusion 3 DiT", None)
    if has("img_mod.") and has("txt_mod."):
        return Identity("other", "a Qwen-Image DiT", None)
    if has("patch_embedding.") and has("blocks.0.self_attn."):
        return Identity("other", "a Wan video DiT", None)
    if has("input_blocks.") and has("output_blocks."):
        if has("first_stage_model.") or has("cond_stage_model.") or has("conditioner."):
            return Identity("other", "a full Stable Diffusion checkpoint (UNet + VAE + text encoder)", None)
        if has("label_emb."):
            return Identity("other", "an SDXL UNet", None)
        return Identity("other", "a Stable Diffusion 1.x/2.x UNet", None)
    if has("down_blocks.") and has("up_blocks.") and has("time_embedding."):
        return Identity("other", "a diffusers UNet (SD/SDXL)", None)
    k = ends("decoder.conv_in.weight")
    if k and (has("encoder.down") or has("decoder.up")):
        s = shape(k)
        if s is not None and s[1] == 16:
            return Identity("vae", "a Flux VAE (16-channel)", "ZImageVAELoader")
        ch = f"{s[1]}-channel " if s is not None else ""
        return Identity("other", f"a {ch}VAE that is not the Flux VAE", None)
    if has("self_attn.q_proj.") and has("embed_tokens."):
        if has("self_attn.q_norm."):
            return Identity("text_encoder", "a Qwen3 text encoder", "ZImageTextEncoderLoader")
        return Identity("other", "a Llama/Qwen2-style text encoder (not Qwen3)", None)
    if has("text_model.encoder.layers."):
        return Identity("other", "a CLIP text encoder", None)
    if has("encoder.block.0.layer.0.SelfAttention"):
        return Identity("other", "a T5 text encoder", None)
    return Identity("other", "an unrecognised model", None)


def wrong_model_error(source: WeightSource, wanted: str, ident: Identity) -> CheckpointError:
    """The error every loader raises for a file of another kind."""
    hint = f" Load it with the {ident.loader} node instead." if ident.loader else " It is not used by Z-Image."
    return CheckpointError(
        f"{source.describe()}: expected {wanted}, but this looks like {ident.description}.{hint}"
    )
