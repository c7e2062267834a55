"""ZImageEmptyLatent: an empty Flux-VAE LATENT at an official Z-Image resolution or a custom size."""

from __future__ import annotations

import logging

import torch

from ..zimage_core.model.latent import LATENT_CHANNELS, VAE_SCALE_FACTOR
from ..zimage_core.pipeline import check_size
from . import host

log = logging.getLogger("zimage_nodes")

CUSTOM = "custom"
# The resolutions Z-Image was trained for (official demo list), "WxH (aspect)".
PRESETS = (
    "1024x1024 (1:1)", "1152x896 (9:7)", "896x1152 (7:9)", "1216x832 (3:2)", "832x1216 (2:3)",
    "1344x768 (7:4)", "768x1344 (4:7)", "1536x640 (12:5)", "640x1536 (5:12)", "1280x720 (16:9)",
    "720x1280 (9:16)", "1280x1280 (1:1)", "1536x1536 (1:1)", "2048x2048 (1:1)",
)
MAX_SIZE = 4096


def preset_size(resolution: str, width: int, height: int) -> tuple[int, int]:
    """(width, height) for a preset name, or the given width/height for "custom"."""
    if resolution == CUSTOM:
        return int(width), int(height)
    try:
        w, h = resolution.split(" ", 1)[0].split("x")
        return int(w), int(h)
    except ValueError:
        raise ValueError(f"unknown resolution preset '{resolution}'; use one of: {CUSTOM}, {', '.join(PRESETS)}.") from None


class ZImageEmptyLatent:
    DESCRIPTION = ("An empty latent for text-to-image with Z-Image: [batch, 16, height/8, width/8] in the Flux VAE's "
                   "space (the same as EmptySD3LatentImage). Pick an official resolution or 'custom' for width/height.")
    CATEGORY = "Z-Image/latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The empty latent, for ZImageSampler (or KSampler).",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "resolution": ([CUSTOM, *PRESETS], {
                "default": CUSTOM,
                "tooltip": "An official Z-Image resolution, e.g. '1216x832 (3:2)'; 'custom' uses width and height below."}),
            "width": ("INT", {"default": 1024, "min": 16, "max": MAX_SIZE, "step": 16,
                              "tooltip": "Image width in pixels, a multiple of 16 (used when resolution is 'custom'), e.g. 1024."}),
            "height": ("INT", {"default": 1024, "min": 16, "max": MAX_SIZE, "step": 16,
                               "tooltip": "Image height in pixels, a multiple of 16 (used when resolution is 'custom'), e.g. 1024."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "How many images to generate at once, e.g. 1."}),
        }}

    def generate(self, resolution, width, height, batch_size=1):
        w, h = preset_size(resolution, width, height)
        if resolution != CUSTOM and (int(width), int(height)) != (w, h):
            # the editor keeps width/height in sync with the preset; a mismatch means an API edit of width/height
            log.warning("Z-Image Empty Latent: resolution preset '%s' is used, so width %s / height %s are ignored; "
                        "set resolution to 'custom' to use them.", resolution, width, height)
        check_size(w, h)
        shape = (int(batch_size), LATENT_CHANNELS, h // VAE_SCALE_FACTOR, w // VAE_SCALE_FACTOR)
        return ({"samples": torch.zeros(shape, device=host.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"ZImageEmptyLatent": ZImageEmptyLatent}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageEmptyLatent": "Z-Image Empty Latent"}
