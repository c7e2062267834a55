"""The ComfyUI nodes of the pack. Each module in `_MODULES` exposes NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS; they are merged here (a duplicate node id is an error)."""

from __future__ import annotations

import importlib

_MODULES = ("loaders", "conditioning", "latent", "sampler", "vae", "lora", "adaln", "nag", "prompt_enhancer", "speed",
            "controlnet", "bridge")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    for _id, _cls in _mod.NODE_CLASS_MAPPINGS.items():
        if _id in NODE_CLASS_MAPPINGS and NODE_CLASS_MAPPINGS[_id] is not _cls:
            raise RuntimeError(f"node id {_id} is defined twice (nodes.{_name})")
        NODE_CLASS_MAPPINGS[_id] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
