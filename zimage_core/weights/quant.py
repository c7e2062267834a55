"""Block-quantized weights kept in their stored form and dequantized per layer, per forward.

GGML block types (the tensors of GGUF files): every type ComfyUI-GGUF dequantizes. Each function takes
the packed blocks `[n_blocks, type_size]` (uint8, on any device) and returns `[n_blocks, block_size]`
fp32 with exactly the arithmetic of the reference reader (`gguf.quants.dequantize`: fp16 scales widened to
fp32, then the same products and differences in the same order), so the result is equal bit for bit.

`GGMLWeight` describes one packed weight (type, logical torch shape); `ops.Linear` holds the packed
bytes as its `weight` parameter and calls `dequantize` into the compute dtype on the compute device on
every forward, so memory presets, block streaming and `.to(device)` move the quantized bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QK_K = 256
# type name -> (block_size, type_size), as ggml defines them (gguf.GGML_QUANT_SIZES)
BLOCK_SIZES = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
}
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] little-endian fp16 bytes -> [n, 1] fp32."""
    return b.contiguous().view(torch.float16).float()


def _shifted(x: torch.Tensor, shifts, dim: int) -> torch.Tensor:
    """x >> s for each s, stacked along a new `dim` (scalar shifts: no constant tensor to copy to the device)."""
    return torch.stack([x >> s for s in shifts], dim=dim)


def _nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """[n, k*group] bytes -> [n, k, 2*group]: the low nibbles of each `group` bytes, then the high ones."""
    n = qs.shape[0]
    return (_shifted(qs.reshape(n, -1, group), (0, 4), 2) & 0x0F).reshape(n, -1, 2 * group)


def _crumbs(qs: torch.Tensor) -> torch.Tensor:
    """[n, k*32] bytes -> [n, k, 4, 32]: 2-bit fields 0..3 of each 32 bytes."""
    n = qs.shape[0]
    return _shifted(qs.reshape(n, -1, 32), (0, 2, 4, 6), 2) & 3


def _bits(b: torch.Tensor, group: int) -> torch.Tensor:
    """[n, group] bytes -> [n, 8, group]: plane i holds bit i of every byte."""
    return _shifted(b.reshape(b.shape[0], group), range(8), 1) & 1


def _q4_0(b):
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:], 16).reshape(b.shape[0], 32)
    return d * (q.to(torch.int8) - 8).float()


def _q4_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 4:], 16).reshape(b.shape[0], 32).float()
    return d * q + m


def _q5(b, off):
    n = b.shape[0]
    qh = _bits(b[:, off:off + 4], 4).permute(0, 2, 1).reshape(n, 32)  # bit i of the little-endian uint32
    ql = _nibbles(b[:, off + 4:], 16).reshape(n, 32)
    return ql | (qh << 4)


def _q5_0(b):
    return _f16(b[:, :2]) * (_q5(b, 2).to(torch.int8) - 16).float()


def _q5_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _q5(b, 4).float() + m


def _q8_0(b):
    # int8 -> fp32 (exact), then the scale in place: the values of int8 * fp32, ~1.5x faster on the CPU than
    # the mixed-dtype product
    return b[:, 2:].view(torch.int8).float().mul_(_f16(b[:, :2]))


def _q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    return (dl * _crumbs(qs).reshape(n, 16, 16).float() - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    lo = _shifted(scales[:, :8], (0, 4), 1).reshape(n, 16)
    hi = _shifted(scales[:, 8:], (0, 2, 4, 6), 1).reshape(n, 16)
    sc = ((lo & 0x0F) | ((hi & 0x03) << 4)).to(torch.int8) - 32
    dl = (d * sc.float()).reshape(n, 16, 1)
    ql = _crumbs(qs).reshape(n, 16, 16)
    qh = _bits(hmask, 32).reshape(n, 16, 16) ^ 1  # the offset 4 applies where the mask bit is 0
    q = ql.to(torch.int8) - (qh << 2).to(torch.int8)
    return (dl * q.float()).reshape(n, QK_K)


def _scale_min_k4(s: torch.Tensor):
    """The 8 six-bit scales and mins packed in 12 bytes (Q4_K, Q5_K) -> two [n, 8] uint8."""
    n = s.shape[0]
    s = s.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)  # dl * q - ml, in place: one full-size fp32 tensor


def _q5_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:], 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 32)
    q = (ql | (qh << 4)).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    dl = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    lo = _nibbles(ql, 64).reshape(n, 8, 32)
    hi = _crumbs(qh).reshape(n, 8, 32)
    q = (lo | (hi << 4)).to(torch.int8) - 32
    return q.reshape(n, 16, 16).float().mul_(dl).reshape(n, QK_K)


def _iq4_table(device) -> torch.Tensor:
    return torch.tensor(IQ4_VALUES, dtype=torch.float32, device=device)


def _iq4_nl(b):
    q = _nibbles(b[:, 2:], 16).reshape(b.shape[0], 32)
    return _f16(b[:, :2]) * _iq4_table(b.device)[q.long()]


def _iq4_xs(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    sh = b[:, 2].int() | (b[:, 3].int() << 8)  # uint16 high bits of the 8 scales
    sh = _shifted(sh, range(0, 16, 2), 1) & 3
    sl = _shifted(b[:, 4:8], (0, 4), 2).reshape(n, 8) & 0x0F
    sc = (sl | (sh.to(torch.uint8) << 4)).to(torch.int8) - 32
    dl = (d * sc.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 8:], 16).reshape(n, 8, 32)
    return (dl * _iq4_table(b.device)[q.long()]).reshape(n, QK_K)


DEQUANTIZE = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
    "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs,
}


def dequantize(packed: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    """Packed GGML blocks (uint8, rows of whole blocks) -> a `shape` tensor of `dtype` on packed's device."""
    blocks = packed.reshape(-1, BLOCK_SIZES[qtype][1])
    return DEQUANTIZE[qtype](blocks).reshape(shape).to(dtype)


@dataclass(frozen=True)
class GGMLWeight:
    """How a Linear's packed `weight` parameter ([out, in / block * type_size] uint8) becomes [out, in]."""

    qtype: str
    shape: tuple[int, ...]

    def dequantize(self, packed: torch.Tensor, dtype: torch.dtype, module=None) -> torch.Tensor:
        return dequantize(packed, self.qtype, self.shape, dtype)

    def dequantize_rows(self, packed_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Some rows of the packed matrix ([..., row bytes], e.g. looked-up embeddings) -> [..., columns]."""
        return dequantize(packed_rows, self.qtype, (*packed_rows.shape[:-1], self.shape[-1]), dtype)

    def describe(self) -> str:
        return f"GGUF {self.qtype}"


class PackedParameter(torch.nn.Parameter):
    """A Linear's packed `weight` (the stored bytes, moved, streamed and pinned as they are) whose `shape` is the
    layer's logical [out, in], as the host's own quantized weights answer (ComfyUI's QuantizedTensor,
    ComfyUI-GGUF's GGMLTensor): host code that sizes something from `layer.weight.shape` (ComfyUI's
    TrainLoraNode creating an adapter per weight) sees the layer, not the bytes. `size()`, `.data`, slices and
    every op's result are the bytes as stored (plain tensors)."""

    def __new__(cls, data: torch.Tensor, requires_grad: bool = False, shape=None):
        p = super().__new__(cls, data, requires_grad)
        p.logical_shape = torch.Size(data.shape if shape is None else shape)
        return p

    @property
    def shape(self) -> torch.Size:
        return self.logical_shape

    def __deepcopy__(self, memo):
        out = type(self)(self.data.clone(memory_format=torch.preserve_format), self.requires_grad, self.logical_shape)
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, protocol):  # pickled (never by this pack) as a plain parameter of the stored bytes
        return torch.nn.Parameter, (self.data, self.requires_grad)


@dataclass(frozen=True)
class QuantizedTensor:
    """A packed tensor as read from a file (not yet placed in a module)."""

    packed: torch.Tensor  # uint8 [rows, bytes per row] (or fp8), usually a view of the memory-mapped file
    format: GGMLWeight | ComfyQuantWeight
    scales: tuple[tuple[str, torch.Tensor], ...] = ()  # parameters the layer also holds (weight_scale, ...)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.format.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.format.dequantize(self.packed, dtype, _Scales(self.scales))


class _Scales:
    def __init__(self, scales):
        self.__dict__.update(dict(scales))


# ------------------------------------------------------------------------------ ComfyUI's comfy_quant layers
# A layer `<name>` of a ComfyUI mixed-precision safetensors file has `<name>.comfy_quant` (uint8 JSON,
# {"format": ...}) and its scales. The arithmetic below is comfy-kitchen's eager dequantization:
#   float8_e4m3fn / float8_e5m2: weight.to(dtype) * weight_scale.to(dtype)        (per-tensor scale)
#   nvfp4: two E2M1 values per byte (high nibble first), 16-wide blocks scaled by fp8 block scales
#          (weight_scale, cuBLAS tiled layout) times the per-tensor weight_scale_2, in the output dtype
#   mxfp8: fp8 e4m3 values in 32-wide blocks scaled by E8M0 (power of two) block scales (weight_scale,
#          tiled layout), in fp32 then cast
COMFY_QUANT_FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8")
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Scales in cuBLAS' tiled block-scaling layout (128 x 4 tiles, padded) -> plain [rows, cols]."""
    rb, cb = -(-rows // 128), -(-cols // 4)
    t = blocked.reshape(-1, 32, 4, 4).transpose(1, 2).reshape(rb, cb, 128, 4).permute(0, 2, 1, 3)
    return t.reshape(rb * 128, cb * 4)[:rows, :cols]


def _nvfp4(packed, dtype, shape, scale, block_scale):
    rows = packed.shape[0]
    lut = torch.tensor(E2M1_VALUES, dtype=dtype, device=packed.device)
    q = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(rows, -1)  # high nibble first
    vals = lut[q.long()].reshape(rows, -1, 16)
    bs = from_blocked(block_scale, rows, q.shape[1] // 16)
    total = scale.to(dtype) * bs.to(dtype)
    return (vals * total.unsqueeze(-1)).reshape(rows, -1)[: shape[0], : shape[1]].to(dtype)


def _mxfp8(packed, dtype, shape, block_scale):
    rows, cols = packed.shape
    bs = from_blocked(block_scale.view(torch.uint8), rows, cols // 32).to(torch.int32)
    bs = torch.where(bs == 0, torch.zeros_like(bs), bs << 23).view(torch.float32)  # E8M0 -> fp32 (0 -> 0)
    out = packed.to(torch.float32).reshape(rows, -1, 32) * bs.unsqueeze(-1)
    return out.reshape(rows, cols)[: shape[0], : shape[1]].to(dtype)


@dataclass(frozen=True)
class ComfyQuantWeight:
    """A comfy_quant layer: the Linear's `weight` holds the stored data, its `weight_scale` /
    `weight_scale_2` parameters the scales (so they move and stream with the layer)."""

    format: str
    shape: tuple[int, ...]

    def dequantize(self, packed: torch.Tensor, dtype: torch.dtype, module=None) -> torch.Tensor:
        s1 = module.weight_scale
        if self.format in ("float8_e4m3fn", "float8_e5m2"):
            return packed.to(dtype) * s1.to(device=packed.device, dtype=dtype)
        if self.format == "nvfp4":
            return _nvfp4(packed, dtype, self.shape, module.weight_scale_2.to(packed.device), s1.to(packed.device))
        return _mxfp8(packed, dtype, self.shape, s1.to(packed.device))

    def describe(self) -> str:
        return f"comfy_quant {self.format}"
