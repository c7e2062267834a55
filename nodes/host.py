"""The host adapter: the ONLY module of the pack that imports ComfyUI (`folder_paths`, `comfy.*`, `latent_preview`).

Inside ComfyUI, model names come from ComfyUI's model folders, models take part in ComfyUI's memory
management (ModelPatcher + load_models_gpu), and sampling reports progress, previews and Cancel.
Without ComfyUI (unit tests, scripts) the same functions fall back to plain behaviour: a model name is a
filesystem path, everything runs on the CPU, progress and interrupt are no-ops. The node modules never
check which mode they are in.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from ..zimage_core.errors import InputError
from ..zimage_core.weights.offload import free_memory as free_memory_of

log = logging.getLogger("zimage_nodes")

try:  # ComfyUI puts its root on sys.path; outside ComfyUI these imports fail and we run standalone.
    import comfy.latent_formats  # type: ignore
    import comfy.model_management as mm  # type: ignore
    import comfy.model_patcher  # type: ignore
    import comfy.model_sampling  # type: ignore
    import comfy.samplers  # type: ignore
    import comfy.utils  # type: ignore
    import folder_paths  # type: ignore
    import latent_preview  # type: ignore

    IN_COMFYUI = True
except Exception:  # ImportError, or a half-importable ComfyUI on a foreign sys.path
    folder_paths = mm = latent_preview = None
    IN_COMFYUI = False

DIFFUSERS_PREFIX = "diffusers/"
# Which ComfyUI model folders each of our loaders lists (diffusers model folders are added to all three:
# load_dit / load_text_encoder / load_vae each find their component inside a whole diffusers folder).
KINDS = ("diffusion_models", "text_encoders", "vae")
# kinds whose entries may be model folders (config + safetensors) besides single files
FOLDER_KINDS = ("text_encoders", "model_patches", "controlnet")
# .gguf files: ComfyUI lists them only under the folder names ComfyUI-GGUF registers (same folders, .gguf
# extension); without ComfyUI-GGUF our loaders look for .gguf files in the plain folders themselves.
GGUF_KINDS = {"diffusion_models": "unet_gguf", "text_encoders": "clip_gguf"}


# ------------------------------------------------------------------------------------------ model names

def _subfolders(kind: str) -> list[str]:
    """Names of model folders (not files) directly inside ComfyUI's folders of `kind`."""
    out = []
    try:
        roots = folder_paths.get_folder_paths(kind)
    except Exception:  # kind not registered
        return out
    for root in roots:
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            p = os.path.join(root, entry)
            if os.path.isdir(p) and not entry.startswith(".") and _looks_like_model_folder(Path(p)):
                out.append(entry)
    return out


def _looks_like_model_folder(p: Path) -> bool:
    return (p / "model_index.json").is_file() or (p / "config.json").is_file() or any(p.glob("*.safetensors")) \
        or any(p.glob("*/*.safetensors"))


def _gguf_files(kind: str) -> dict[str, str]:
    """{name: full path} of the .gguf files of a kind (empty for kinds without GGUF models)."""
    gk = GGUF_KINDS.get(kind)
    if gk is None:
        return {}
    if gk in folder_paths.folder_names_and_paths:
        return {n: folder_paths.get_full_path(gk, n) for n in folder_paths.get_filename_list(gk)
                if n.lower().endswith(".gguf")}
    out: dict[str, str] = {}
    for root in folder_paths.get_folder_paths(kind):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in sorted(files):
                if f.lower().endswith(".gguf"):
                    full = os.path.join(dirpath, f)
                    out.setdefault(os.path.relpath(full, root), full)
    return out


def model_names(kind: str) -> list[str]:
    """The names a loader of `kind` offers: files in ComfyUI's `kind` folders, model folders in them, and
    diffusers model folders under `models/diffusers` as "diffusers/<folder>". Empty outside ComfyUI."""
    if not IN_COMFYUI:
        return []
    names = list(folder_paths.get_filename_list(kind))
    names += [n for n in sorted(_gguf_files(kind)) if n not in names]
    if kind == "text_encoders":  # Hugging Face text_encoder/ folders
        names += [n for n in _subfolders(kind) if n not in names]
    names += [DIFFUSERS_PREFIX + n for n in _subfolders("diffusers")]
    return names


def model_files(kinds: tuple[str, ...]) -> list[str]:
    """Files and model folders (e.g. a diffusers ControlNet folder) in ComfyUI's folders of these kinds, in
    order, without duplicates; empty outside ComfyUI."""
    if not IN_COMFYUI:
        return []
    names = []
    for kind in kinds:
        try:
            listed = folder_paths.get_filename_list(kind)
        except Exception:  # kind not registered in this ComfyUI
            continue
        names += [n for n in [*listed, *_subfolders(kind)] if n not in names]
    return names


def resolve_any(kinds: tuple[str, ...], name: str) -> Path:
    """`resolve` over several folder kinds: the first that lists `name`."""
    for kind in kinds[:-1]:
        try:
            return resolve(kind, name)
        except InputError:
            continue
    return resolve(kinds[-1], name)


def resolve(kind: str, name: str) -> Path:
    """The path of a model name chosen in a loader.

    Inside ComfyUI only names from ComfyUI's lists are accepted (never arbitrary paths from a workflow);
    standalone the name is a filesystem path."""
    if not IN_COMFYUI:
        p = Path(name).expanduser()
        if not p.exists():
            raise InputError(f"model '{name}' not found (outside ComfyUI a model name is a file or folder path).")
        return p
    if name.startswith(DIFFUSERS_PREFIX):
        folder = name[len(DIFFUSERS_PREFIX):]
        if folder in _subfolders("diffusers"):
            for root in folder_paths.get_folder_paths("diffusers"):
                if os.path.isdir(os.path.join(root, folder)):
                    return Path(root, folder)
    elif name in folder_paths.get_filename_list(kind):
        return Path(folder_paths.get_full_path_or_raise(kind, name))
    elif name in (gguf := _gguf_files(kind)):
        return Path(gguf[name])
    elif kind in FOLDER_KINDS and name in _subfolders(kind):
        for root in folder_paths.get_folder_paths(kind):
            if os.path.isdir(os.path.join(root, name)):
                return Path(root, name)
    folders = ", ".join(folder_paths.get_folder_paths(kind))
    raise InputError(f"model '{name}' is not in ComfyUI's '{kind}' list (folders: {folders}; diffusers model "
                     f"folders go in models/diffusers). Put the file there and refresh (press R) the node.")


def tokenizer_fallback_dirs(model_path: Path | None = None) -> list[Path]:
    """Where a single-file text encoder's tokenizer may also be: a 'tokenizer' folder beside the file, then
    ComfyUI's bundled Qwen tokenizer (comfy/text_encoders/qwen25_tokenizer)."""
    dirs = []
    if model_path is not None and Path(model_path).is_file():
        dirs.append(Path(model_path).parent / "tokenizer")
    if IN_COMFYUI:
        # `comfy` is a namespace package (no __file__); locate it through one of its modules
        dirs.append(Path(comfy.utils.__file__).parent / "text_encoders" / "qwen25_tokenizer")
    return dirs


# ---------------------------------------------------------------------------------------- devices, memory

_CPU = torch.device("cpu")


def devices(kind: str, force_cpu: bool = False) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for kind 'dit' | 'text_encoder' | 'vae'."""
    if not IN_COMFYUI or force_cpu:
        return _CPU, _CPU
    if kind == "dit":
        return mm.get_torch_device(), mm.unet_offload_device()
    if kind == "text_encoder":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    if kind == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    raise ValueError(kind)


def text_encoder_dtype(device: torch.device) -> torch.dtype:
    if not IN_COMFYUI or device.type == "cpu":
        return torch.float32
    return mm.text_encoder_dtype(device)


def vae_dtype(device: torch.device) -> torch.dtype:
    if not IN_COMFYUI or device.type == "cpu":
        return torch.float32
    try:
        return mm.vae_dtype(device, [torch.bfloat16, torch.float32])
    except Exception:
        return torch.float32


def total_memory(device: torch.device) -> int | None:
    """Total memory of a GPU in bytes (ComfyUI's view, honouring --reserve-vram); None for the CPU."""
    if not IN_COMFYUI or device.type == "cpu":
        return None
    return int(mm.get_total_memory(device))


def free_memory(device: torch.device) -> int | None:
    """Free memory on a device in bytes: ComfyUI's count inside ComfyUI, else the core's estimate."""
    if IN_COMFYUI:
        try:
            return int(mm.get_free_memory(device))
        except Exception:  # an exotic device ComfyUI cannot measure
            return None
    return free_memory_of(device)


def intermediate_device() -> torch.device:
    return mm.intermediate_device() if IN_COMFYUI else _CPU


class _Holder(torch.nn.Module):
    """What ModelPatcher manages: it sets attributes (device, memory counters) on the module it is given,
    which must not clash with our modules' own read-only properties (FluxVAE.device, HF models' .device)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module

    def get_dtype(self):
        for p in self.inner.parameters():
            return p.dtype
        return torch.float32


def manage(module: torch.nn.Module, kind: str, force_cpu: bool = False):
    """Wrap a loaded module (on its offload device) in a ComfyUI ModelPatcher; None standalone."""
    if not IN_COMFYUI:
        return None
    load, offload = devices(kind, force_cpu)
    return comfy.model_patcher.ModelPatcher(_Holder(module), load_device=load, offload_device=offload)


def load_to_device(patchers, memory_required: int = 0) -> None:
    """Ask ComfyUI to put these models on their load device (evicting others as needed)."""
    patchers = [p for p in patchers if p is not None]
    if not patchers or not IN_COMFYUI:
        return
    # force_full_load: what of the DiT stays on the GPU is the memory preset's decision (block streaming
    # brings in the rest), so ComfyUI loads the managed part whole. (Our layers would take a partial load:
    # they speak ComfyUI's cast-weights protocol, ops.HostCast, which the MODEL bridge relies on.)
    mm.load_models_gpu(patchers, memory_required=int(memory_required), force_full_load=True)


def module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return _CPU


# ------------------------------------------------------------------------------------ progress, interrupt

def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    if IN_COMFYUI:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """Per-step progress bar + latent preview; `update` also checks for Cancel."""

    def __init__(self, total: int, device: torch.device | None = None):
        self.total = total
        self.bar = comfy.utils.ProgressBar(total) if IN_COMFYUI else None
        self.previewer = None
        if IN_COMFYUI:
            try:
                self.previewer = latent_preview.get_previewer(device or mm.get_torch_device(),
                                                              comfy.latent_formats.Flux())
            except Exception as e:  # a broken preview must never stop sampling
                log.warning("Z-Image: no latent preview (%s)", e)
        self.steps_done = 0

    def update(self, step: int, x0: torch.Tensor | None = None) -> None:
        """step: steps done so far (1..total); x0: the model-space estimate of the clean latent."""
        self.steps_done = step
        check_interrupt()
        if self.bar is None:
            return
        preview = None
        if self.previewer is not None and x0 is not None:
            try:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1].float())
            except Exception as e:
                log.warning("Z-Image: latent preview failed (%s); continuing without previews", e)
                self.previewer = None
        self.bar.update_absolute(step, self.total, preview)


def progress(total: int, device: torch.device | None = None) -> Progress:
    return Progress(total, device)


# ------------------------------------------------------------------------------ ComfyUI's samplers, schedulers

def sampler_names(core: list[str]) -> list[str]:
    """KSampler's sampler list inside ComfyUI, the core's standalone."""
    return list(comfy.samplers.KSampler.SAMPLERS) if IN_COMFYUI else list(core)


def scheduler_names(core: list[str], own: str) -> list[str]:
    """Our own schedule `own` first, then KSampler's schedulers inside ComfyUI (the core's standalone)."""
    return [own] + list(comfy.samplers.KSampler.SCHEDULERS) if IN_COMFYUI else list(core)


def flow_model_sampling(shift: float):
    """ComfyUI's model_sampling for Z-Image as ModelSamplingAuraFlow sets it: discrete flow, multiplier 1."""
    class ModelSamplingAuraFlow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    ms = ModelSamplingAuraFlow()
    ms.set_parameters(shift=shift, multiplier=1.0)
    return ms


def calculate_sigmas(scheduler: str, steps: int, shift: float, denoise: float, sampler: str) -> torch.Tensor:
    """KSampler's schedule (its denoise rule and its penultimate-sigma drop for uni_pc/dpm_2 included)."""
    ms = flow_model_sampling(shift)

    class Patcher:  # what KSampler needs of a model to build its schedule
        def get_model_object(self, name):
            return ms

    return comfy.samplers.KSampler(Patcher(), steps, "cpu", sampler=sampler, scheduler=scheduler,
                                   denoise=denoise).sigmas.float()


class _FlowModel:
    """The model_wrap that ComfyUI's samplers call: model_sampling for the flow model and x0(x, sigma)."""

    def __init__(self, ms, x0_fn):
        self.x0_fn = x0_fn

        class Inner:
            model_sampling = ms

            def scale_latent_inpaint(self, sigma, noise, latent_image, **kw):
                return ms.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1)), noise, latent_image)

        class Patcher:
            def get_model_object(self, name):
                return ms

        self.inner_model, self.model_patcher = Inner(), Patcher()

    def __call__(self, x, sigma, model_options=None, seed=None):
        return self.x0_fn(x, sigma)


def run_sampler(name: str, x0_fn, noise: torch.Tensor, sigmas: torch.Tensor, seed: int, shift: float,
                latent_image: torch.Tensor | None, noise_mask: torch.Tensor | None, callback) -> torch.Tensor:
    """ComfyUI's sampler `name` (k-diffusion / UniPC through its KSAMPLER, so seed handling, noise scaling and
    the inpainting mask are ComfyUI's) on x0_fn(x, sigma[B]) -> x0. callback(step, x, x0) after each step."""
    ms = flow_model_sampling(shift)
    latent = torch.zeros_like(noise) if latent_image is None else latent_image
    return comfy.samplers.sampler_object(name).sample(
        _FlowModel(ms, x0_fn), sigmas.to(noise.device), {"seed": seed, "model_options": {}},
        lambda i, x0, x, total: callback(i, x, x0), noise, latent_image=latent, denoise_mask=noise_mask,
        disable_pbar=True)


# ------------------------------------------------------------------------------------------- MODEL bridge

def release_bridged(dit) -> None:
    """Before our own sampler runs the DiT: unpatch what ComfyUI patched into it for a MODEL made from it."""
    host_model = sys.modules.get(f"{__package__}.host_model")  # imported only once a MODEL was made
    if host_model is not None:
        host_model.release(dit)


def as_comfy_model(patched):
    """Our DiT (a PatchedDiT with its runtime patches) as a ComfyUI MODEL; see host_model.py."""
    if not IN_COMFYUI:
        raise InputError("a ComfyUI MODEL can only be made inside ComfyUI; outside it use the ZIMAGE_DIT with "
                         "ZImageSampler.")
    from . import host_model

    load, offload = devices("dit")
    return host_model.as_model(patched, load, offload)


def zimage_model_dit(model, what: str):
    """The PatchedDiT behind a MODEL made by ZImageDiTToModel (possibly cloned by other nodes since); any other
    MODEL gets a clear error naming `what` (the node and input) and the MODEL's family."""
    host_model = sys.modules.get(f"{__package__}.host_model")  # imported once a MODEL of ours was made
    patched = host_model.patched_of(model) if host_model is not None else None
    if patched is None:
        kind = host_model.describe(model) if host_model is not None else (
            f"a {type(getattr(model, 'model', model)).__name__} MODEL, not a Z-Image DiT")
        raise InputError(f"{what}: expected the MODEL of a Z-Image DiT made by ZImageDiTToModel; got {kind}.")
    return patched


def zimage_model_with(model, patched):
    """A clone of our MODEL (ComfyUI's patches on it kept) that runs `patched` (its runtime patches)."""
    return sys.modules[f"{__package__}.host_model"].with_patched(model, patched)
