"""Layers whose stored weights may be in a lower precision than the computation.

Weights can be stored as fp32, bf16, fp16 or fp8 (optionally with a per-tensor `scale_weight`, as in
ComfyUI's scaled-fp8 files), or as packed quantized blocks (GGUF Q8_0 ... IQ4_XS, see `quant`), and are
cast/dequantized to the activation dtype on use, one layer at a time. LoRA and
similar adapters attach as runtime `patches` that never modify the stored weight.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Workspace(threading.local):
    depth = 0
    buffers: dict | None = None


_WS = _Workspace()


@contextlib.contextmanager
def cast_workspace():
    """Within this scope (on this thread), CPU `Linear`s cast their stored weights into one reused buffer
    per dtype instead of a fresh tensor per call, when no gradient is recorded.

    Why: a cast weight is large (a 3840x11520 fp32 qkv is 177 MB), and the CPU allocator hands blocks that
    large straight back to the kernel when freed, so a fresh cast per layer per step pays for mapping and
    zeroing new pages every time (measured on a 3840-wide DiT: 51 ms per fresh bf16->fp32 cast of that
    weight, 4.4 ms for the same copy into a reused buffer). The buffer lives for the scope only (one forward
    or one sampler call), and each cast is consumed by its matmul before the next one overwrites it.
    Scopes nest; the outermost one frees the buffers.
    """
    _WS.depth += 1
    if _WS.depth == 1:
        _WS.buffers = {}
    try:
        yield
    finally:
        _WS.depth -= 1
        if _WS.depth == 0:
            _WS.buffers = None


def _cast_into_workspace(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """w cast to dtype in the thread's workspace buffer, or None where the workspace does not apply."""
    bufs = _WS.buffers
    if bufs is None or w.dtype == dtype or w.device.type != "cpu" or torch.is_grad_enabled():
        return None
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < w.numel():
        bufs[dtype] = buf = None  # drop the smaller one before allocating
        bufs[dtype] = buf = torch.empty(w.numel(), dtype=dtype)
    return buf[: w.numel()].view(w.shape).copy_(w)


class Linear(nn.Linear):
    """`nn.Linear` that computes in the input's dtype and carries runtime output patches.

    `patches` is a list of callables `patch(x, y) -> y'`, applied in order after the base projection
    (a LoRA adds `scale * B(A(x))` to the rows it targets). `scale_weight`, when set, is the per-tensor
    dequantisation factor of an fp8 weight. `quant`, when set, says how the packed `weight` parameter
    (quantized bytes, moved and streamed as they are) is dequantized (`quant.dequantize(weight, dtype)`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.scale_weight: torch.Tensor | None = None
        self.patches: list = []
        self.quant = None

    def compute_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.dequantize(self.weight, dtype, self)
        w = self.weight.to(dtype)
        if self.scale_weight is not None:
            w = w * self.scale_weight.to(device=w.device, dtype=dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = None
        if self.quant is None and x.device.type == "cpu":
            w = _cast_into_workspace(self.weight, x.dtype)  # valid until the next cast: used at once
            if w is not None and self.scale_weight is not None:
                w.mul_(self.scale_weight.to(dtype=x.dtype))
        y = F.linear(x, self.compute_weight(x.dtype) if w is None else w, bias)
        for patch in self.patches:
            y = patch(x, y)
        return y


class RMSNorm(nn.Module):
    """RMSNorm with the mean square in fp32 (diffusers' variant of the reference norm).

    Besides the plain norm it offers the two fused forms the S3-DiT blocks need, each one pass fewer
    over the activations than norm-then-multiply: `modulated` (x normalised times weight*scale) and
    `gated_residual` (residual + gate * norm(y)).
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x), without the weight, in x's dtype (the mean square is taken in fp32)."""
        xf = x.float()
        ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square() / x.shape[-1]  # [..., 1]
        return (xf * (ms + self.eps).rsqrt()).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(x).mul_(self.weight.to(x.dtype))

    def modulated(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """norm(x) * scale, scale broadcasting over tokens (e.g. [B, 1, D] = 1 + adaLN scale)."""
        return self.normalized(x).mul_(self.weight.to(x.dtype) * scale)

    def gated_residual(self, residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """residual + gate * norm(y), gate broadcasting over tokens."""
        return torch.addcmul(residual, self.normalized(y), self.weight.to(y.dtype) * gate)


class Embedding(nn.Embedding):
    """`nn.Embedding` whose table may be packed quantized rows (`quant` set): only the looked-up rows are
    dequantized, into `compute_dtype`."""

    quant = None
    _compute_dtype: torch.dtype | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute_dtype if self.quant is not None else self.weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            return super().forward(ids)
        return self.quant.dequantize_rows(F.embedding(ids, self.weight), self.compute_dtype)
