"""ZImageDiTToModel: hands our DiT (with its LoRA / adaLN patches) to ComfyUI as a MODEL."""

from __future__ import annotations

from ..zimage_core.adapters.patching import PatchedDiT
from ..zimage_core.errors import InputError
from . import host


class ZImageDiTToModel:
    DESCRIPTION = ("Turns a Z-Image DiT (from ZImageDiTLoader, LoRA or adaLN nodes) into a ComfyUI MODEL for "
                   "KSampler, KSamplerAdvanced, SamplerCustomAdvanced, ModelSamplingAuraFlow, LoraLoaderModelOnly, "
                   "DifferentialDiffusion and other packs. The LoRA / adaLN patches set before this node stay "
                   "active; ComfyUI manages the model's memory.")
    CATEGORY = "Z-Image/loaders"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The DiT as a native Z-Image (Lumina2) MODEL: Flux latent format, flow sampling with shift 3.",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or a LoRA/adaLN node of this "
                                              "pack)."}),
        }}

    def convert(self, dit):
        if not isinstance(dit, PatchedDiT):
            raise InputError(f"ZImageDiTToModel: 'dit' must be a ZIMAGE_DIT from ZImageDiTLoader (or a LoRA/adaLN "
                             f"node of this pack), got {type(dit).__name__}. A ComfyUI MODEL already is one.")
        return (host.as_comfy_model(dit),)


NODE_CLASS_MAPPINGS = {"ZImageDiTToModel": ZImageDiTToModel}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageDiTToModel": "Z-Image DiT to MODEL"}
