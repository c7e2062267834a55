"""DoRA (Liu et al., 2024) on any weight delta (LoRA, LoHa, LoKr, diff, ...), as the trainers compute it:

    W' = m * (W + dW) / ||W + dW||

with the norm per output row (PEFT's `lora_magnitude_vector`, m [out] or [out, 1]) or per input column
(LyCORIS with wd_on_out=False, m [1, in]). The strength scales W' - W linearly (0 = base model, 1 = the
trained W'). ComfyUI's `weight_decompose` divides by ||W|| instead of ||W + dW|| on the output axis; on the
input axis both agree (README, "LoRA").
"""

from __future__ import annotations

import torch

from .adapter import Adapter
from .tensors import matrix


class DoRA(Adapter):
    kind = "DoRA"
    needs_base = True

    def __init__(self, inner: Adapter, magnitude: torch.Tensor):
        super().__init__(inner.target, inner.keys)
        self.inner = inner
        self.m = matrix(magnitude) if magnitude.ndim > 1 else magnitude
        rows_in = inner.shape()
        if rows_in is not None and self.m.numel() not in rows_in:
            raise ValueError(f"dora_scale {tuple(self.m.shape)} fits neither axis of {rows_in}")

    def shape(self):
        return self.inner.shape()

    def fits(self, rows, in_features):
        return self.inner.fits(rows, in_features)

    def on_input_axis(self, rows: int) -> bool:
        return self.m.ndim == 2 and self.m.shape[0] == 1 and rows != 1

    def delta(self, w):
        wc = w + self.inner.delta(w if self.inner.needs_base else None)
        if self.on_input_axis(w.shape[0]):
            norm, m = wc.norm(dim=0, keepdim=True), self.m.float().reshape(1, -1)
        else:
            norm, m = wc.norm(dim=1, keepdim=True), self.m.float().reshape(-1, 1)
        return wc * (m / (norm + torch.finfo(torch.float32).eps)) - w
