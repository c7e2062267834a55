"""Reading GGUF files (through the `gguf` package, the reference reader) as a weight source.

`GGUFSource` offers the interface of `checkpoint.WeightSource` (keys, shape, dtype, get, describe): F32,
F16 and BF16 tensors come back as torch views of the memory-mapped file; quantized tensors come back as
`quant.QuantizedTensor` (the packed bytes, still a view of the file, plus their type and torch shape).

ggml lists dimensions innermost first; shapes here are torch's order (reversed), or the
`comfy.gguf.orig_shape.<name>` array that ComfyUI-GGUF's converter stores for reshaped tensors.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import CheckpointError
from .quant import BLOCK_SIZES, GGMLWeight, QuantizedTensor

PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED = (*PLAIN, *BLOCK_SIZES)
# general.architecture of files that are not a Z-Image DiT / Qwen3 text encoder, in words
OTHER_ARCHS = {
    "flux": "a Flux DiT", "sd1": "a Stable Diffusion 1.x UNet", "sdxl": "an SDXL UNet",
    "sd3": "a Stable Diffusion 3 DiT",
    "aura": "an AuraFlow DiT", "hidream": "a HiDream DiT", "cosmos": "a Cosmos DiT", "ltxv": "an LTX-Video DiT",
    "hyvid": "a HunyuanVideo DiT", "wan": "a Wan video DiT", "qwen_image": "a Qwen-Image DiT",
    "t5": "a T5 text encoder", "t5encoder": "a T5 text encoder", "llama": "a Llama language model",
    "qwen2": "a Qwen2 language model", "qwen2vl": "a Qwen2-VL model", "qwen3vl": "a Qwen3-VL model",
    "clip": "a CLIP model",
}
TEXT_ENCODER_ARCHS = ("qwen3",)
DIT_ARCHS = ("lumina2",)


class GGUFSource:
    """Tensors of one .gguf file (see the module docstring)."""

    def __init__(self, path: str | Path, mmap: bool = True):
        self.path = Path(path)
        self.mmap = mmap
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file.")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # gguf raises ValueError/KeyError/IndexError for every header problem
            size = self.path.stat().st_size
            raise CheckpointError(
                f"{self.path.name}: not a readable GGUF file ({size:,} bytes): {e}. The file is probably truncated "
                "or corrupt (an interrupted download?); download it again.") from None
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.field("general.architecture")
        self.metadata: dict[str, str] = {}

    def field(self, name: str):
        f = self.reader.get_field(name)
        return None if f is None else f.contents()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def qtype(self, key: str) -> str:
        return self._tensors[key].tensor_type.name

    def shape(self, key: str) -> tuple[int, ...]:
        orig = self.field(f"comfy.gguf.orig_shape.{key}")
        if orig is not None:
            return tuple(int(x) for x in orig)
        return tuple(int(x) for x in reversed(self._tensors[key].shape.tolist()))

    def dtype(self, key: str) -> torch.dtype:
        """The torch dtype of a plain tensor; quantized tensors report bfloat16 (they compute like bf16)."""
        return PLAIN.get(self.qtype(key), torch.bfloat16)

    def is_quantized(self, key: str) -> bool:
        return self.qtype(key) not in PLAIN

    def get(self, key: str) -> torch.Tensor | QuantizedTensor:
        t = self._tensors[key]
        qtype, shape = t.tensor_type.name, self.shape(key)
        if qtype not in SUPPORTED:
            raise CheckpointError(
                f"{self.path.name}: tensor '{key}' is stored as GGUF type {qtype}, which this loader does not "
                f"dequantize (supported: {', '.join(SUPPORTED)}).")
        data = t.data if self.mmap else np.array(t.data)
        with warnings.catch_warnings():  # a read-only memory map: torch warns that it is not writable
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(data)
        if qtype in PLAIN:
            if qtype == "BF16":  # stored as bytes: reinterpret as bf16
                raw = raw.view(torch.uint8).view(torch.bfloat16)
            return raw.reshape(shape)
        block = BLOCK_SIZES[qtype][0]
        if len(shape) < 2 or shape[-1] % block:
            raise CheckpointError(
                f"{self.path.name}: tensor '{key}' ({qtype}) has shape {shape}, not rows of whole blocks.")
        return QuantizedTensor(raw.reshape(-1, raw.shape[-1]), GGMLWeight(qtype, shape))

    def describe(self) -> str:
        return self.path.name

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self._tensors.values():
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return counts


def check_arch(src: GGUFSource, wanted: tuple[str, ...], what: str, loader_hint: dict[str, str]) -> None:
    """Refuse a GGUF whose general.architecture is not one of `wanted` (None: decided from the keys later)."""
    if src.arch is None or src.arch in wanted:
        return
    if src.arch in loader_hint:
        raise CheckpointError(f"{src.describe()}: expected {what}, but this GGUF is {loader_hint[src.arch]}.")
    desc = OTHER_ARCHS.get(src.arch, f"of architecture '{src.arch}'")
    raise CheckpointError(
        f"{src.describe()}: expected {what}, but this GGUF is {desc} (general.architecture = '{src.arch}'); "
        "it is not used by Z-Image.")
