"""zimage_core: a self-contained PyTorch implementation of Z-Image / Z-Image-Turbo.

S3-DiT transformer, Qwen3 text encoding, Flux VAE, flow-matching samplers, checkpoint loading for the
formats users have. Never imports ComfyUI.
"""

__version__ = "0.1.0"

from . import _moved

_moved.install()  # the flat layout's module names, for one release (see _moved.py)
