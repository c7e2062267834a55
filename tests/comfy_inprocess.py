"""ComfyUI's modules imported in process, for tests that compare our nodes with ComfyUI's own code
(test_model_bridge, test_controlnet_comfy, test_lora_comfyui). Skips the importing test module when
COMFYUI_PATH is unset.

The pack is imported before ComfyUI's root joins sys.path (appended, after the repository's own modules), so
its host adapter stays in standalone mode for the whole test session, as in the other test files; the bridge
module (nodes/host_model.py) imports `comfy` itself. ComfyUI parses its command line on import: it sees
`--cpu` only.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
from workflow_support import load_pack

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH not set", allow_module_level=True)
importlib.import_module(load_pack().__name__ + ".nodes.host")
sys.path.append(COMFYUI_PATH)
_argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
try:
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.ldm.lumina.controlnet
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.supported_models
    import comfy.utils
    import folder_paths
    from comfy_extras import nodes_model_patch
finally:
    sys.argv = _argv

__all__ = ["comfy", "folder_paths", "native_model", "nodes_model_patch", "our_model"]


def native_model(env):
    """ComfyUI's own NextDiT (what UNETLoader builds for a 3840-wide file) over the weights `env["state"]` of
    our DiT `env["patched"]`; `env["hm"]` is the pack's nodes.host_model."""
    import torch

    cfg = env["patched"].dit.cfg
    uc = dict(env["hm"].model_config(env["patched"].dit).unet_config)
    uc.pop("disable_unet_model_creation")
    # what comfy/model_detection.py sets for Z-Image, with this DiT's head split and ffn width
    uc.update(n_kv_heads=cfg.n_heads, axes_dims=list(cfg.axes_dims), axes_lens=[1536, 512, 512], rope_theta=256.0,
              ffn_dim_multiplier=8 / 3, multiple_of=1, time_scale=1000.0, pad_tokens_multiple=32, qk_norm=True)
    mc = comfy.supported_models.ZImage(uc)
    mc.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    base = comfy.model_base.Lumina2(mc, device=cpu)
    base.diffusion_model.load_state_dict(env["state"])
    return comfy.model_patcher.ModelPatcher(base, cpu, cpu)


def our_model(env, patched=None):
    """Our DiT (or `patched`, a PatchedDiT) as a ComfyUI MODEL through the bridge."""
    import torch

    cpu = torch.device("cpu")
    return env["hm"].as_model(patched or env["patched"], cpu, cpu)
