"""The one interface every adapter kind implements, and the two forms a runtime patch takes.

An adapter is parsed from the keys of one module of the file (`from_slots` of its kind module) and acts on
the rows `target.part` of one `Linear` of the DiT. Every kind can give its fp32 weight delta at a strength
(`delta_at`, the merge path and the reference the tests check); at run time it becomes a `runtime` adapter
that adds its share to the Linear's output:

    y[..., rows] += apply(x)

Low-rank kinds (LoRA, LoKr, bias) stay factorised at run time; kinds whose delta needs the base weight
(GLoRA, OFT, BOFT, set_weight, DoRA) or is cheapest dense (LoHa, full diff) become a `Dense` delta once,
when the patch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Target:
    module: str  # native Linear name, e.g. layers.0.attention.qkv
    part: int | None  # 0/1/2 = q/k/v rows of a fused qkv, None = all rows
    diffusers: bool  # named with a diffusers alias (wins over a redundant native duplicate)


class Adapter:
    """One adapter of one kind on the rows `target.part` of one Linear.

    kind         the name reported to the user ("LoRA", "LoHa", ...)
    needs_base   its delta depends on the base weight W (then `delta` gets the base rows, fp32)
    bias         it patches the bias (a [rows] delta), not the weight
    norm         it patches the weight [dim] of an RMSNorm (`target.module`), not of a Linear
    """

    kind = "?"
    needs_base = False
    bias = False
    norm = False

    def __init__(self, target: Target, keys: list[str]):
        self.target = target
        self.keys = keys

    def shape(self) -> tuple[int, ...] | None:
        """The delta's shape, (rows, in) ((rows,) for a bias); None when only the module can tell (OFT)."""
        raise NotImplementedError

    def fits(self, rows: int, in_features: int) -> bool:
        want = (rows,) if self.bias else (rows, in_features)
        return self.shape() == want

    def delta(self, w: torch.Tensor | None) -> torch.Tensor:
        """fp32 delta at strength 1; `w` = the base rows [rows, in] (fp32) when `needs_base`."""
        raise NotImplementedError

    def delta_at(self, w: torch.Tensor | None, strength: float) -> torch.Tensor:
        """fp32 delta at `strength` (linear in the strength unless the kind says otherwise)."""
        return self.delta(w) * strength

    def runtime(self, w: torch.Tensor | None, strength: float) -> Adapter:
        """The form applied on the Linear's output at run time (`tensors` / `apply`)."""
        return Dense(self.target, self.keys, self.delta(w))

    # ---- runtime form (factorised kinds override these; everything else is Dense)
    def tensors(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, tensors: tuple[torch.Tensor, ...], strength: float) -> torch.Tensor:
        raise NotImplementedError


class Dense(Adapter):
    """A dense weight delta d [rows, in]: y += strength * x @ d.T. `fixed` = the strength is already in d
    (kinds whose delta is not linear in the strength, e.g. BOFT)."""

    kind = "dense"

    def __init__(self, target: Target, keys: list[str], d: torch.Tensor, fixed: bool = False):
        super().__init__(target, keys)
        self.d = d
        self.fixed = fixed

    def shape(self):
        return tuple(self.d.shape)

    def delta(self, w):
        return self.d.float()

    def runtime(self, w, strength):
        return self

    def tensors(self):
        return (self.d,)

    def apply(self, x, tensors, strength):
        (d,) = tensors
        y = x @ d.T
        return y if self.fixed else y * strength
