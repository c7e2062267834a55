"""LoHa (LyCORIS, Hadamard product): delta = (w1_a @ w1_b) * (w2_a @ w2_b), scaled by alpha / rank with
rank = w1_b.shape[0] (alpha absent -> 1). With Tucker cores `hada_t1` / `hada_t2` each factor is
W_i[p, q] = sum_ab t_i[a, b] w_ia[a, p] w_ib[b, q]. Built dense once (the elementwise product has no cheaper
factorised form).
"""

from __future__ import annotations

import torch

from .adapter import Adapter, Target
from .tensors import matrix

SLOTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


class LoHa(Adapter):
    kind = "LoHa"

    def __init__(self, target: Target, keys: list[str], factors: dict[str, torch.Tensor], scale: float):
        super().__init__(target, keys)
        self.factors, self.scale = factors, scale

    def _factor(self, i: int) -> torch.Tensor:
        f = self.factors
        a, b = f[f"hada_w{i}_a"].float(), f[f"hada_w{i}_b"].float()  # [out, r], [r, in]; Tucker: [r, out], [r, in]
        t = f.get(f"hada_t{i}")
        if t is None:
            return matrix(a @ b.flatten(1))
        return matrix(torch.einsum("i j ..., j r, i p -> p r ...", t.float(), b.flatten(1), a))

    def shape(self):
        f = self.factors
        if "hada_t1" in f:
            return (f["hada_w1_a"].shape[1], f["hada_w1_b"].flatten(1).shape[1])
        return (f["hada_w1_a"].shape[0], f["hada_w1_b"].flatten(1).shape[1])

    def delta(self, w):
        return self._factor(1) * self._factor(2) * self.scale


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> LoHa | None:
    hd = {k: v for k, v in slots.items() if k.startswith("hada")}
    if not hd:
        return None
    missing = [n for n in SLOTS[:4] if n not in hd]
    if missing:
        raise ValueError(f"LoHa without {', '.join(missing)}")
    rank = hd["hada_w1_b"].shape[0]
    return LoHa(target, keys, hd, 1.0 if alpha is None else alpha / rank)
