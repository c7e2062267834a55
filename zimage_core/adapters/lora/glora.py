"""GLoRA (LyCORIS' current layout): a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in];
delta = (W @ a1 @ a2 + b1 @ b2) * alpha / r (r = a2.shape[0]; alpha absent -> 1). Needs the base weight."""

from __future__ import annotations

from .adapter import Adapter, Target
from .tensors import matrix

SLOTS = ("a1", "a2", "b1", "b2")


class GLoRA(Adapter):
    kind = "GLoRA"
    needs_base = True

    def __init__(self, target: Target, keys: list[str], a1, a2, b1, b2, scale: float):
        super().__init__(target, keys)
        self.a1, self.a2, self.b1, self.b2, self.scale = a1, a2, b1, b2, scale

    def shape(self):
        return (self.b1.shape[0], self.b2.shape[1])

    def delta(self, w):
        return (w @ self.a1.float() @ self.a2.float() + self.b1.float() @ self.b2.float()) * self.scale


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> GLoRA | None:
    gl = {k: matrix(v) for k, v in slots.items() if k in SLOTS}
    if not gl:
        return None
    if len(gl) < 4:
        raise ValueError("GLoRA without all of a1, a2, b1, b2")
    a1, a2, b1, b2 = gl["a1"], gl["a2"], gl["b1"], gl["b2"]
    if not (a1.shape[0] == a2.shape[1] == b2.shape[1] and a1.shape[1] == a2.shape[0] and b1.shape[1] == b2.shape[0]):
        raise ValueError(f"GLoRA shapes a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, "
                         f"b2 {tuple(b2.shape)} are not the current LyCORIS layout (old GLoRA is not supported)")
    return GLoRA(target, keys, a1, a2, b1, b2, 1.0 if alpha is None else alpha / a2.shape[0])
