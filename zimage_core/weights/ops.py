"""Layers whose stored weights may be in a lower precision than the computation.

Weights can be stored as fp32, bf16, fp16 or fp8 (optionally with a per-tensor `scale_weight`, as in
ComfyUI's scaled-fp8 files), or as packed quantized blocks (GGUF Q8_0 ... IQ4_XS, see `quant`), and are
cast/dequantized to the activation dtype on use, one layer at a time. LoRA and
similar adapters attach as runtime `patches` that never modify the stored weight.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

# On the CPU a weight stored in another form than the compute dtype (bf16/fp8 cast, GGUF blocks) is expanded
# this many elements at a time (16 MiB in fp32): rows of the weight go through dequantization and the matmul
# into their columns of the output, so no whole-matrix fp32 copy (157 MiB for a 10240 x 3840 matrix) and none
# of the dequantizers' whole-matrix temporaries exist at once, and chunks below glibc's mmap threshold are
# reused from the heap rather than faulted in afresh for every layer.
CPU_CHUNK_ELEMENTS = 1 << 22


# CPU fp32 matrix products of at least this many weight elements may go to oneDNN (see `cpu_gemm`); smaller
# ones stay with F.linear, whose call overhead is lower.
ONEDNN_MIN_ELEMENTS = 1 << 16
_GEMM_CHOICES = ("auto", "onednn", "blas")
_gemm: str | None = None  # "onednn" or "blas" once decided


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x w^T + b through oneDNN's fp32 matmul (the op PyTorch's CPU compiler uses for linear layers)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def _measure_gemm() -> str:
    """'onednn' when oneDNN's fp32 matmul gives F.linear's result (within fp32 rounding) faster on this CPU."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 1024, generator=g)
        w = torch.randn(1024, 1024, generator=g) / 32.0
        ref = F.linear(x, w)
        if (_onednn_linear(x, w, None) - ref).abs().max() > 1e-5 * ref.abs().max():
            return "blas"

        def best(f):
            f()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            return min(times)

        t_blas, t_dnn = best(lambda: F.linear(x, w)), best(lambda: _onednn_linear(x, w, None))
    except (RuntimeError, AttributeError):  # a PyTorch without this op or without oneDNN
        return "blas"
    return "onednn" if t_dnn < 0.9 * t_blas else "blas"


def cpu_gemm() -> str:
    """Which library computes the CPU's large fp32 linear layers: "onednn" or "blas" (F.linear: MKL/OpenBLAS).

    Both are exact fp32 products (results differ by rounding order only, ~1e-7 relative), but their speed
    depends on the CPU: on AMD EPYC (Zen 5) with PyTorch's MKL build, oneDNN's AVX-512 kernels took 0.41-0.45x
    MKL's sgemm time on the DiT's shapes (288-1100 tokens); on other CPUs the two may be close (not measured).
    So it is measured once per process (a 256x1024x1024 product, about 30 ms) unless ZIMAGE_CPU_GEMM says
    "onednn" or "blas".
    """
    global _gemm
    if _gemm is None:
        choice = os.environ.get("ZIMAGE_CPU_GEMM", "auto").strip().lower() or "auto"
        if choice not in _GEMM_CHOICES:
            raise InputError(f"ZIMAGE_CPU_GEMM={choice!r}; expected one of {', '.join(_GEMM_CHOICES)}.")
        _gemm = _measure_gemm() if choice == "auto" else choice
    return _gemm


def _use_onednn(x: torch.Tensor, weight_elements: int) -> bool:
    """Whether an fp32 CPU inference product with a weight of this size goes to oneDNN (decided per layer: the
    row chunks of one layer all take the library its whole weight would)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight_elements >= ONEDNN_MIN_ELEMENTS
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling() and cpu_gemm() == "onednn")


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with large fp32 CPU inference products through the faster library (`cpu_gemm`)."""
    if w.dtype == torch.float32 and _use_onednn(x, w.numel()):
        return _onednn_linear(x, w, bias)
    return F.linear(x, w, bias)


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
    if (bufs is None or w.dtype == dtype or w.device.type != "cpu" or torch.is_grad_enabled()
            or torch.compiler.is_compiling()):
        return None
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < w.numel():
        bufs[dtype] = buf = None  # drop the smaller one before allocating
        bufs[dtype] = buf = torch.empty(w.numel(), dtype=dtype)
    return buf[: w.numel()].view(w.shape).copy_(w)


class _StepBuffers(threading.local):
    refs: dict | None = None


_STEP = _StepBuffers()


def _step_buffer(layer: "Linear", x: torch.Tensor) -> torch.Tensor | None:
    """A CPU buffer for the weight `layer` computes in x's dtype under training (`_RecomputedWeightLinear`), shared
    by the layers of one training step: each computed weight is used at once (by its product, or by the adapters'
    gradient in backward) before the next layer's overwrites it. None where computing makes no copy (a weight
    stored in x's dtype is used as it is) or off the CPU (the CUDA allocator reuses blocks by itself).

    Why: a fresh full-size tensor per call pays for new pages every time on the CPU (see `cast_workspace`:
    63 ms for a fresh Q8_0 dequantization of a 10240x3840 weight, 9 ms into a reused buffer), and a training step
    computes each weight three times. The thread keeps only a weak reference; each step's graph nodes hold the
    buffer, so it is freed with the graph after the step's backward."""
    if x.device.type != "cpu" or layer.weight.device.type != "cpu":
        return None
    if layer.quant is None and layer.weight.dtype == x.dtype and layer.scale_weight is None:
        return None
    if layer.quant is not None and not hasattr(layer.quant, "dequantize_rows"):
        return None
    n = layer.out_features * layer.in_features
    refs = _STEP.refs if _STEP.refs is not None else {}
    _STEP.refs = refs
    buf = refs[x.dtype]() if x.dtype in refs else None
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=x.dtype)
        refs[x.dtype] = weakref.ref(buf)
    return buf


class _RecomputedWeightLinear(torch.autograd.Function):
    """y = x W^T for a weight computed for the call (dequantized, cast, with the host's weight functions, e.g.
    a LoRA being trained), keeping only x for backward: W is computed again there, as QLoRA keeps only the
    quantized base. Autograd's own F.linear would keep every layer's computed W (a full-size copy of the
    model in the compute dtype) until the backward pass.

    `params` are the tensors W depends on that need a gradient (the adapters' parameters). Backward gives x
    the gradient g W and the params theirs through W's own graph with dL/dW = g^T x: the products autograd
    forms for F.linear, under the autocast state the forward ran in.
    """

    @staticmethod
    def forward(ctx, x, layer, *params):
        dev = x.device.type
        ctx.layer, ctx.params = layer, params
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(x)
        ctx.buffer = _step_buffer(layer, x)
        with torch.no_grad():
            return F.linear(x, layer._call_weight(x, ctx.buffer))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        dev, autocast, dtype = ctx.autocast
        train = [p for p, need in zip(ctx.params, ctx.needs_input_grad[2:]) if need]
        with torch.enable_grad():
            w = ctx.layer._call_weight(x, ctx.buffer)
            if autocast:  # F.linear under autocast multiplies in the autocast dtype
                w = w.to(dtype)
            g2 = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
            gx = (g2 @ w.detach()).reshape(x.shape).to(x.dtype) if ctx.needs_input_grad[0] else None
            found = iter(())
            if train:
                gw = g2.t() @ x.reshape(-1, x.shape[-1]).to(w.dtype)
                found = iter(torch.autograd.grad(w, train, gw, allow_unused=True))
        grads = tuple(next(found) if need else None for need in ctx.needs_input_grad[2:])
        return (gx, None, *grads)


class HostCast:
    """ComfyUI's partial-load protocol of its own layers (comfy.ops), spoken by ours so that a ComfyUI MODEL of
    this DiT loads like a native one under --lowvram / --novram or when it does not fit:

    - `comfy_cast_weights`: ComfyUI's ModelPatcher sets it on the layers it leaves on the offload device;
    - `weight_function` / `bias_function`: weight patches (e.g. LoRA from LoraLoaderModelOnly) to apply to the
      weight as computed for a call (ComfyUI puts them here for such layers, and nodes/host_model.py for
      layers whose stored tensor cannot take a patch: packed, scaled or streamed weights).

    Whenever a function is set, or a parameter is on another device than the input, the layer computes its
    weight on the input's device for the call. Outside ComfyUI nothing sets them.
    """

    comfy_cast_weights = False
    weight_function: list | tuple = ()
    bias_function: list | tuple = ()

    def _host_param(self, t: torch.Tensor, x: torch.Tensor, functions) -> torch.Tensor:
        """A plain parameter (bias, norm weight) on x's device and dtype with the patch functions applied."""
        t = t.to(device=x.device, dtype=x.dtype, copy=bool(functions))
        for f in functions:
            t = f(t)
        return t


class Linear(HostCast, nn.Linear):
    """`nn.Linear` that computes in the input's dtype and carries runtime output patches.

    `patches` is a list of callables `patch(x, y) -> y'`, applied in order after the base projection
    (a LoRA adds `scale * B(A(x))` to the rows it targets). `scale_weight`, when set, is the per-tensor
    dequantisation factor of an fp8 weight. `quant`, when set, says how the packed `weight` parameter
    (quantized bytes, moved and streamed as they are) is dequantized (`quant.dequantize(weight, dtype)`).
    On the CPU, a weight stored in another dtype is cast into the `cast_workspace` buffer when one is open (one
    whole-matrix product: the fastest form, measured by tests/bench_bridge.py), else big weights in another form
    (and always GGUF blocks) are expanded CPU_CHUNK_ELEMENTS rows' worth at a time.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.scale_weight: torch.Tensor | None = None
        self.patches: list = []
        self.quant = None

    def compute_weight(self, dtype: torch.dtype, device: torch.device | None = None,
                       buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The [out, in] weight in `dtype` (dequantized, scaled), on `device` (default: where it is stored;
        packed weights move packed and are dequantized there). With a `buffer` (a CPU tensor of `dtype` and at
        least out x in elements, see `_step_buffer`), written into it, CPU_CHUNK_ELEMENTS rows' worth at a time
        for packed formats (their dequantizers' temporaries stay small)."""
        if buffer is not None:
            return self._computed_into(buffer[: self.out_features * self.in_features].view(self.out_features, -1))
        w = self.weight if device is None else self.weight.to(device, non_blocking=True)
        if self.quant is not None:
            return self.quant.dequantize(w.detach(), dtype, self)  # the stored bytes (quant.PackedParameter)
        return self._scaled(w.to(dtype))

    def _computed_into(self, out: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            out.copy_(self.weight.detach())
            return out if self.scale_weight is None else out.mul_(self.scale_weight.to(dtype=out.dtype))
        rows = max(1, CPU_CHUNK_ELEMENTS // self.in_features)
        for r in range(0, self.out_features, rows):
            stop = min(r + rows, self.out_features)
            out[r:stop].copy_(self.quant.dequantize_rows(self.weight.detach()[r:stop], out.dtype))
        return out

    def _rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:stop of the weight in `dtype` (row-wise formats: plain, scaled fp8, GGUF blocks)."""
        if self.quant is not None:
            return self.quant.dequantize_rows(self.weight[start:stop], dtype)
        return self._scaled(self.weight[start:stop].to(dtype))

    def _scaled(self, w: torch.Tensor) -> torch.Tensor:
        """w (the stored weight or rows of it, cast) times the fp8 dequantisation factor, when there is one."""
        if self.scale_weight is None:
            return w
        return w * self.scale_weight.to(device=w.device, dtype=w.dtype)

    def _chunk_rows(self, x: torch.Tensor) -> int:
        """Rows per chunk for the CPU path, 0 when the whole weight is used at once: on another device, when
        the weight is small or already in the compute dtype, for formats dequantized as a whole (nvfp4,
        mxfp8), under autograd, and inside torch.compile (the compiled graph gets the plain F.linear)."""
        w = self.weight
        if x.device.type != "cpu" or torch.is_grad_enabled() or self.out_features * self.in_features <= CPU_CHUNK_ELEMENTS:
            return 0
        if torch.compiler.is_compiling():
            return 0
        if self.quant is None and w.dtype == x.dtype and self.scale_weight is None:
            return 0
        if self.quant is not None and not hasattr(self.quant, "dequantize_rows"):
            return 0
        return max(1, CPU_CHUNK_ELEMENTS // self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._product(x)
        for patch in self.patches:
            y = patch(x, y)
        return y

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b of the stored weight (before the runtime patches)."""
        if self._recomputes(x):
            return self._recomputed_product(x)
        if self.weight_function or self.bias_function or self.weight.device != x.device:
            return self._host_product(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = None
        if self.quant is None and x.device.type == "cpu":
            w = _cast_into_workspace(self.weight, x.dtype)  # valid until the next cast: used at once
            if w is not None and self.scale_weight is not None:
                w.mul_(self.scale_weight.to(dtype=x.dtype))
        if w is not None:
            y = linear(x, w, bias)
        elif rows := self._chunk_rows(x):
            x2 = x.reshape(-1, self.in_features)
            y = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
            y2 = y.view(-1, self.out_features)
            dnn = _use_onednn(x2, self.out_features * self.in_features)
            for r in range(0, self.out_features, rows):
                w = self._rows(r, min(r + rows, self.out_features), x.dtype)
                b, out = None if bias is None else bias[r:r + w.shape[0]], y2[:, r:r + w.shape[0]]
                if dnn:
                    out.copy_(_onednn_linear(x2, w, b))
                elif b is None:
                    torch.mm(x2, w.t(), out=out)
                else:
                    torch.addmm(b, x2, w.t(), out=out)
        else:
            y = linear(x, self.compute_weight(x.dtype), bias)
        return y

    def _call_weight(self, x: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as this call uses it: computed on x's device in x's dtype, ComfyUI's patch functions
        applied (see HostCast). Functions that are modules (TrainLoraNode's adapters, which compute a new
        tensor) get the stored weight itself when it already is in x's dtype, not a copy (a full-size copy per
        call, three calls per layer per training step); others (LowVramPatch, which patches in place) a copy.
        A `buffer` (`_step_buffer`) receives a weight that is computed (not the stored one)."""
        w = self.compute_weight(x.dtype, x.device, buffer)
        if self.weight_function:
            stored = w.untyped_storage().data_ptr() == self.weight.untyped_storage().data_ptr()
            if stored and not all(isinstance(f, nn.Module) for f in self.weight_function):
                w = w.clone()  # the functions may update it in place; the stored weight must stay as loaded
            # A weight loaded under inference mode (a ComfyUI server loads in it) has no version counter, and
            # torch itself refuses an in-place change to it outside inference mode.
            version = None if self.weight.is_inference() else self.weight._version
            for f in self.weight_function:
                w = f(w)
                if version is not None and self.weight._version != version:
                    raise RuntimeError(
                        f"Linear weight function {type(f).__name__} changed the stored weight in place; weight "
                        f"functions that are modules (the training adapters of ComfyUI's TrainLoraNode) get the "
                        f"stored weight itself and must return a new tensor.")
        return w

    def _host_product(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self._host_param(self.bias, x, self.bias_function)
        return linear(x, self._call_weight(x), bias)

    def _trained(self) -> list[torch.Tensor]:
        """The tensors that need a gradient among those the call's weight is computed from: the parameters of
        the weight functions that are modules (ComfyUI's training adapters, TrainLoraNode; its LowVramPatch
        functions hold fixed patches)."""
        return [p for f in self.weight_function if isinstance(f, nn.Module) for p in f.parameters() if p.requires_grad]

    def _recomputes(self, x: torch.Tensor) -> bool:
        """Whether this call records a weight computed for it (dequantized, cast, patched) for backward, which
        `_RecomputedWeightLinear` computes again there instead of keeping (training on our MODEL)."""
        if not torch.is_grad_enabled() or torch.compiler.is_compiling() or self.weight.requires_grad:
            return False
        computed = (self.weight_function or self.quant is not None or self.scale_weight is not None
                    or self.weight.dtype != x.dtype or self.weight.device != x.device)
        return bool(computed) and (x.requires_grad or bool(self._trained()))

    def _recomputed_product(self, x: torch.Tensor) -> torch.Tensor:
        y = _RecomputedWeightLinear.apply(x, self, *self._trained())
        if self.bias is None:
            return y
        return y + self._host_param(self.bias, x, self.bias_function).to(y.dtype)  # F.linear's output dtype


class RMSNorm(HostCast, nn.Module):
    """RMSNorm with the mean square in fp32 (diffusers' variant of the reference norm).

    Besides the plain norm it offers the two fused forms the S3-DiT blocks need, each one pass fewer
    over the activations than norm-then-multiply: `modulated` (x normalised times weight*scale) and
    `gated_residual` (residual + gate * norm(y)).

    `patches` is a list of callables `patch(w) -> w'` applied in order to the weight as computed for the call
    (a LoRA file's `.diff` of this norm adds `scale * d`); the stored weight is never modified.
    """

    bias = None  # ComfyUI's loader asks every layer that speaks HostCast for its bias

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.patches: list = []

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x), without the weight, in x's dtype (the mean square is taken in fp32)."""
        xf = x.float()
        ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square() / x.shape[-1]  # [..., 1]
        return (xf * (ms + self.eps).rsqrt()).to(x.dtype)

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        w = self._host_param(self.weight, x, self.weight_function)
        for patch in self.patches:
            w = patch(w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(x).mul_(self._weight(x))

    def modulated(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """norm(x) * scale, scale broadcasting over tokens (e.g. [B, 1, D] = 1 + adaLN scale)."""
        return self.normalized(x).mul_(self._weight(x) * scale)

    def gated_residual(self, residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """residual + gate * norm(y), gate broadcasting over tokens."""
        return torch.addcmul(residual, self.normalized(y), self._weight(y) * gate)


class Embedding(nn.Embedding):
    """`nn.Embedding` whose table stays as stored (bf16, fp8, or packed quantized rows with `quant` set): only
    the looked-up rows are cast / dequantized, into `compute_dtype` (set `_compute_dtype`; default: the
    table's own dtype)."""

    quant = None
    _compute_dtype: torch.dtype | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute_dtype or self.weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            return super().forward(ids).to(self.compute_dtype)
        return self.quant.dequantize_rows(F.embedding(ids, self.weight), self.compute_dtype)
