"""ControlNet nodes: ZImageControlNetLoader and ZImageControlNetApply (Z-Image-Turbo-Fun-Controlnet-Union)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..zimage_core.adapters.controlnet import (
    TOKENS,
    ControlImage,
    ControlPatch,
    ZImageControlNet,
    load_controlnet,
)
from ..zimage_core.errors import InputError
from ..zimage_core.model.dit_loader import WEIGHT_DTYPES
from . import host
from .inputs import fraction

FOLDERS = ("model_patches", "controlnet")


@dataclass(eq=False)
class ControlNetModel:
    """ZIMAGE_CONTROLNET: the loaded control branch and its ComfyUI ModelPatcher (None standalone)."""

    net: ZImageControlNet
    patcher: Any = None
    name: str = ""


class ZImageControlNetLoader:
    DESCRIPTION = ("Loads a Z-Image ControlNet Union file (alibaba-pai Z-Image-Turbo-Fun-Controlnet-Union 1.0, 2.0, "
                   "2.1, lite, tile, 8-step; VideoX-Fun single files or diffusers folders) from models/model_patches "
                   "or models/controlnet. The variant and sizes are read from the file.")
    CATEGORY = "Z-Image/controlnet"
    RETURN_TYPES = ("ZIMAGE_CONTROLNET",)
    RETURN_NAMES = ("controlnet",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for ZImageControlNetApply.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "controlnet_name": (host.model_files(FOLDERS), {
                "tooltip": "A ControlNet Union file in models/model_patches (where ComfyUI's ModelPatchLoader "
                           "looks too) or models/controlnet, e.g. Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors."}),
            "weight_dtype": (["auto", *WEIGHT_DTYPES], {
                "default": "auto",
                "tooltip": "Storage dtype of the weights; auto keeps the file's (fp32 files become bf16 on a GPU)."}),
        }}

    def load(self, controlnet_name, weight_dtype="auto"):
        load_dev, offload_dev = host.devices("dit")
        net = load_controlnet(host.resolve_any(FOLDERS, controlnet_name), weight_dtype, offload_dev, load_dev)
        return (ControlNetModel(net, host.manage(net, "dit"), controlnet_name),)



class ZImageControlNetApply:
    DESCRIPTION = ("Adds a ControlNet to the DiT: the control image (canny, depth, pose, scribble, gray, tile ... made "
                   "with any preprocessor node) steers the layout. Chain several Apply nodes to stack controls "
                   "(their hints add up, each with its own strength and range). As in the reference (diffusers, "
                   "VideoX-Fun) the hints act on the whole image+caption sequence; ComfyUI's ZImageFunControlnet "
                   "adds them to image tokens only, so pictures differ (tokens = image reproduces that node). "
                   "With a 2.0+ file, inpaint_image + inpaint_mask use its inpaint input.")
    CATEGORY = "Z-Image/controlnet"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT with the control attached (the input DiT is unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT (from the loader, LoRA, adaLN or another Apply node)."}),
            "controlnet": ("ZIMAGE_CONTROLNET", {"tooltip": "The ControlNet from ZImageControlNetLoader."}),
            "vae": ("ZIMAGE_VAE", {"tooltip": "The Flux VAE that encodes the control image (ZImageVAELoader)."}),
            "image": ("IMAGE", {"tooltip": "The control image, already preprocessed (e.g. Canny). It is resized to "
                                           "the generated size."}),
            "strength": ("FLOAT", {"default": 0.75, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Conditioning scale: 0.65-0.9 is typical for Turbo; 0 = off."}),
            "start_percent": fraction(0.0, "Where the control starts acting, as model time 1 - sigma "
                                            "(0 = the first step)."),
            "end_percent": fraction(1.0, "Where it stops acting (1 = the last step); e.g. 0.6 frees the last "
                                          "steps for detail."),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Where the control acts (1) or not (0); resized to the latent."}),
            "inpaint_image": ("IMAGE", {"tooltip": "2.0+ files: the picture to inpaint (with inpaint_mask)."}),
            "inpaint_mask": ("MASK", {"tooltip": "2.0+ files: 1 = repaint, 0 = keep (with inpaint_image)."}),
            "tokens": (list(TOKENS), {
                "default": "unified",
                "tooltip": "unified: as the reference (diffusers, VideoX-Fun), the hints act on the whole "
                           "image+caption sequence. image: as ComfyUI's ZImageFunControlnet (image tokens only, "
                           "refiner hints into the DiT's own tokens), for pictures equal to that node's."}),
        }}

    def apply(self, dit, controlnet, vae, image, strength=0.75, start_percent=0.0, end_percent=1.0, mask=None,
              inpaint_image=None, inpaint_mask=None, tokens="unified"):
        if start_percent > end_percent:
            raise InputError(f"ZImageControlNetApply: start_percent {start_percent} is after end_percent "
                             f"{end_percent}.")
        if float(strength) == 0.0:
            return (dit,)
        controlnet.net.check_fits(dit.dit, f"ZImageControlNetApply ({controlnet.name})")
        spec = ControlImage(controlnet.net, image, float(strength), float(start_percent), float(end_percent), mask,
                            inpaint_image, inpaint_mask, tokens)
        control = spec.to_control(_OnDevice(vae, [dit.host, controlnet.patcher]))
        return (dit.with_patch(ControlPatch([control], host=controlnet.patcher)),)


class _OnDevice:
    """The VAE as `control_latent` uses it: loaded when the control image is encoded (first step at a new size),
    after which the DiT and ControlNet are put back on their device (as ComfyUI's own ControlNet patch does)."""

    def __init__(self, vae, restore):
        self.vae_model, self.restore = vae, restore

    def encode(self, pixels):
        vae = self.vae_model.load()
        try:
            return vae.encode(pixels.to(host.module_device(vae)))
        finally:
            host.load_to_device(self.restore)


NODE_CLASS_MAPPINGS = {"ZImageControlNetLoader": ZImageControlNetLoader, "ZImageControlNetApply": ZImageControlNetApply}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageControlNetLoader": "Z-Image ControlNet Loader",
                              "ZImageControlNetApply": "Z-Image ControlNet Apply"}
