"""ZImageVAEDecode / ZImageVAEEncode: Flux VAE between LATENT (raw VAE space) and IMAGE."""

from __future__ import annotations

import logging

import torch

from ..zimage_core.errors import InputError
from ..zimage_core.model.latent import SPATIAL_MULTIPLE
from ..zimage_core.pipeline import decode, from_pixels
from . import host
from .sampler import check_latent

log = logging.getLogger("zimage_nodes")


def crop_to_multiple(image: torch.Tensor, multiple: int = SPATIAL_MULTIPLE) -> torch.Tensor:
    """Centre-crop IMAGE [B,H,W,C] to multiples of `multiple`, with a logged warning when it changes."""
    h, w = image.shape[1:3]
    nh, nw = h // multiple * multiple, w // multiple * multiple
    if nh == 0 or nw == 0:
        raise InputError(f"image of {w}x{h} pixels is smaller than {multiple}x{multiple}; Z-Image cannot encode it.")
    if (nh, nw) == (h, w):
        return image
    top, left = (h - nh) // 2, (w - nw) // 2
    log.warning("Z-Image VAE encode: image %dx%d centre-cropped to %dx%d (multiples of %d).", w, h, nw, nh, multiple)
    return image[:, top:top + nh, left:left + nw]


class ZImageVAEDecode:
    DESCRIPTION = "Decodes a Z-Image LATENT (Flux VAE space) into an IMAGE with the Flux VAE."
    CATEGORY = "Z-Image/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The decoded images, float32 [B, H, W, 3] in 0..1.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("ZIMAGE_VAE", {"tooltip": "The Flux VAE from ZImageVAELoader."}),
                "latent": ("LATENT", {"tooltip": "The latent to decode, e.g. the output of ZImageSampler."}),
            },
            "optional": {
                "tiled": ("BOOLEAN", {"default": False,
                                      "tooltip": "Always decode in overlapping tiles. Off: decode whole, and tile "
                                                 "automatically only when the image would not fit in free memory "
                                                 "(e.g. 2048x2048 on a small GPU)."}),
            },
        }

    def decode(self, vae, latent, tiled=False):
        z = check_latent(latent, "latent")
        need = vae.vae.decode_bytes(tuple(z.shape))
        model = vae.load(need)  # ComfyUI frees this much for the VAE when it can
        dev = host.module_device(model)
        return (decode(model, z.to(dev), True if tiled else None, host.free_memory(dev)),)


class ZImageVAEEncode:
    DESCRIPTION = ("Encodes an IMAGE into a Z-Image LATENT with the Flux VAE (the distribution mean, as ComfyUI's "
                   "VAEEncode). Sizes that are not multiples of 16 are centre-cropped.")
    CATEGORY = "Z-Image/vae"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The latent [B, 16, H/8, W/8], for ZImageSampler with denoise < 1 or a noise mask.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("ZIMAGE_VAE", {"tooltip": "The Flux VAE from ZImageVAELoader."}),
                "image": ("IMAGE", {"tooltip": "The image to encode, e.g. from LoadImage."}),
            },
            "optional": {
                "tiled": ("BOOLEAN", {"default": False,
                                      "tooltip": "Encode in overlapping tiles to save memory on large images."}),
            },
        }

    def encode(self, vae, image, tiled=False):
        if not torch.is_tensor(image) or image.ndim != 4:
            raise InputError(f"image: expected an IMAGE [B, H, W, 3], got {getattr(image, 'shape', type(image))}.")
        image = crop_to_multiple(image)
        model = vae.load(int(image.numel()) * 4 * 64)
        x = from_pixels(image).to(host.module_device(model))
        raw = model.encode_tiled(x) if tiled else model.encode(x)
        return ({"samples": raw.float().to(host.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"ZImageVAEDecode": ZImageVAEDecode, "ZImageVAEEncode": ZImageVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageVAEDecode": "Z-Image VAE Decode", "ZImageVAEEncode": "Z-Image VAE Encode"}
