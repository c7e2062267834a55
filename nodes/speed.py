"""ZImageTorchCompile: torch.compile the DiT's transformer blocks for faster sampling."""

from __future__ import annotations

from ..zimage_core.adapters.compile import MODES, TorchCompile


class ZImageTorchCompile:
    DESCRIPTION = ("Compiles the DiT's transformer blocks with torch.compile (inductor) for the runs that use this "
                   "DiT: the first run compiles (tens of seconds, again for every new image size unless `dynamic`), "
                   "later runs are faster, mainly on GPUs. The output equals the uncompiled model within float "
                   "rounding. Works with LoRAs, adaLN controls and block offloading. Needs a working C++/Triton "
                   "toolchain, as every torch.compile does.")
    CATEGORY = "Z-Image/sampling"
    FUNCTION = "apply"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT with compiled blocks (the input DiT stays uncompiled).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("ZIMAGE_DIT", {"tooltip": "The Z-Image DiT from ZImageDiTLoader (or a LoRA/adaLN node)."}),
            "mode": (list(MODES), {
                "default": "default",
                "tooltip": "torch.compile mode. default: quick to compile; max-autotune-no-cudagraphs: searches "
                           "faster kernels (much longer first run); reduce-overhead: CUDA graphs (fixed sizes only)."}),
            "dynamic": ("BOOLEAN", {
                "default": False,
                "tooltip": "Compile for varying image sizes and prompt lengths at once (fewer recompiles, slightly "
                           "slower kernels). Off: one compile per size, e.g. when you always render 1024x1024."}),
        }}

    def apply(self, dit, mode="default", dynamic=False):
        return (dit.with_patch(TorchCompile(mode, bool(dynamic))),)


NODE_CLASS_MAPPINGS = {"ZImageTorchCompile": ZImageTorchCompile}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageTorchCompile": "Z-Image Torch Compile"}
