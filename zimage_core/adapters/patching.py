"""A loaded DiT plus the patches to use with it, without ever modifying the shared module.

`PatchedDiT` is what ComfyUI's ZIMAGE_DIT carries: the shared `ZImageDiT` and an immutable tuple of
patches (LoRAs, adaLN controls). Adding a patch returns a new PatchedDiT (the input stays usable as it
was, like ComfyUI's ModelPatcher.clone()). `applied()` installs the patches on the module for the
duration of one sampling run and always removes them, also when the run is interrupted.

A patch is any object with:
    install(dit) -> None             put runtime hooks on the module (e.g. LoRA on Linear.patches)
    uninstall(dit) -> None           remove exactly what install added
    step_controls(step, sigma, n_steps) -> dict   extra kwargs for ZImageDiT.forward at a step
                                     (`mod_hook`, `adaln_t`), or {} (optional method)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ..model.transformer import ZImageDiT


@dataclass(frozen=True)
class PatchedDiT:
    dit: ZImageDiT
    patches: tuple = ()
    host: Any = field(default=None, compare=False)  # the ComfyUI ModelPatcher (or None standalone)

    def with_patch(self, patch) -> PatchedDiT:
        return PatchedDiT(self.dit, self.patches + (patch,), self.host)

    def hosts(self) -> list:
        """The ModelPatchers to load for a run: the DiT's and those of patches that bring a model (ControlNet)."""
        out = [self.host] + [getattr(p, "host", None) for p in self.patches]
        return [h for i, h in enumerate(out) if h is not None and h not in out[:i]]

    @contextlib.contextmanager
    def applied(self):
        done = []
        try:
            for p in self.patches:
                p.install(self.dit)
                done.append(p)
            yield self.dit
        finally:
            for p in reversed(done):
                p.uninstall(self.dit)
            streamer = getattr(self.dit, "block_streamer", None)
            if streamer is not None:  # give the streaming slots back between runs
                streamer.release()

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        """Merged per-step forward kwargs of all patches. Mod hooks and context transforms compose in patch
        order (two ConditioningVariance patches both apply), ControlNet steps add up (stacked controls);
        other entries (`adaln_t`): the last patch wins."""
        hooks, contexts, out = [], [], {}
        for p in self.patches:
            ctl = dict(p.step_controls(step, sigma, n_steps)) if hasattr(p, "step_controls") else {}
            if "mod_hook" in ctl:
                hooks.append(ctl.pop("mod_hook"))
            if "context" in ctl:
                contexts.append(ctl.pop("context"))
            if "control" in ctl and "control" in out:
                ctl["control"] = out["control"] + ctl["control"]
            out.update(ctl)
        if hooks:
            def mod_hook(stage, index, mod, hooks=tuple(hooks)):
                for h in hooks:
                    mod = h(stage, index, mod)
                return mod
            out["mod_hook"] = mod_hook
        if contexts:
            def context(ctx, contexts=tuple(contexts)):
                for c in contexts:
                    ctx = c(ctx) if callable(c) else c
                return ctx
            out["context"] = context
        return out
