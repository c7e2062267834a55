"""Optional `torch.compile` of the DiT's transformer blocks, as a patch (see patching.py).

Each block's forward is compiled once per patch object and shape set, and installed only for the runs
that use the patch: the shared module is never changed for other users of the same loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..weights.offload import blocks_by_priority

MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass(eq=False)
class TorchCompile:
    """Compile every transformer block (the embedders and glue code stay eager: they are cheap)."""

    mode: str = "default"
    dynamic: bool = False
    backend: str = "inductor"
    _compiled: dict = field(default_factory=dict, repr=False)  # id(block) -> compiled forward

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"torch.compile mode '{self.mode}' is not one of {', '.join(MODES)}.")

    def install(self, dit) -> None:
        for blk in blocks_by_priority(dit):
            fn = self._compiled.get(id(blk))
            if fn is None:
                fn = torch.compile(blk.forward, mode=self.mode, dynamic=self.dynamic, backend=self.backend)
                self._compiled[id(blk)] = fn
            blk.forward = fn  # an instance attribute shadows the class method

    def uninstall(self, dit) -> None:
        for blk in blocks_by_priority(dit):
            blk.__dict__.pop("forward", None)
