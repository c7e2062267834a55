"""OFT (Qiu et al., 2023; LyCORIS `DiagOFT`): `oft_blocks` B [k, n, n] with k * n = out rows; per block the
Cayley rotation R = (I + Q)(I - Q)^-1 of Q = B - B^T (Q rescaled to norm alpha when alpha > 0 and
||Q|| > alpha: alpha is a constraint, not a scale), W' = rescale * blockdiag(R_k)^T W (the optional
`rescale` [out, 1] as LyCORIS stores it). The strength s interpolates the rotation, R_s = s R + (1 - s) I,
so W'(s) - W is linear in s. Needs the base weight.
"""

from __future__ import annotations

import torch

from .adapter import Adapter, Target
from .tensors import cayley, constrained_skew

SLOTS = ("oft_blocks", "rescale")


class OFT(Adapter):
    kind = "OFT"
    needs_base = True

    def __init__(self, target: Target, keys: list[str], blocks: torch.Tensor, alpha: float | None,
                 rescale: torch.Tensor | None):
        super().__init__(target, keys)
        self.blocks, self.alpha, self.rescale = blocks, alpha, rescale

    def shape(self):
        return None  # rows = k * n; the input width is the module's

    def fits(self, rows, in_features):
        k, n, _ = self.blocks.shape
        return k * n == rows and (self.rescale is None or self.rescale.numel() == rows)

    def delta(self, w):
        k, n, _ = self.blocks.shape
        r = cayley(constrained_skew(self.blocks, self.alpha))  # [k, n, n]
        rotated = torch.einsum("k n m, k n i -> k m i", r, w.reshape(k, n, -1)).reshape(w.shape)
        if self.rescale is not None:
            rotated = rotated * self.rescale.float().reshape(-1, 1)
        return rotated - w


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> OFT | None:
    blocks = slots.get("oft_blocks")
    if blocks is None or blocks.ndim != 3:
        return None
    if blocks.shape[1] != blocks.shape[2]:
        raise ValueError(f"oft_blocks {tuple(blocks.shape)} is not [blocks, size, size]")
    return OFT(target, keys, blocks, alpha, slots.get("rescale"))
