"""Runs an API-format graph on the node classes without ComfyUI (`Executor`), with small STAND-INS for the
core nodes (`make_stand_ins`) that follow ComfyUI's semantics on CPU tensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workflow_support import is_link


def make_stand_ins(input_dir: Path, output_dir: Path) -> dict:
    """TEST STAND-INS for the ComfyUI core nodes the workflows use (ComfyUI itself is not imported). Each
    follows the semantics of ComfyUI v0.18.1's node on CPU float32 tensors: LoadImage (RGB 0..1, MASK =
    1 - alpha, or a 64x64 zero mask without alpha), SaveImage (PNG files, the `ui.images` list),
    SetLatentNoiseMask, Canny (kornia, as ComfyUI calls it), ImageScaleBy, EmptySD3LatentImage, ConditioningZeroOut,
    VAELoader / VAEDecode (here the Flux VAE of zimage_core, loaded from a file path, decoding to
    [B, H, W, 3] in 0..1 as comfy.sd.VAE does)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from zimage_core.model.vae import load_vae

    input_dir, output_dir = Path(input_dir), Path(output_dir)

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        def load_image(self, image):
            img = ImageOps.exif_transpose(Image.open(input_dir / image))
            rgb = torch.from_numpy(np.asarray(img.convert("RGB")).astype(np.float32) / 255.0)[None]
            if "A" in img.getbands():
                mask = 1.0 - torch.from_numpy(np.asarray(img.getchannel("A")).astype(np.float32) / 255.0)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            return rgb, mask[None]

    class DistributedSeed:  # on a server without workers (the master alone) the seed passes through
        RETURN_TYPES = ("INT",)
        FUNCTION = "distribute"

        def distribute(self, seed):
            return (seed,)

    class DistributedCollector:  # no job id (no workers): the images pass through, audio empty
        RETURN_TYPES = ("IMAGE", "AUDIO")
        FUNCTION = "run"

        def run(self, images, load_balance=False, audio=None):
            return images, audio if audio is not None else {"waveform": torch.zeros(1, 2, 1), "sample_rate": 44100}

    class SaveImage:
        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        counter = 0

        def save_images(self, images, filename_prefix="ComfyUI"):
            output_dir.mkdir(parents=True, exist_ok=True)
            results = []
            for image in images:
                SaveImage.counter += 1
                name = f"{filename_prefix}_{SaveImage.counter:05}_.png"
                arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(output_dir / name)
                results.append({"filename": name, "subfolder": "", "type": "output"})
            return {"ui": {"images": results}}

    class SetLatentNoiseMask:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "set_mask"

        def set_mask(self, samples, mask):
            s = samples.copy()
            s["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
            return (s,)

    class Canny:  # kornia's canny, as comfy_extras/nodes_canny.py calls it
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "execute"

        def execute(self, image, low_threshold, high_threshold):
            from kornia.filters import canny

            edges = canny(image.float().movedim(-1, 1), low_threshold, high_threshold)[1]
            return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)

    class ImageScaleBy:  # size round(side * scale_by); lanczos through PIL per image, as comfy.utils.lanczos
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "upscale"

        def upscale(self, image, upscale_method, scale_by):
            h, w = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
            if upscale_method == "lanczos":
                out = [torch.from_numpy(np.asarray(Image.fromarray(np.clip(255.0 * i.numpy(), 0, 255).round()
                                                                   .astype(np.uint8)).resize((w, h), Image.LANCZOS))
                                        .astype(np.float32) / 255.0) for i in image]
                return (torch.stack(out),)
            mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}
            x = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(h, w), mode=mode[upscale_method])
            return (x.movedim(1, -1),)

    class EmptySD3LatentImage:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "execute"

        def execute(self, width, height, batch_size=1):
            return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8]), "downscale_ratio_spacial": 8},)

    class ConditioningZeroOut:
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "zero_out"

        def zero_out(self, conditioning):
            c = []
            for t in conditioning:
                d = t[1].copy()
                if d.get("pooled_output") is not None:
                    d["pooled_output"] = torch.zeros_like(d["pooled_output"])
                c.append([torch.zeros_like(t[0]), d])
            return (c,)

    class StandInVAE:
        def __init__(self, path):
            self.model = load_vae(path)

        def decode(self, latent):
            with torch.no_grad():
                x = self.model.decode(latent.float())
            return x.add(1.0).div(2.0).clamp(0.0, 1.0).movedim(1, -1)

    class VAELoader:
        RETURN_TYPES = ("VAE",)
        FUNCTION = "load_vae"

        def load_vae(self, vae_name):
            return (StandInVAE(vae_name),)

    class VAEDecode:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "decode"

        def decode(self, vae, samples):
            return (vae.decode(samples["samples"]),)

    return {c.__name__: c for c in (LoadImage, SaveImage, SetLatentNoiseMask, Canny, ImageScaleBy, EmptySD3LatentImage,
                                    ConditioningZeroOut, VAELoader, VAEDecode, DistributedSeed, DistributedCollector)}


@dataclass
class RunResult:
    outputs: dict  # node id -> output tuple
    inputs: dict  # node id -> the keyword arguments the node was called with
    ui: dict  # node id -> its "ui" dict (output nodes, the prompt enhancer)
    order: list  # node ids in execution order


class Executor:
    """Runs an API-format graph like ComfyUI's executor does for a fresh prompt: the output nodes and,
    depth first, everything they need; each node's class instantiated and its FUNCTION called with the
    inputs by name (links resolved to the origin's output tuple element). A return value of the form
    {"ui": ..., "result": (...)} is split as ComfyUI does."""

    def __init__(self, node_classes: dict, cache_types=()):
        """cache_types: node types (the loaders) whose outputs are kept across runs for the same widget values,
        as ComfyUI keeps the outputs of unchanged nodes between prompts."""
        self.node_classes = node_classes
        self.cache_types = set(cache_types)
        self._cache: dict = {}

    def run(self, graph: dict) -> RunResult:
        res = RunResult({}, {}, {}, [])

        def output_node(nid):
            return bool(getattr(self.node_classes[graph[nid]["class_type"]], "OUTPUT_NODE", False))

        def execute(nid, stack=()):
            if nid in res.outputs:
                return res.outputs[nid]
            if nid in stack:
                raise ValueError(f"cycle through node {nid}")
            node = graph[nid]
            kwargs = {}
            for k, v in node["inputs"].items():
                kwargs[k] = execute(v[0], stack + (nid,))[v[1]] if is_link(v) else v
            cls = self.node_classes[node["class_type"]]
            key = None
            if node["class_type"] in self.cache_types and not any(is_link(v) for v in node["inputs"].values()):
                key = (node["class_type"], json.dumps(node["inputs"], sort_keys=True))
            out = self._cache[key] if key in self._cache else getattr(cls(), cls.FUNCTION)(**kwargs)
            if key is not None:
                self._cache[key] = out
            if isinstance(out, dict):
                if "ui" in out:
                    res.ui[nid] = out["ui"]
                out = out.get("result", ())
            res.inputs[nid], res.outputs[nid] = kwargs, tuple(out)
            res.order.append(nid)
            return res.outputs[nid]

        targets = [nid for nid in sorted(graph, key=int) if output_node(nid)]
        if not targets:
            raise ValueError("the graph has no output node")
        for nid in targets:
            execute(nid)
        return res
