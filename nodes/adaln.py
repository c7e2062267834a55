"""adaLN conditioning nodes: detail offset, modulation scale, conditioning variance, conditioning combine."""

from __future__ import annotations

import torch

from ..zimage_core.adapters.adaln import (
    AdaLNDetail,
    AdaLNScale,
    ConditioningVariance,
    combine_conditioning,
)
from ..zimage_core.errors import InputError
from .inputs import fraction

_DIT_IN = ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or a LoRA/adaLN node)."})
_DIT_OUT_TIP = ("The DiT with this control attached (the input DiT is unchanged).",)



class ZImageAdaLNDetail:
    DESCRIPTION = ("Detail control through the timestep modulation: during a window of the schedule the adaLN "
                   "layers are told a time offset by `amount` from the true one, while the noise level of the sample "
                   "is unchanged. Positive amounts make the model believe the image is cleaner, so it keeps and adds "
                   "fine detail; negative amounts smooth. The Z-Image counterpart of 'detail daemon'.")
    CATEGORY = "Z-Image/adaLN"
    FUNCTION = "apply"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "amount": ("FLOAT", {"default": 0.1, "min": -1.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "Time offset the modulation sees (model time t = 1 - sigma), e.g. 0.1 for "
                                            "more detail, -0.1 for smoother results; 0 = off."}),
            "start": fraction(0.2, "Where the effect begins, as a fraction of the steps (0 = first step), e.g. 0.2."),
            "end": fraction(0.8, "Where the effect has faded out again (1 = last step), e.g. 0.8. The offset ramps "
                              "smoothly in and out inside start..end."),
        }}

    def apply(self, dit, amount, start, end):
        if float(amount) == 0.0:
            return (dit,)
        return (dit.with_patch(AdaLNDetail(amount, start, end)),)


class ZImageAdaLNScale:
    DESCRIPTION = ("Multiplies the adaLN modulation of a range of blocks: `scale` multiplies the feature scales, "
                   "`gate` the (pre-tanh) residual gates. Early blocks shape composition, late blocks texture; "
                   "factors near 1 (0.9-1.1) are subtle, 1 = off.")
    CATEGORY = "Z-Image/adaLN"
    FUNCTION = "apply"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.01,
                                "tooltip": "Factor on the scale_msa / scale_mlp modulation, e.g. 1.1 for stronger "
                                           "texture in the chosen blocks; 1 = unchanged."}),
            "gate": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.01,
                               "tooltip": "Factor on the attention/MLP gates (before tanh), e.g. 0.9 to damp those "
                                          "blocks' contribution; 1 = unchanged."}),
            "first_block": ("INT", {"default": 0, "min": 0, "max": 63,
                                    "tooltip": "First main layer affected (0..29 for Z-Image), e.g. 20."}),
            "last_block": ("INT", {"default": -1, "min": -1, "max": 63,
                                   "tooltip": "Last main layer affected, inclusive; -1 = the last layer (29)."}),
            "include_refiner": ("BOOLEAN", {"default": False,
                                            "tooltip": "Also scale the two noise-refiner blocks that run before the "
                                                       "main layers."}),
        }}

    def apply(self, dit, scale, gate, first_block, last_block, include_refiner):
        if float(scale) == 1.0 and float(gate) == 1.0:
            return (dit,)
        n = dit.dit.cfg.n_layers
        last = last_block if last_block >= 0 else n + last_block
        if not 0 <= first_block <= last < n:
            raise InputError(f"block range {first_block}..{last_block} does not fit this DiT's {n} layers "
                             f"(0..{n - 1}, -1 = the last, first_block <= last_block).")
        return (dit.with_patch(AdaLNScale(scale, gate, first_block, last_block, include_refiner)),)


class ZImageConditioningVariance:
    DESCRIPTION = ("Adds seeded noise to the prompt's tokens for the first part of the schedule, which restores "
                   "seed-to-seed variety in Turbo (composition varies) without hurting text rendering in the later "
                   "steps. The same seed gives the same noise; strength 0 = off.")
    CATEGORY = "Z-Image/adaLN"
    FUNCTION = "apply"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "strength": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 5.0, "step": 0.01,
                                   "tooltip": "Noise size relative to the tokens' RMS, e.g. 0.3; 0 = off."}),
            "until": fraction(0.3, "Fraction of the steps that see the noisy prompt, e.g. 0.3 = the first 3 of 8 "
                                "(later steps use the clean prompt)."),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed of the prompt noise, e.g. 42; change it for another variation "
                                        "(the editor's 'control after generate' randomizes it by default)."}),
        }}

    def apply(self, dit, strength, until, seed):
        if float(strength) == 0.0:
            return (dit,)
        return (dit.with_patch(ConditioningVariance(strength, until, seed)),)


def _valid(cond_entry) -> tuple[torch.Tensor, dict]:
    c, extra = cond_entry[0], cond_entry[1]
    feats = c[0]
    mask = extra.get("attention_mask")
    if mask is not None:
        feats = feats[mask.reshape(-1)[: feats.shape[0]].bool().to(feats.device)]
    return feats, extra


class ZImageConditioningCombine:
    DESCRIPTION = ("Combines two prompts' conditionings: concat puts b's tokens after a's (the model reads both "
                   "prompts), average blends them token by token (weight = share of a).")
    CATEGORY = "Z-Image/adaLN"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The combined conditioning, for ZImageSampler or KSampler.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning_a": ("CONDITIONING", {"tooltip": "First prompt, e.g. 'a castle on a hill'."}),
            "conditioning_b": ("CONDITIONING", {"tooltip": "Second prompt, e.g. 'watercolor painting'."}),
            "mode": (["concat", "average"], {"default": "concat",
                                             "tooltip": "concat: a then b as one longer prompt; average: token-wise "
                                                        "blend (the longer prompt's extra tokens are kept)."}),
            "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "average only: share of a, e.g. 0.7 = 70% a, 30% b."}),
        }}

    def combine(self, conditioning_a, conditioning_b, mode="concat", weight=0.5):
        if not conditioning_a or not conditioning_b:
            raise InputError("both conditionings must be non-empty.")
        b, _ = _valid(conditioning_b[0])
        out = []
        for entry in conditioning_a:
            a, extra = _valid(entry)
            feats = combine_conditioning(a, b, mode, float(weight))[None]
            new = dict(extra)
            new["pooled_output"] = extra.get("pooled_output")
            new["attention_mask"] = torch.ones(1, feats.shape[1], dtype=torch.long, device=feats.device)
            out.append([feats, new])
        return (out,)


NODE_CLASS_MAPPINGS = {
    "ZImageAdaLNDetail": ZImageAdaLNDetail,
    "ZImageAdaLNScale": ZImageAdaLNScale,
    "ZImageConditioningVariance": ZImageConditioningVariance,
    "ZImageConditioningCombine": ZImageConditioningCombine,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ZImageAdaLNDetail": "Z-Image adaLN Detail",
    "ZImageAdaLNScale": "Z-Image adaLN Scale",
    "ZImageConditioningVariance": "Z-Image Conditioning Variance",
    "ZImageConditioningCombine": "Z-Image Conditioning Combine",
}
