"""ZImageNAG: Normalized Attention Guidance, a negative prompt for Turbo at cfg 1 (see zimage_core/adapters/nag.py)."""

from __future__ import annotations

from ..zimage_core.adapters.nag import NAG
from ..zimage_core.adapters.patching import PatchedDiT
from ..zimage_core.errors import InputError
from . import host
from .inputs import fraction
from .sampler import conditioning_features


class ZImageNAG:
    DESCRIPTION = ("Normalized Attention Guidance: a negative prompt that works at cfg 1 (Turbo), where the sampler's "
                   "negative does nothing. In every main layer the image tokens also attend to the negative prompt, "
                   "and their attention output is pushed away from that result (scale), with its size capped (tau) "
                   "and blended back (alpha). Costs one extra attention per layer for the image tokens plus the "
                   "negative prompt's own tokens, not a second full pass. Works with LoRA, adaLN controls and CFG.")
    CATEGORY = "Z-Image/sampling"
    FUNCTION = "apply"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT with NAG attached (the input DiT is unchanged), for ZImageSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or a LoRA/adaLN node)."}),
            "negative": ("CONDITIONING", {"tooltip": "What to steer away from, from ZImageTextEncode, e.g. "
                                                     "'blurry, low quality, watermark, text'."}),
            "scale": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                "tooltip": "Guidance strength s in Z~ = Z+ + s (Z+ - Z-), e.g. 5; 0 = off "
                                           "(the same output as without this node)."}),
            "tau": ("FLOAT", {"default": 2.5, "min": 1.0, "max": 10.0, "step": 0.1,
                              "tooltip": "Cap on the guided output's size per token, as a multiple of the positive "
                                         "one's (L1 norm), e.g. 2.5; lower is gentler."}),
            "alpha": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Share of the guided output blended into the positive one, e.g. 0.25; "
                                           "0 = off, 1 = guided output only."}),
        }, "optional": {
            "start": fraction(0.0, "First part of the schedule with NAG, as a fraction of the steps (steps with "
                                "start <= step / steps < end), e.g. 0.0."),
            "end": fraction(1.0, "Where NAG stops, as a fraction of the steps, e.g. 1.0 = up to the last step."),
        }}

    def apply(self, dit, negative, scale, tau, alpha, start=0.0, end=1.0):
        if not isinstance(dit, PatchedDiT):
            raise InputError(
                f"ZImageNAG: `dit` must be a Z-Image DiT (ZIMAGE_DIT from ZImageDiTLoader), not a "
                f"{type(dit).__name__}; a MODEL of another family (SD, SDXL, Flux) cannot take Z-Image NAG.")
        feats = conditioning_features(negative, "ZImageNAG negative")
        patch = NAG(feats, scale, tau, alpha, start, end)
        patch.check(dit.dit)
        if patch.is_noop:
            return (dit,)
        return (dit.with_patch(patch),)


class ZImageNAGModel:
    DESCRIPTION = ("Normalized Attention Guidance on a MODEL: the ZImageNAG negative prompt for KSampler, "
                   "KSamplerAdvanced, SamplerCustomAdvanced and other packs' samplers. Takes the MODEL of a Z-Image "
                   "DiT made by ZImageDiTToModel (also after LoRA, ModelSamplingAuraFlow or other model patches); "
                   "works at cfg 1 (Turbo), and with CFG it guides the positive prediction only. Same rule, "
                   "parameters and cost as ZImageNAG; a MODEL of another family is refused.")
    CATEGORY = "Z-Image/sampling"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with NAG attached (the input MODEL is unchanged), for KSampler and other samplers.",)

    @classmethod
    def INPUT_TYPES(cls):
        types = ZImageNAG.INPUT_TYPES()
        required = {"model": ("MODEL", {"tooltip": "The MODEL of a Z-Image DiT from ZImageDiTToModel (possibly "
                                                   "patched since, e.g. by LoraLoaderModelOnly)."}),
                    "negative": ("CONDITIONING", {"tooltip": "What to steer away from, from CLIPTextEncode on "
                                                             "the Z-Image (lumina2) CLIP or ZImageTextEncode, e.g. "
                                                             "'blurry, low quality, watermark, text'."})}
        required.update({k: v for k, v in types["required"].items() if k not in ("dit", "negative")})
        return {"required": required, "optional": types["optional"]}

    def apply(self, model, negative, scale, tau, alpha, start=0.0, end=1.0):
        patched = host.zimage_model_dit(model, "ZImageNAGModel 'model'")
        feats = conditioning_features(negative, "ZImageNAGModel negative")
        patch = NAG(feats, scale, tau, alpha, start, end)
        patch.check(patched.dit)
        if patch.is_noop:
            return (model,)
        return (host.zimage_model_with(model, patched.with_patch(patch)),)


NODE_CLASS_MAPPINGS = {"ZImageNAG": ZImageNAG, "ZImageNAGModel": ZImageNAGModel}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageNAG": "Z-Image NAG (negative prompt at cfg 1)",
                              "ZImageNAGModel": "Z-Image NAG on MODEL (negative prompt at cfg 1)"}
