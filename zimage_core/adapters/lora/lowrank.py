"""LoRA (Hu et al., 2021): delta = (alpha / rank) * B @ A, alpha absent -> 1.

Keys: `.lora_A[.<adapter>].weight` / `.lora_B[...]` (diffusers / PEFT), `.lora_down.weight` / `.lora_up.weight`
(kohya, ComfyUI), `.lora.down.weight` / `.lora.up.weight` (dot style); kohya conv-shaped [r, in, 1, 1] factors
are accepted. At run time y += s * (x @ A.T) @ B.T, never building B @ A.
"""

from __future__ import annotations

import torch

from .adapter import Adapter, Target
from .tensors import matrix

SLOTS = ("A", "B")


class LoRA(Adapter):
    kind = "LoRA"

    def __init__(self, target: Target, keys: list[str], a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__(target, keys)
        self.a, self.b, self.scale = a, b, scale  # A [r, in], B [out, r]

    def shape(self):
        return (self.b.shape[0], self.a.shape[1])

    def delta(self, w):
        return (self.b.float() @ self.a.float()) * self.scale

    def runtime(self, w, strength):
        return self

    def tensors(self):
        return (self.a, self.b)

    def apply(self, x, tensors, strength):
        a, b = tensors
        return ((x @ a.T) * (strength * self.scale)) @ b.T


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> LoRA | None:
    if "A" not in slots and "B" not in slots:
        return None
    if "A" not in slots or "B" not in slots:
        raise ValueError("has only one half of a LoRA (down/A or up/B)")
    a, b = matrix(slots["A"]), matrix(slots["B"])
    if a.shape[0] != b.shape[1]:
        raise ValueError(f"down {tuple(a.shape)} and up {tuple(b.shape)} ranks differ")
    return LoRA(target, keys, a, b, 1.0 if alpha is None else alpha / a.shape[0])
