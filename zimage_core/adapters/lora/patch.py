"""Applying parsed adapters: `LoraPatch` (runtime output patches on each targeted Linear, the `patching`
protocol) and the merge path (`merged_copy`, `merge_lora`: the deltas folded into the weights).

At run time every targeted Linear gets one hook per LoRA file that adds, in the activation dtype,

    y[..., rows] += adapter.apply(x)          (rows: q/k/v thirds of a fused qkv, or all rows)

base weights untouched; several files stack; `with_strength` makes a new patch sharing the tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import InputError
from ...model.dit_loader import FP8_DTYPES
from ...model.transformer import ZImageDiT
from ...weights.ops import Linear, RMSNorm
from .adapter import Adapter


@dataclass
class LoraReport:
    path: str
    modules_patched: int = 0  # distinct Linear modules that receive a delta
    adapters: int = 0  # adapter entries used (q, k, v of one block count 3)
    unused: list[str] = field(default_factory=list)  # every key of the file that is not applied
    notes: list[str] = field(default_factory=list)  # why some keys are unused (duplicates, missing halves)
    styles: set[str] = field(default_factory=set)  # key styles and adapter kinds found

    def summary(self) -> str:
        s = f"{Path(self.path).name}: {self.modules_patched} modules patched ({self.adapters} adapters"
        s += f", {', '.join(sorted(self.styles))})" if self.styles else ")"
        if self.unused:
            s += f"; {len(self.unused)} unused key(s): {', '.join(self.unused[:10])}"
            s += " ..." if len(self.unused) > 10 else ""
        return s


def base_rows(m: Linear, part: int | None) -> torch.Tensor:
    """The module's weight rows an adapter acts on, fp32 (dequantized / fp8 scale applied)."""
    w = m.compute_weight(torch.float32)
    if part is None:
        return w
    rows = m.out_features // 3
    return w[part * rows:(part + 1) * rows]


def _base(a: Adapter, m: Linear) -> torch.Tensor | None:
    return base_rows(m, a.target.part) if a.needs_base else None


class _ModuleHook:
    """The callable put on `Linear.patches` for one LoRA file and one module."""

    def __init__(self, owner: LoraPatch, adapters: list[Adapter], out_features: int, dtype, device):
        self.owner = owner
        self.adapters = adapters
        self.rows = out_features // 3
        self.cast = {}
        self._cast(dtype, device)

    def _cast(self, dtype, device):
        key = (dtype, device)
        if key not in self.cast:
            self.cast[key] = [tuple(t.to(device=device, dtype=dtype) for t in a.tensors()) for a in self.adapters]
        return self.cast[key]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tensors = self._cast(x.dtype, x.device)
        s = float(self.owner.strength)
        parts: list[torch.Tensor | None] = [None, None, None]
        for a, ts in zip(self.adapters, tensors):
            d = a.apply(x, ts, s)
            if a.target.part is None:
                y = y + d
            else:
                i = a.target.part
                parts[i] = d if parts[i] is None else parts[i] + d
        if any(p is not None for p in parts):
            pieces = y.split(self.rows, dim=-1)
            y = torch.cat([p if d is None else p + d for p, d in zip(pieces, parts)], dim=-1)
        return y


class _NormHook:
    """The callable put on `RMSNorm.patches` for one LoRA file's `.diff` of that norm: w + s d."""

    def __init__(self, owner: LoraPatch, d: torch.Tensor):
        self.owner, self.d, self.cast = owner, d, {}

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.dtype, w.device)
        if key not in self.cast:
            self.cast[key] = self.d.to(device=w.device, dtype=w.dtype)
        return w + self.cast[key] * float(self.owner.strength)


class LoraPatch:
    """A parsed adapter file at a strength; a patch for `PatchedDiT` (install/uninstall runtime hooks)."""

    def __init__(self, adapters: list[Adapter], report: LoraReport, strength: float = 1.0, name: str = ""):
        self.adapters = adapters
        self.report = report
        self.strength = float(strength)
        self.name = name or Path(report.path).name
        self._installed: dict[int, list[tuple[Linear, _ModuleHook]]] = {}

    def __repr__(self) -> str:
        return f"LoraPatch({self.name!r}, strength={self.strength}, modules={self.report.modules_patched})"

    def with_strength(self, strength: float) -> LoraPatch:
        """Same adapter tensors (shared, not copied), another strength."""
        return LoraPatch(self.adapters, self.report, strength, self.name)

    def by_module(self) -> dict[str, list[Adapter]]:
        out: dict[str, list[Adapter]] = {}
        for a in self.adapters:
            out.setdefault(a.target.module, []).append(a)
        return out

    def install(self, dit: ZImageDiT) -> None:
        if self.strength == 0.0:  # strength 0: nothing installed, output bit-identical to the base model
            return
        hooks = []
        for name, adapters in self.by_module().items():
            m = dit.get_submodule(name)
            if adapters[0].norm:  # one `.diff` per norm
                hook = _NormHook(self, adapters[0].d)
                m.patches.append(hook)
                hooks.append((m, hook))
                continue
            adapters = [a.runtime(_base(a, m), self.strength) for a in adapters]
            hook = _ModuleHook(self, adapters, m.out_features, dit.compute_dtype, m.weight.device)
            m.patches.append(hook)
            hooks.append((m, hook))
        self._installed.setdefault(id(dit), []).extend(hooks)

    def uninstall(self, dit: ZImageDiT) -> None:
        for m, hook in self._installed.pop(id(dit), []):
            m.patches[:] = [p for p in m.patches if p is not hook]

    def delta_weights(self, dit: ZImageDiT) -> dict[str, torch.Tensor]:
        """module name -> fp32 full-size weight delta at this patch's strength."""
        out = {}
        for name, adapters in self.by_module().items():
            m = dit.get_submodule(name)
            weight = [a for a in adapters if not a.bias and not a.norm]
            if not weight:
                continue
            d = torch.zeros(m.out_features, m.in_features, dtype=torch.float32)
            rows = m.out_features // 3
            for a in weight:
                p = a.target.part
                sl = slice(None) if p is None else slice(p * rows, (p + 1) * rows)
                d[sl] += a.delta_at(_base(a, m), self.strength).to(d.device)
            out[name] = d
        return out

    def delta_norms(self) -> dict[str, torch.Tensor]:
        """RMSNorm name -> fp32 weight delta [dim] at this patch's strength (`.diff` of a norm)."""
        return {a.target.module: a.delta_at(None, self.strength) for a in self.adapters if a.norm}

    def delta_biases(self, dit: ZImageDiT) -> dict[str, torch.Tensor]:
        """module name -> fp32 bias delta [out] at this patch's strength (`.diff_b` patches)."""
        out = {}
        for a in self.adapters:
            if not a.bias:
                continue
            m = dit.get_submodule(a.target.module)
            d = out.setdefault(a.target.module, torch.zeros(m.out_features))
            rows = m.out_features // 3
            p = a.target.part
            d[slice(None) if p is None else slice(p * rows, (p + 1) * rows)] += a.delta_at(None, self.strength)
        return out


# ------------------------------------------------------------------------------------------------ merging

def _check_mergeable(m: Linear, name: str) -> None:
    if m.quant is not None:
        raise InputError(
            f"cannot merge a LoRA into {name}: its weight is stored quantized ({m.quant.describe()}); use the "
            "runtime patch (the default, computed on the dequantized weight in the activation dtype).")
    if m.weight.dtype in FP8_DTYPES or m.scale_weight is not None:
        raise InputError(
            f"cannot merge a LoRA into {name}: its weight is stored as fp8 ({m.weight.dtype}). Re-quantising the "
            "merged weight to fp8 would lose most of the LoRA's small delta; use the runtime patch (the default, "
            "computed in the activation dtype) or load the DiT as bf16/fp16 to merge.")


def _merged_weight(m: Linear, delta: torch.Tensor) -> torch.nn.Parameter:
    # fp32 sum, rounded once to the storage dtype (bf16/fp16: one rounding of W + delta per element,
    # i.e. the merged model differs from the runtime patch by <= half an ulp of the storage dtype per weight)
    w = (m.weight.float() + delta.to(m.weight.device)).to(m.weight.dtype)
    return torch.nn.Parameter(w, requires_grad=False)


def _merged_bias(m: Linear, delta: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter((m.bias.float() + delta.to(m.bias.device)).to(m.bias.dtype), requires_grad=False)


def _merged_norm(m: RMSNorm, delta: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter((m.weight.float() + delta.to(m.weight.device)).to(m.weight.dtype), requires_grad=False)


def merged_copy(dit: ZImageDiT, patches: LoraPatch | list[LoraPatch]) -> ZImageDiT:
    """A new DiT with the LoRA(s) merged into the weights; untouched tensors are shared with `dit`,
    which stays unchanged. Refuses fp8-stored weights (see `_check_mergeable`)."""
    patches = [patches] if isinstance(patches, LoraPatch) else list(patches)
    deltas: dict[str, torch.Tensor] = {}
    for p in patches:
        for name, d in p.delta_weights(dit).items():
            _check_mergeable(dit.get_submodule(name), name)
            deltas[name] = deltas[name] + d if name in deltas else d
    memo = {id(t): t for t in list(dit.parameters()) + list(dit.buffers())}
    memo.update({id(t): t for v in dit._rope_cache.values() for t in v})
    for m in dit.modules():
        if isinstance(m, RMSNorm):
            memo[id(m.patches)] = []
        if isinstance(m, Linear):
            memo[id(m.patches)] = []  # runtime patches of the source are not carried over
            if m.scale_weight is not None:
                memo[id(m.scale_weight)] = m.scale_weight
    new = copy.deepcopy(dit, memo)
    for name, d in deltas.items():
        m = new.get_submodule(name)
        m.weight = _merged_weight(m, d)
    for p in patches:
        for name, d in p.delta_biases(dit).items():
            m = new.get_submodule(name)
            m.bias = _merged_bias(m, d)
        for name, d in p.delta_norms().items():
            m = new.get_submodule(name)
            m.weight = _merged_norm(m, d)
    return new


def merge_lora(dit: ZImageDiT, patch: LoraPatch) -> Callable[[], None]:
    """Merge in place; returns `unmerge()`, which restores the original weight tensors exactly."""
    saved = {}
    deltas = patch.delta_weights(dit)
    for name in deltas:
        _check_mergeable(dit.get_submodule(name), name)
    for name, d in deltas.items():
        m = dit.get_submodule(name)
        saved[(name, "weight")] = m.weight
        m.weight = _merged_weight(m, d)
    for name, d in patch.delta_biases(dit).items():
        m = dit.get_submodule(name)
        saved[(name, "bias")] = m.bias
        m.bias = _merged_bias(m, d)
    for name, d in patch.delta_norms().items():
        m = dit.get_submodule(name)
        saved[(name, "weight")] = m.weight
        m.weight = _merged_norm(m, d)

    def unmerge():
        for (name, attr), w in saved.items():
            setattr(dit.get_submodule(name), attr, w)
        saved.clear()

    return unmerge
