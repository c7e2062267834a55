"""Small tensor helpers shared by the adapter kinds."""

from __future__ import annotations

import torch


def matrix(t: torch.Tensor) -> torch.Tensor:
    """A 2-D factor; kohya's conv-style [r, in, 1, 1] is squeezed."""
    while t.ndim > 2 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim != 2:
        raise ValueError(f"tensor of shape {tuple(t.shape)} is not a matrix")
    return t


def cayley(q: torch.Tensor) -> torch.Tensor:
    """R = (I + Q)(I - Q)^-1 for a batch of skew-symmetric Q [..., n, n] (an orthogonal R), in fp32."""
    q = q.float()
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    return (eye + q) @ torch.linalg.inv(eye - q)


def constrained_skew(blocks: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """Q = B - B^T over the last two axes, rescaled to Frobenius norm `alpha` (over all blocks) when alpha > 0
    and ||Q|| exceeds it (LyCORIS' OFT/BOFT constraint)."""
    q = blocks.float() - blocks.float().transpose(-1, -2)
    if alpha is not None and alpha > 0:
        qn = q.norm() + 1e-8
        if qn > alpha:
            q = q * (alpha / qn)
    return q
