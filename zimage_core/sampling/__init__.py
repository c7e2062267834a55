"""Flow-matching sampling: sigma schedules, the samplers, and the loop that runs the DiT over them.

- schedules.py  sigma schedules (Z-Image's shifted flow schedule and the ComfyUI schedulers), denoise
- samplers.py   the samplers (Euler, Heun, DPM++, res_multistep, ... as ComfyUI names them)
- loop.py       Guidance (CFG), Denoiser, sample / sample_euler: the sampling loop

Builds on `zimage_core.model`. The loop's names are importable from here (`from zimage_core.sampling import
sample_euler`, as before the package was split).
"""
from .loop import Denoiser, Guidance, StepCallback, initial_latent, sample, sample_euler

__all__ = ["Denoiser", "Guidance", "StepCallback", "initial_latent", "sample", "sample_euler"]
