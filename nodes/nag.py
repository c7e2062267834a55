"""ZImageNAG: Normalized Attention Guidance, a negative prompt for Turbo at cfg 1 (see zimage_core/nag.py)."""

from __future__ import annotations

from ..zimage_core.errors import InputError
from ..zimage_core.nag import NAG
from ..zimage_core.patching import PatchedDiT
from .sampler import conditioning_features
from .inputs import fraction



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
        if float(scale) == 0.0 or float(alpha) == 0.0 or patch.end <= patch.start:
            return (dit,)
        return (dit.with_patch(patch),)


NODE_CLASS_MAPPINGS = {"ZImageNAG": ZImageNAG}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageNAG": "Z-Image NAG (negative prompt at cfg 1)"}
