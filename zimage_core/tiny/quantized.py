"""Tiny random Z-Image DiTs written as GGUF files (the layout of ComfyUI-GGUF's converter).

Tensors are written with gguf's own writer under general.architecture `lumina2` and the native key
names. Like the converter: 1-D and small tensors stay F32, rows that are not whole blocks fall back to
F16, tensors not named *weight (the pad tokens) are not quantized (as llama.cpp's quantize tool). Types
gguf can quantize (Q8_0, Q5_x, Q4_0/1, BF16) quantize the random float weights; the others
(K-quants, IQ4) are random blocks (random bytes with finite fp16 scales sized to the weight's std), i.e.
a random model whose weights are exactly representable in that type.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from ..model.transformer import DiTConfig
from ..weights.quant import BLOCK_SIZES, dequantize
from .dit import random_dit_state

# a DiT (ffn = int(dim / 3 * 8) as diffusers derives it) whose main Linear rows are whole 256-element
# blocks (the K-quants' super-block), captions from the tiny 64-wide text encoder
TINY_QUANT_DIT = DiTConfig(dim=768, n_layers=1, n_refiner_layers=1, n_heads=12, ffn_dim=2048, cap_feat_dim=64)
QUANT_TYPES = ("BF16", *BLOCK_SIZES)
# byte offsets of the fp16 scale fields inside one block
FP16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ4_NL": (0,), "IQ4_XS": (0,),
}
SMALL = 1024  # tensors with at most this many elements stay F32 (as the converter's threshold)


def random_blocks(qtype: str, shape: tuple[int, ...], rng: np.random.Generator, std: float = 1.0) -> np.ndarray:
    """Random packed blocks of `qtype` for a tensor of `shape`, bytes shaped [..., row bytes]: every byte
    random except the fp16 scales, which are finite, of random sign and sized so the values have ~`std`."""
    block, size = BLOCK_SIZES[qtype]
    n = int(np.prod(shape)) // block
    b = rng.integers(0, 256, (n, size), dtype=np.uint8)
    mags = rng.uniform(0.25, 1.0, (n, len(FP16_FIELDS[qtype]))) * rng.choice([-1.0, 1.0], (n, len(FP16_FIELDS[qtype])))

    def set_scales(factor: float) -> None:
        for i, off in enumerate(FP16_FIELDS[qtype]):
            b[:, off:off + 2] = (mags[:, i] * factor).astype(np.float16).view(np.uint8).reshape(n, 2)

    set_scales(1.0)
    s = float(dequantize(torch.from_numpy(b), qtype, (n * block,)).std())
    set_scales(std / s if s > 0 else 1.0)
    return b.reshape(*shape[:-1], shape[-1] // block * size)


def gguf_tensor(name: str, t: torch.Tensor, qtype: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(array to write, GGUF type name) for one tensor, following the converter's rules."""
    a = t.float().numpy()
    if a.ndim == 1 or a.size <= SMALL or not name.endswith("weight"):  # llama.cpp quantizes only *weight
        return a, "F32"
    block = BLOCK_SIZES.get(qtype, (1, 0))[0]
    if a.shape[-1] % block:
        return a.astype(np.float16), "F16"
    try:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType[qtype]), qtype
    except NotImplementedError:  # no quantizer in gguf for this type: random blocks of the same size
        return random_blocks(qtype, a.shape, rng, float(a.std())), qtype


def _write(path: Path, tensors, arch: str = "lumina2", metadata=None) -> Path:
    """tensors: iterable of (name, array, GGUF type name); metadata(writer) adds key/values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # tensors go to a temporary file as they come (spilled to disk past 256 MiB), so a full-size model is
    # written without holding it in memory
    writer = gguf.GGUFWriter(str(path), arch, use_temp_file=True)
    if metadata is not None:
        metadata(writer)
    for name, data, typ in tensors:
        writer.add_tensor(name, data, raw_dtype=None if typ in ("F32", "F16") else gguf.GGMLQuantizationType[typ])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _check_type(qtype: str) -> None:
    if qtype not in QUANT_TYPES:
        raise ValueError(f"GGUF type '{qtype}' is not one of {', '.join(QUANT_TYPES)}.")


def write_gguf_dit(path: Path, state: dict[str, torch.Tensor], qtype: str, seed: int = 0) -> Path:
    """Write a native-layout DiT state as a `lumina2` GGUF with the bulk in `qtype`."""
    _check_type(qtype)
    rng = np.random.default_rng(seed)
    return _write(path, ((name, *gguf_tensor(name, t, qtype, rng)) for name, t in state.items()))


def write_random_gguf_dit(path: Path, cfg: DiTConfig, qtype: str, seed: int = 0) -> Path:
    """A random DiT of any size straight in `qtype` (random blocks for the big matrices, never a float copy of
    the whole model): for full-width (3840) test and benchmark files."""
    _check_type(qtype)
    from ..model.transformer import ZImageDiT

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageDiT(cfg).state_dict().items()}
    rng = np.random.default_rng(seed)
    block = BLOCK_SIZES.get(qtype, (1, 0))[0]

    def tensors():
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            big = len(shape) == 2 and n > SMALL and name.endswith("weight") and shape[-1] % block == 0
            if big and qtype != "BF16":
                yield name, random_blocks(qtype, shape, rng, 0.5 / shape[1] ** 0.5), qtype
                continue
            g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
            if "norm" in name:
                t = 1 + 0.1 * torch.randn(shape, generator=g)
            elif len(shape) == 2 and "pad_token" not in name:
                t = torch.randn(shape, generator=g) * (0.5 / shape[1] ** 0.5)
            else:
                t = 0.1 * torch.randn(shape, generator=g)
            yield name, *gguf_tensor(name, t, qtype, rng)

    return _write(path, tensors())


def write_tiny_gguf_dits(out_dir: Path, qtypes, cfg: DiTConfig = TINY_QUANT_DIT, seed: int = 0) -> dict[str, Path]:
    """z_image_tiny-<TYPE>.gguf for each type, all from the same random float weights."""
    state = random_dit_state(cfg, seed)
    return {q: write_gguf_dit(Path(out_dir) / f"z_image_tiny-{q}.gguf", state, q, seed) for q in qtypes}


def write_gguf_text_encoder(path: Path, single_file: Path, tokenizer_dir: Path | None, qtype: str,
                            seed: int = 0) -> Path:
    """A Qwen3 safetensors file (`model.` names) rewritten as a llama.cpp-style GGUF: architecture qwen3,
    tensor names from gguf's own name table (token_embd, blk.N.attn_q, ...), the hyper-parameters and, when
    `tokenizer_dir` is given, the vocabulary (tokenizer.ggml.tokens) as llama.cpp's converter stores them."""
    from safetensors import safe_open

    _check_type(qtype)
    src = safe_open(str(single_file), framework="pt")  # read one tensor at a time (full-size files too)
    keys = {k.removeprefix("model."): k for k in src.keys()}
    shapes = {k: tuple(src.get_slice(full).get_shape()) for k, full in keys.items()}
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("layers."))
    vocab, hidden = shapes["embed_tokens.weight"]
    head_dim = shapes["layers.0.self_attn.q_norm.weight"][0]
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, layers)
    rng = np.random.default_rng(seed)

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_block_count(layers)
        w.add_context_length(40960)
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(shapes["layers.0.mlp.gate_proj.weight"][0])
        w.add_head_count(shapes["layers.0.self_attn.q_proj.weight"][0] // head_dim)
        w.add_head_count_kv(shapes["layers.0.self_attn.k_proj.weight"][0] // head_dim)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_freq_base(1e6)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_vocab_size(vocab)
        if tokenizer_dir is not None:
            from tokenizers import Tokenizer

            ids = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab(with_added_tokens=True)
            w.add_tokenizer_model("gpt2")
            w.add_token_list([t for t, _ in sorted(ids.items(), key=lambda kv: kv[1])])

    def tensors():
        for k, full in keys.items():
            yield table.get_name("model." + k, try_suffixes=(".weight",)), *gguf_tensor(k, src.get_tensor(full), qtype, rng)

    return _write(path, tensors(), "qwen3", metadata)

