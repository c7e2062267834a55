"""LoKr (LyCORIS): delta = kron(w1, w2), each factor stored whole (`lokr_w1`) or factorised
(`lokr_w1_a @ lokr_w1_b`; w2 also with a Tucker core `lokr_t2`, as for LoHa). Scaled by alpha / (rank of
the factorised part) when a part is factorised and alpha is given, else 1 (LyCORIS / ComfyUI convention). At
run time x @ kron(w1, w2).T is computed as w1 @ X @ w2.T with X = x reshaped [.., b1, b2], never building the
Kronecker product.
"""

from __future__ import annotations

import torch

from .adapter import Adapter, Target
from .tensors import matrix

SLOTS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


class LoKr(Adapter):
    kind = "LoKr"

    def __init__(self, target: Target, keys: list[str], w1: torch.Tensor, w2: torch.Tensor, scale: float):
        super().__init__(target, keys)
        self.w1, self.w2, self.scale = w1, w2, scale  # w1 [a1, b1], w2 [a2, b2]

    def shape(self):
        return (self.w1.shape[0] * self.w2.shape[0], self.w1.shape[1] * self.w2.shape[1])

    def delta(self, w):
        return torch.kron(self.w1.float(), self.w2.float()) * self.scale

    def runtime(self, w, strength):
        return self

    def tensors(self):
        return (self.w1, self.w2)

    def apply(self, x, tensors, strength):
        w1, w2 = tensors
        (a1, b1), (a2, b2) = w1.shape, w2.shape
        xr = x.reshape(*x.shape[:-1], b1, b2)
        return (w1 @ xr @ w2.T).reshape(*x.shape[:-1], a1 * a2) * (strength * self.scale)


def _factor(lk: dict, i: int) -> tuple[torch.Tensor, int | None]:
    if f"lokr_w{i}" in lk:
        return lk[f"lokr_w{i}"], None
    if f"lokr_w{i}_a" in lk and f"lokr_w{i}_b" in lk:
        a, b = lk[f"lokr_w{i}_a"].float(), lk[f"lokr_w{i}_b"].float()
        t = lk.get(f"lokr_t{i}")
        if t is not None:  # Tucker core (LyCORIS): W[p, q] = sum_ij t[i, j] a[i, p] b[j, q]
            return torch.einsum("i j ..., j r, i p -> p r ...", t.float(), b.flatten(1), a), b.shape[0]
        return a @ b, b.shape[0]
    raise ValueError(f"LoKr without w{i}")


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> LoKr | None:
    lk = {k: v for k, v in slots.items() if k.startswith("lokr")}
    if not lk:
        return None
    w1, dim1 = _factor(lk, 1)
    w2, dim2 = _factor(lk, 2)
    dim = dim2 if dim2 is not None else dim1
    scale = alpha / dim if (alpha is not None and dim is not None) else 1.0
    return LoKr(target, keys, matrix(w1), matrix(w2), scale)
