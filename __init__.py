"""Z-Image nodes for ComfyUI (S3-DiT, Z-Image / Z-Image-Turbo).

ComfyUI imports this folder as a package under a path-derived name, so everything inside the pack uses
relative imports (ComfyUI has its own top-level `nodes` module). `zimage_core` is the ComfyUI-free core;
`nodes/host.py` is the only module that talks to ComfyUI.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
