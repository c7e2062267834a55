"""3-axis rotary position embedding of the S3-DiT (theta 256, interleaved pairs).

Each token has a position id (axis0, axis1, axis2): caption tokens (k, 0, 0) for k = 1..Lp, image
tokens (Lp + 1 + f, h, w), padding tokens (0, 0, 0). Head dims are split per axis (32/48/48 in the real
model) and each adjacent pair (x[2j], x[2j+1]) is rotated by angle pos * theta^(-2j/d_axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImagePositions:
    """Where the image tokens sit on the (h, w) rotary axes: row i, column j -> (i * scale_y + shift_y,
    j * scale_x + shift_x), computed in float32. The identity by default; ComfyUI's `rope_options` (ScaleROPE)
    set the four numbers. Caption positions and the image's axis-0 position are never changed."""

    scale_y: float = 1.0
    shift_y: float = 0.0
    scale_x: float = 1.0
    shift_x: float = 0.0

    def grid(self, ht: int, wt: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column positions [ht, wt] (float32) of an ht x wt token grid."""
        h = torch.arange(ht, dtype=torch.float32, device=device) * self.scale_y + self.shift_y
        w = torch.arange(wt, dtype=torch.float32, device=device) * self.scale_x + self.shift_x
        return torch.meshgrid(h, w, indexing="ij")


def axes_dims_for(head_dim: int) -> tuple[int, int, int]:
    """Per-axis rotary dims for a head size: (32, 48, 48) for the real 128, same proportions otherwise."""
    if head_dim % 16:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 16 to split into 3 rotary axes (1/4, 3/8, 3/8).")
    return (head_dim // 4, head_dim * 3 // 8, head_dim * 3 // 8)


def rope_angles(pos_ids: torch.Tensor, axes_dims: tuple[int, ...], theta: float) -> torch.Tensor:
    """Position ids [S, 3] (integers, or float32 for scaled image positions) -> rotations [S, head_dim / 2, 2] = (cos, sin) pairs, float32 (the memory
    layout of complex64 cos + i sin, so `apply_rope` views them as complex numbers at no cost).

    Angles are computed in float64 and rounded to float32, exactly like the reference's precomputed
    tables (`outer(arange(len), inv_freq).float()`), then cos and sin are taken in float32.
    """
    angles = []
    for axis, d in enumerate(axes_dims):
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos_ids.device) / d)
        angles.append((pos_ids[:, axis].to(torch.float64)[:, None] * inv_freq[None]).float())
    ang = torch.cat(angles, dim=-1)
    return torch.stack((ang.cos(), ang.sin()), dim=-1)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, S, H, D] by rot [B, S, D/2, 2] = (cos, sin): the pair (a, b) becomes
    (a cos - b sin, a sin + b cos), one complex multiply. Computed in fp32, returned in x's dtype."""
    if torch.compiler.is_compiling():  # inductor generates no code for complex ops: the same in real arithmetic
        xf = x.float().unflatten(-1, (-1, 2))
        a, b = xf[..., 0], xf[..., 1]
        c, s = rot[:, :, None, :, 0], rot[:, :, None, :, 1]
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).to(x.dtype)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # [B, S, H, D/2]
    return torch.view_as_real(pairs * torch.view_as_complex(rot)[:, :, None]).flatten(-2).to(x.dtype)
