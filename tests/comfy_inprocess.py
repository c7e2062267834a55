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

__all__ = ["comfy", "folder_paths", "nodes_model_patch"]
