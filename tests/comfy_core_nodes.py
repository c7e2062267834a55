"""The ComfyUI core nodes the example workflows use, with their inputs, types and outputs as ComfyUI v0.18.1
defines them (nodes.py, comfy_extras/...), plus the frontend-only note nodes: written out so that nothing
imports ComfyUI (tests/test_workflows_server.py checks the table against the real server's /object_info)."""
from __future__ import annotations

MAX_RESOLUTION = 16384  # nodes.MAX_RESOLUTION


def _core(display, required, outputs=(), category="", output_node=False, optional=None):
    return {"display": display, "category": category, "required": required, "optional": optional or {},
            "outputs": tuple(outputs), "output_node": output_node}


# Options "files:<kind>" mark combos whose choices are files found at run time (empty outside ComfyUI).
CORE_NODES = {
    "SaveImage": _core("Save Image", {
        "images": ("IMAGE", {}),
        "filename_prefix": ("STRING", {"default": "ComfyUI"}),
    }, category="image", output_node=True),
    "LoadImage": _core("Load Image", {
        "image": ("files:image", {"image_upload": True}),
    }, outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")), category="image"),
    "SetLatentNoiseMask": _core("Set Latent Noise Mask", {
        "samples": ("LATENT", {}),
        "mask": ("MASK", {}),
    }, outputs=(("LATENT", "LATENT"),), category="latent/inpaint"),
    "Canny": _core("Canny", {
        "image": ("IMAGE", {}),
        "low_threshold": ("FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
        "high_threshold": ("FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01}),
    }, outputs=(("IMAGE", "IMAGE"),), category="image/preprocessors"),
    "EmptySD3LatentImage": _core("EmptySD3LatentImage", {
        "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
    }, outputs=(("LATENT", "LATENT"),), category="latent/sd3"),
    "ConditioningZeroOut": _core("ConditioningZeroOut", {
        "conditioning": ("CONDITIONING", {}),
    }, outputs=(("CONDITIONING", "CONDITIONING"),), category="advanced/conditioning"),
    "VAELoader": _core("Load VAE", {
        "vae_name": ("files:vae", {}),
    }, outputs=(("VAE", "VAE"),), category="loaders"),
    "VAEDecode": _core("VAE Decode", {
        "samples": ("LATENT", {}),
        "vae": ("VAE", {}),
    }, outputs=(("IMAGE", "IMAGE"),), category="latent"),
    "ModelSamplingAuraFlow": _core("ModelSamplingAuraFlow", {
        "model": ("MODEL", {}),
        "shift": ("FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}),
    }, outputs=(("MODEL", "MODEL"),), category="advanced/model"),
    "KSampler": _core("KSampler", {
        "model": ("MODEL", {}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (["euler", "res_multistep"], {}),  # the samplers the example workflows use
        "scheduler": (["simple", "normal"], {}),
        "positive": ("CONDITIONING", {}),
        "negative": ("CONDITIONING", {}),
        "latent_image": ("LATENT", {}),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
    }, outputs=(("LATENT", "LATENT"),), category="sampling"),
    "ImageScaleBy": _core("Upscale Image By", {
        "image": ("IMAGE", {}),
        "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
        "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
    }, outputs=(("IMAGE", "IMAGE"),), category="image/upscaling"),
    # ComfyUI-Distributed v1.4.4 (robertvoy; nodes/utilities.py, nodes/collector.py): hidden inputs not listed
    "DistributedSeed": _core("Distributed Seed", {
        "seed": ("INT", {"default": 1125899906842, "min": 0, "max": 1125899906842624}),
    }, outputs=(("seed", "INT"),), category="utils"),
    "DistributedCollector": _core("Distributed Collector", {
        "images": ("IMAGE", {}),
        "load_balance": ("BOOLEAN", {"default": False}),
    }, outputs=(("images", "IMAGE"), ("audio", "AUDIO")), category="image", optional={"audio": ("AUDIO", {})}),
    # ComfyUI's dataset and training nodes (comfy_extras/nodes_dataset.py, nodes_train.py; V3 schema nodes)
    "LoadImageTextDataSetFromFolder": _core("Load Image and Text Dataset from Folder", {
        "folder": ("files:input_folder", {}),
    }, outputs=(("images", "IMAGE"), ("texts", "STRING")), category="dataset"),
    "ResizeImagesByLongerEdge": _core("Resize Images by Longer Edge", {
        "images": ("IMAGE", {}),
        "longer_edge": ("INT", {"default": 1024, "min": 1, "max": 8192}),
    }, outputs=(("images", "IMAGE"),), category="dataset/image"),
    "TrainLoraNode": _core("Train LoRA", {
        "model": ("MODEL", {}),
        "latents": ("LATENT", {}),
        "positive": ("CONDITIONING", {}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 10000}),
        "grad_accumulation_steps": ("INT", {"default": 1, "min": 1, "max": 1024}),
        "steps": ("INT", {"default": 16, "min": 1, "max": 100000}),
        "learning_rate": ("FLOAT", {"default": 0.0005, "min": 0.0000001, "max": 1.0, "step": 0.0000001}),
        "rank": ("INT", {"default": 8, "min": 1, "max": 128}),
        "optimizer": (["AdamW", "Adam", "SGD", "RMSprop"], {"default": "AdamW"}),
        "loss_function": (["MSE", "L1", "Huber", "SmoothL1"], {"default": "MSE"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
        "training_dtype": (["bf16", "fp32", "none"], {"default": "bf16"}),
        "lora_dtype": (["bf16", "fp32"], {"default": "bf16"}),
        "quantized_backward": ("BOOLEAN", {"default": False}),
        "algorithm": (["LoRA", "LoHa", "LoKr", "OFT"], {"default": "LoRA"}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True}),
        "checkpoint_depth": ("INT", {"default": 1, "min": 1, "max": 5}),
        "offloading": ("BOOLEAN", {"default": False}),
        "existing_lora": (["[None]"], {"default": "[None]"}),  # + the files in models/loras
        "bucket_mode": ("BOOLEAN", {"default": False}),
        "bypass_mode": ("BOOLEAN", {"default": False}),
    }, outputs=(("lora", "LORA_MODEL"), ("loss_map", "LOSS_MAP"), ("steps", "INT")), category="training"),
    "SaveLoRA": _core("Save LoRA Weights", {
        "lora": ("LORA_MODEL", {}),
        "prefix": ("STRING", {"default": "loras/ComfyUI_trained_lora"}),
    }, category="loaders", output_node=True, optional={"steps": ("INT", {})}),
    "LossGraphNode": _core("Plot Loss Graph", {
        "loss": ("LOSS_MAP", {}),
        "filename_prefix": ("STRING", {"default": "loss_graph"}),
    }, category="training", output_node=True),
    "LoraModelLoader": _core("Load LoRA Model", {
        "model": ("MODEL", {}),
        "lora": ("LORA_MODEL", {}),
        "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
        "bypass": ("BOOLEAN", {"default": False}),
    }, outputs=(("model", "MODEL"),), category="loaders"),
    # registered by the frontend itself (no Python class; graphToPrompt skips them)
    "Note": _core("Note", {"text": ("STRING", {"multiline": True})}),
    "MarkdownNote": _core("Markdown Note", {"text": ("STRING", {"multiline": True})}),
}
