"""ZImageTextEncode: prompt -> CONDITIONING in exactly the layout of ComfyUI's native Z-Image text encoder."""

from __future__ import annotations

import torch

from . import host


def make_conditioning(feats: torch.Tensor) -> list:
    """(L, hidden) features -> native CONDITIONING [[cond [1, L, hidden] float32, {pooled_output, attention_mask}]]."""
    cond = feats.float()[None].to(host.intermediate_device())
    mask = torch.ones(1, cond.shape[1], dtype=torch.long, device=cond.device)
    return [[cond, {"pooled_output": None, "attention_mask": mask}]]


class ZImageTextEncode:
    DESCRIPTION = ("Encodes a prompt with the Qwen3 text encoder (chat template, second-to-last layer, valid tokens "
                   "only). The CONDITIONING has the layout of ComfyUI's native Z-Image CLIPTextEncode, so it also "
                   "feeds the native KSampler and ConditioningZeroOut.")
    CATEGORY = "Z-Image/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Prompt features [1, L, 2560] with an attention mask, for ZImageSampler or KSampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("ZIMAGE_TEXT_ENCODER", {"tooltip": "The text encoder from ZImageTextEncoderLoader."}),
            "text": ("STRING", {
                "multiline": True, "dynamicPrompts": True, "default": "",
                "tooltip": "The prompt, e.g. 'a red fox in the snow at sunrise, photograph'. Z-Image understands long, "
                           "detailed prompts (English or Chinese); up to 512 tokens are used."}),
        }}

    def encode(self, text_encoder, text):
        encoder = text_encoder.load()
        (feats,) = encoder.encode([text])
        return (make_conditioning(feats),)


NODE_CLASS_MAPPINGS = {"ZImageTextEncode": ZImageTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageTextEncode": "Z-Image Text Encode"}
