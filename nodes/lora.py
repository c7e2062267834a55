"""LoRA nodes: ZImageLoraLoader and ZImageLoraStack (every Z-Image LoRA key style, LoKr; runtime patches)."""

from __future__ import annotations

import os
from collections import OrderedDict

from ..zimage_core.adapters.lora import LoraPatch, load_lora
from . import host

N_STACK = 4
_CACHE: OrderedDict = OrderedDict()  # (path, mtime, size, config) -> parsed LoraPatch (strength 1)
_CACHE_SIZE = 8


def lora_patch(name: str, dit, strength: float) -> LoraPatch:
    """The parsed LoRA `name` (from ComfyUI's loras list) for this DiT, at `strength`; files are parsed once."""
    path = host.resolve("loras", name)
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size, dit.dit.cfg)
    patch = _CACHE.get(key)
    if patch is None:
        patch = load_lora(path, dit.dit.cfg)
        _CACHE[key] = patch
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return patch.with_strength(strength)


def _strength_input(tip: str) -> tuple:
    return ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": tip})


class ZImageLoraLoader:
    DESCRIPTION = ("Applies a Z-Image LoRA (diffusers/PEFT, ai-toolkit, kohya/musubi, ComfyUI-native fused qkv, "
                   "dot style or LoKr) to the DiT as a runtime patch: the loaded model is not modified, the strength "
                   "can change without reloading, and every key the file has but the model cannot use is listed in "
                   "a warning. LoRAs for other model families (SDXL, Flux) are refused with a message.")
    CATEGORY = "Z-Image/lora"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT with the LoRA attached (the input DiT is unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or another LoRA/adaLN node)."}),
            "lora_name": (host.model_names("loras"), {
                "tooltip": "A LoRA file from models/loras, e.g. zimage_turbo_pixel_art.safetensors."}),
            "strength": _strength_input("How strongly the LoRA acts: 1.0 as trained, 0.6 for a lighter touch, 0 = "
                                        "off, negative values push away from the LoRA's style."),
        }}

    def apply(self, dit, lora_name, strength=1.0):
        if float(strength) == 0.0:
            return (dit,)
        return (dit.with_patch(lora_patch(lora_name, dit, float(strength))),)


class ZImageLoraStack:
    DESCRIPTION = ("Applies up to four Z-Image LoRAs at once, each with its own strength and on/off switch (same "
                   "key styles and runtime patching as ZImageLoraLoader). Slots set to None, switched off or at "
                   "strength 0 are skipped.")
    CATEGORY = "Z-Image/lora"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT with the enabled LoRAs attached, in slot order (the input DiT is unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        names = ["None", *host.model_names("loras")]
        req = {"dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or another LoRA/adaLN node)."})}
        for i in range(1, N_STACK + 1):
            req[f"lora_{i}"] = (names, {"default": "None",
                                        "tooltip": f"LoRA of slot {i} from models/loras, or None for an empty slot."})
            req[f"strength_{i}"] = _strength_input(f"Strength of LoRA {i}, e.g. 0.8; 0 skips the slot.")
            req[f"enabled_{i}"] = ("BOOLEAN", {"default": True,
                                               "tooltip": f"Switch LoRA {i} off without losing its name and strength."})
        return {"required": req}

    def apply(self, dit, **slots):
        for i in range(1, N_STACK + 1):
            name = slots.get(f"lora_{i}", "None")
            strength = float(slots.get(f"strength_{i}", 1.0))
            if name in (None, "", "None") or not slots.get(f"enabled_{i}", True) or strength == 0.0:
                continue
            dit = dit.with_patch(lora_patch(name, dit, strength))
        return (dit,)


NODE_CLASS_MAPPINGS = {"ZImageLoraLoader": ZImageLoraLoader, "ZImageLoraStack": ZImageLoraStack}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageLoraLoader": "Z-Image LoRA Loader", "ZImageLoraStack": "Z-Image LoRA Stack"}
