"""The module paths of the flat layout (before December 2026), kept importable for one release.

`import zimage_core.dit_loader` or `from zimage_core.ops import Linear` still work and give the module at its new
place (the same module object, so patching either name patches both), with a DeprecationWarning that names
the new path. The table is the README's "What moved" list. The programs run with `python -m` from their old
names through the four small files at the package's top (api_client, bench, bench_quant, gpu_check).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import runpy
import sys
import warnings

MOVED = {
    "checkpoint": "weights.checkpoint",
    "gguf": "weights.gguf",
    "quant": "weights.quant",
    "ops": "weights.ops",
    "offload": "weights.offload",
    "transformer": "model.transformer",
    "rope": "model.rope",
    "qwen3": "model.qwen3",
    "tokenizer": "model.tokenizer",
    "text_encoder": "model.text_encoder",
    "vae": "model.vae",
    "latent": "model.latent",
    "dit_loader": "model.dit_loader",
    "controlnet": "adapters.controlnet",
    "adaln": "adapters.adaln",
    "nag": "adapters.nag",
    "patching": "adapters.patching",
    "compile": "adapters.compile",
    "lora": "adapters.lora",
    "schedules": "sampling.schedules",
    "samplers": "sampling.samplers",
    "cli": "tools.cli",
    "bench_full": "tools.bench_full",
    "api_distributed": "client.distributed",
}
# `zimage_core.sampling` (the loop) is now the package of the same name, which re-exports the loop's names.
PACKAGE = __name__.rpartition(".")[0]


def new_name(old: str) -> str | None:
    """The new dotted name of an old one (`zimage_core.lora.keys` -> `zimage_core.adapters.lora.keys`), or None."""
    prefix = PACKAGE + "."
    if not old.startswith(prefix):
        return None
    head, dot, rest = old[len(prefix):].partition(".")
    if head not in MOVED:
        return None
    return prefix + MOVED[head] + dot + rest


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system gave the module the old name's spec (and nothing else): put its own back.
        module.__spec__ = self.spec


class MovedModules(importlib.abc.MetaPathFinder):
    """Answers the old names with the modules at their new places."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new} (zimage_core's layout of December 2026); the old name works "
                      f"for one release.", DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    # First in line: the path finder would otherwise load a second copy of `zimage_core.lora.keys` from the
    # new folder under the old name.
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())


def redirect(name: str, new: str) -> None:
    """The body of a program's file at its old place: `python -m zimage_core.<old>` runs the program at `new`
    (relative to the package) as `__main__`; an import of the old name gets the new module."""
    new = PACKAGE + "." + new
    if name == "__main__":
        warnings.warn(f"python -m {sys.modules['__main__'].__spec__.name} is now python -m {new}; the old name "
                      f"works for one release.", FutureWarning, stacklevel=2)
        runpy.run_module(new, run_name="__main__", alter_sys=True)
        return
    warnings.warn(f"{name} moved to {new} (zimage_core's layout of December 2026); the old name works for one "
                  f"release.", DeprecationWarning, stacklevel=3)
    sys.modules[name] = importlib.import_module(new)
