"""Full patches (ComfyUI's `.diff` / `.diff_b` / `.set_weight`, e.g. from model-difference extraction):
`.diff` D: W' = W + s D; `.diff_b` d: b' = b + s d (modules with a bias only); `.set_weight` S: W' = W + s (S - W)."""

from __future__ import annotations

import torch

from .adapter import Adapter, Dense, Target
from .tensors import matrix

SLOTS = ("diff", "diff_b", "set_weight")


class Diff(Dense):
    """`.diff` D: a dense delta, y += s * x @ D.T."""

    kind = "full diff"


class BiasDiff(Dense):
    """`.diff_b` d [rows]: y += s * d."""

    kind = "bias diff"
    bias = True

    def apply(self, x, tensors, strength):
        (d,) = tensors
        return (d * strength).expand(*x.shape[:-1], d.shape[0])


class NormDiff(Adapter):
    """`.diff` d [dim] of an RMSNorm's weight (ComfyUI's TrainLoraNode trains one for every norm): w' = w + s d."""

    kind = "norm diff"
    norm = True

    def __init__(self, target: Target, keys: list[str], d: torch.Tensor):
        super().__init__(target, keys)
        self.d = d

    def shape(self):
        return tuple(self.d.shape)

    def delta(self, w):
        return self.d.float()

    def runtime(self, w, strength):
        return self

    def tensors(self):
        return (self.d,)


class SetWeight(Adapter):
    kind = "set_weight"
    needs_base = True

    def __init__(self, target: Target, keys: list[str], s: torch.Tensor):
        super().__init__(target, keys)
        self.s = s

    def shape(self):
        return tuple(self.s.shape)

    def delta(self, w):
        return self.s.float() - w


def from_slots(target: Target, slots: dict, alpha: float | None, keys: list[str]) -> Adapter | None:
    if "diff_b" in slots:
        return BiasDiff(target, keys, slots["diff_b"].float().reshape(-1))
    if "set_weight" in slots:
        return SetWeight(target, keys, matrix(slots["set_weight"]))
    if "diff" in slots:
        return Diff(target, keys, matrix(slots["diff"]))
    return None
