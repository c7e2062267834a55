"""BOFT (Liu et al., 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization"; LyCORIS
`ButterflyOFT`): `oft_blocks` B [m, k, b, b] holds m butterfly stages of k orthogonal b x b blocks
(k * b = out rows). Each stage i rotates the rows of W with blockdiag(R_i) after the butterfly permutation
P_i that pairs rows 2^i * b / 2 apart, then undoes it:

    W' = rescale * M_{m-1} ... M_1 M_0 W,    M_i = P_i^T blockdiag(R_i1 .. R_ik) P_i,
    R = Cayley(Q) = (I + Q)(I - Q)^-1,  Q = B - B^T  (rescaled to norm alpha when alpha > 0 and ||Q|| > alpha)

P_i: split the rows into groups of 2 g (g = 2^i * b / 2); row (group, half h, j) of W becomes row
(group, j, h), i.e. the rows g apart are put next to each other, and blocks of b consecutive rows are rotated.
As in LyCORIS the strength s interpolates every stage's rotation, R_i(s) = s R_i + (1 - s) I, so the delta
is not linear in s (it is computed at the patch's strength). Needs the base weight.
"""

from __future__ import annotations

import torch

from .adapter import Dense, Target
from .oft import OFT
from .tensors import cayley, constrained_skew

SLOTS = ("oft_blocks", "rescale")


class BOFT(OFT):
    kind = "BOFT"

    def fits(self, rows, in_features):
        m, k, b, _ = self.blocks.shape
        return k * b == rows and rows % (2 ** m * (b // 2)) == 0 and (
            self.rescale is None or self.rescale.numel() == rows)

    def delta_at(self, w, strength):
        m, k, b, _ = self.blocks.shape
        r = cayley(constrained_skew(self.blocks, self.alpha))  # [m, k, b, b]
        eye = torch.eye(b)
        out = w
        for i in range(m):
            g = 2 ** i * (b // 2)
            ri = r[i] * strength + (1 - strength) * eye
            x = out.unflatten(0, (-1, 2, g)).transpose(1, 2).flatten(0, 2)  # P_i W
            x = torch.einsum("k i j, k j c -> k i c", ri, x.unflatten(0, (k, b))).flatten(0, 1)
            out = x.unflatten(0, (-1, g, 2)).transpose(1, 2).flatten(0, 2)  # P_i^T
        if self.rescale is not None:
            out = out * self.rescale.float().reshape(-1, 1)
        return out - w

    def delta(self, w):
        return self.delta_at(w, 1.0)

    def runtime(self, w, strength):
        return Dense(self.target, self.keys, self.delta_at(w, strength), fixed=True)


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> BOFT | None:
    blocks = slots.get("oft_blocks")
    if blocks is None or blocks.ndim != 4:
        return None
    if blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
        raise ValueError(f"oft_blocks {tuple(blocks.shape)} is not [stages, blocks, size, size] with an even size")
    return BOFT(target, keys, blocks, alpha, slots.get("rescale"))
