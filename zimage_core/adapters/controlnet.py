"""Z-Image-Turbo-Fun-Controlnet-Union (alibaba-pai / VideoX-Fun) as diffusers' `ZImageControlNetModel` runs it.

A control branch of transformer blocks beside the DiT. Its hints are added to the DiT's hidden states after
some of the main layers, over the WHOLE unified [image ‖ caption] sequence (ComfyUI's native
`ZImageFunControlnet` adds them to image tokens only). The branch shares the DiT's embedders, refiners,
rotary tables and timestep conditioning; it owns only `control_all_x_embedder`, `control_layers` and
(variants) `control_noise_refiner`.

One step, per sample (shapes for a batch of B, Np padded image tokens, S = Np + Lp unified tokens, D = dim):
    control latent [Cc, H, W] -> 2x2 patches -> control_all_x_embedder -> pad rows = x_pad_token   c: [B, Np, D]
    refiner phase (variant):
      "plain"      (1.0):  c <- control_noise_refiner blocks (plain modulated blocks) over c alone;
                           the branch's image tokens x are the DiT's own after its noise_refiner.
      "layers"     (2.0):  the control_layers run over c with x = embedded image tokens (before the refiner)
                           and give one hint per noise_refiner layer; the branch's x is then the noise_refiner
                           output with those hints added (the DiT's own noise_refiner output is untouched).
      "refiner"    (2.1):  as 2.0 with the separate control_noise_refiner control blocks.
    main phase: c_u = [c ‖ caption tokens], x_u = [branch x ‖ caption tokens]  [B, S, D]
      control block k: c_u <- block(c_u (+ before_proj(c_u) + x_u for k = 0)); hint_k = after_proj(c_u)
      DiT layer places[k] output += scale * hint_k
A control block is a modulated DiT block with `before_proj` (block 0 only) and `after_proj`. Places: the
released files hold n control layers evenly spaced over the DiT's layers, every round(n_layers / n) (1.0:
6 -> 0, 5, ..., 25; 2.x: 15 -> 0, 2, ..., 28; lite: 3 -> 0, 10, 20); refiner hints go to every noise_refiner
layer. Key names are diffusers' (`attention.to_q/to_k/to_v`, `to_out.0`, `norm_q/norm_k`) in both the
VideoX-Fun originals and diffusers files; q/k/v are fused into our `attention.qkv` on load.

The variant is read from the file: no `control_noise_refiner` or an all-zero
`control_noise_refiner.0.before_proj` -> "layers" (2.0 ships an untrained, zero refiner); a trained
`before_proj` -> "refiner"; refiner blocks without `before_proj` -> "plain". `control_in_dim` is 16 (the
control latent) or 33 (control latent ‖ 1-channel keep mask ‖ masked-image latent: the inpaint-capable 2.x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..model.dit_loader import FP8_DTYPES, default_dtypes
from ..model.latent import to_model_space
from ..model.transformer import DiTConfig, TransformerBlock, ZImageDiT
from ..weights.checkpoint import WeightSource, strip_prefix
from ..weights.ops import Linear

VARIANTS = ("plain", "layers", "refiner")
TOKENS = ("unified", "image")
IMAGE_TOKENS = """ComfyUI's ZImageFunControlnet (comfy_extras/nodes_model_patch.py, ZImageControlPatch), as
`tokens="image"` runs it: the branch sees the image tokens only (h*w of them, no padding rows, no caption),
x = the DiT's image tokens; the refiner phase (2.1, lite, tile: control_noise_refiner; 2.0 files, whose refiner
is all zero: control_layers[0] and then control_layers[1:] in a row) adds its hints to the DiT's OWN
noise_refiner output (the reference feeds them only to the branch's copy); the main phase continues the same
branch state over the first unified hidden states' image part, and each hint is added to the image tokens
only. A 33-channel file without inpaint input gets a zero keep-mask and the latent of a gray picture there (the
reference: zeros), and control images are resized with 'area' (the reference: bicubic)."""
_QKV = (".attention.to_q.weight", ".attention.to_k.weight", ".attention.to_v.weight")


@dataclass(frozen=True)
class ControlNetConfig:
    dim: int
    n_heads: int
    ffn_dim: int
    control_in_dim: int  # 16, or 33 for the inpaint-capable 2.x files
    n_control_layers: int
    variant: str  # 'plain' (1.0), 'layers' (2.0), 'refiner' (2.1)
    n_refiner_layers: int = 2
    patch_size: int = 2

    def dit_config(self) -> DiTConfig:
        """The block sizes (a DiT config whose blocks equal the control blocks)."""
        return DiTConfig(dim=self.dim, n_layers=1, n_refiner_layers=self.n_refiner_layers, n_heads=self.n_heads,
                         ffn_dim=self.ffn_dim, cap_feat_dim=self.dim)

    def places(self, n_dit_layers: int) -> list[int]:
        """The DiT layers that receive the hints: evenly spaced, as in the released configs."""
        step = max(1, round(n_dit_layers / self.n_control_layers))
        return [k * step for k in range(self.n_control_layers)]


class ControlBlock(TransformerBlock):
    """A modulated DiT block that takes the DiT's tokens in (block 0) and gives a hint out."""

    def __init__(self, cfg: DiTConfig, first: bool):
        super().__init__(cfg, modulation=True)
        self.before_proj = Linear(cfg.dim, cfg.dim) if first else None
        self.after_proj = Linear(cfg.dim, cfg.dim)

    def control(self, c, x, mask, rot, adaln_input):
        """(hint, c): c [B, S, D] the branch's state, x [B, S, D] the DiT's tokens at the same positions."""
        if self.before_proj is not None:
            c = self.before_proj(c) + x
        c = super().forward(c, mask, rot, adaln_input)
        return self.after_proj(c), c


class ZImageControlNet(nn.Module):
    def __init__(self, cfg: ControlNetConfig):
        super().__init__()
        self.cfg = cfg
        block = cfg.dit_config()
        p = cfg.patch_size
        self.control_all_x_embedder = nn.ModuleDict({f"{p}-1": Linear(p * p * cfg.control_in_dim, cfg.dim)})
        self.control_layers = nn.ModuleList(ControlBlock(block, k == 0) for k in range(cfg.n_control_layers))
        if cfg.variant == "plain":
            self.control_noise_refiner = nn.ModuleList(
                TransformerBlock(block, modulation=True) for _ in range(cfg.n_refiner_layers))
        elif cfg.variant == "refiner":
            self.control_noise_refiner = nn.ModuleList(
                ControlBlock(block, k == 0) for k in range(cfg.n_refiner_layers))
        else:
            self.control_noise_refiner = None

    def check_fits(self, dit: ZImageDiT, where: str = "ControlNet"):
        d = dit.cfg
        if (d.dim, d.n_heads, d.ffn_dim) != (self.cfg.dim, self.cfg.n_heads, self.cfg.ffn_dim):
            raise InputError(
                f"{where}: a ControlNet of width {self.cfg.dim} ({self.cfg.n_heads} heads) does not fit this DiT "
                f"(width {d.dim}, {d.n_heads} heads); use the ControlNet made for this Z-Image model.")
        if self.cfg.variant != "plain" and self.cfg.n_refiner_layers != d.n_refiner_layers:
            raise InputError(f"{where}: the ControlNet has {self.cfg.n_refiner_layers} refiner layers, the DiT "
                             f"{d.n_refiner_layers}.")

    def embed(self, latent: torch.Tensor, dtype, pad: torch.Tensor) -> torch.Tensor:
        """[Cc, H, W] control latent -> [Np, D] tokens, padding rows = the DiT's x_pad_token."""
        C, H, W = latent.shape
        p = self.cfg.patch_size
        patches = latent.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape(-1, p * p * C)
        emb = self.control_all_x_embedder[f"{p}-1"](patches.to(dtype))
        n = len(emb)
        return torch.cat([emb, pad.expand(n + (-n) % 32 - n, -1)])


@dataclass
class Control:
    """One ControlNet applied with one control latent.

    latent: [1 or B, control_in_dim, H, W] in model space at the DiT's latent size, or a function
    (H, W) -> such a latent (encoded on first use for the size being generated, then kept);
    scale: conditioning scale; start/end: the part of the denoising where it acts, as model time
    t = 1 - sigma (0 = the first, pure-noise step; the pack's convention, as for cfg_truncation);
    mask: optional [1 or B, 1, H, W] in 0..1 that scales the hint on image tokens (caption tokens keep it);
    tokens: "unified" (the reference: the branch runs over [image ‖ caption] and its hints are added to the
    whole sequence) or "image" (ComfyUI's ZImageFunControlnet: see `IMAGE_TOKENS`).
    """

    net: ZImageControlNet
    latent: torch.Tensor | Callable[[int, int], torch.Tensor]
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: torch.Tensor | None = None
    tokens: str = "unified"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise InputError(f"ControlNet start {self.start} and end {self.end} must satisfy 0 <= start <= end <= 1.")
        if self.tokens not in TOKENS:
            raise InputError(f"ControlNet tokens {self.tokens!r}; expected one of {', '.join(TOKENS)}.")
        if torch.is_tensor(self.latent):
            self._check(self.latent)

    def _check(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim != 4 or latent.shape[1] != self.net.cfg.control_in_dim:
            raise InputError(f"control latent of shape {tuple(latent.shape)}; this ControlNet takes "
                             f"[B, {self.net.cfg.control_in_dim}, H, W].")
        return latent

    def latent_for(self, height: int, width: int) -> torch.Tensor:
        if torch.is_tensor(self.latent):
            return self.latent
        if (height, width) not in self._cache:
            self._cache.clear()
            self._cache[(height, width)] = self._check(self.latent(height, width))
        return self._cache[(height, width)]

    def active(self, sigma: float) -> bool:
        return self.scale != 0 and self.start <= 1.0 - float(sigma) <= self.end


class ControlPatch:
    """A `PatchedDiT` patch (see patching.py) that adds controls to every step where they are active.
    host: the ComfyUI ModelPatcher of the ControlNet, loaded together with the DiT (None standalone)."""

    def __init__(self, controls: list[Control], host=None):
        self.controls = list(controls)
        self.host = host

    def install(self, dit):
        for c in self.controls:
            c.net.check_fits(dit)

    def uninstall(self, dit):
        pass

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        active = [c for c in self.controls if c.active(sigma)]
        return {"control": ControlStep(active)} if active else {}


@dataclass
class ControlStep:
    """What `ZImageDiT.forward` hands to the controls (the `control=` argument) at one step."""

    controls: list[Control] = field(default_factory=list)
    _state: dict = field(default_factory=dict, repr=False, compare=False)  # image-token branches between phases

    def __add__(self, other: ControlStep) -> ControlStep:
        return ControlStep(self.controls + other.controls)

    def refiner_hints(self, dit: ZImageDiT, x_pre, x_rot, n_img, sizes, c) -> dict[int, torch.Tensor]:
        """Hints {noise_refiner layer: [B, Np, D]} for the DiT's own image tokens (only `tokens="image"` controls
        have them); called before the noise_refiner, with its input x_pre and rotary table x_rot."""
        self._state.clear()
        out: dict[int, torch.Tensor] = {}
        for ctl in self.controls:
            if ctl.tokens != "image":
                continue
            hints, cc = _image_refiner(ctl, dit, x_pre, x_rot, n_img, sizes, c)
            self._state[id(ctl)] = cc
            for i, h in hints.items():
                h = F.pad(h, (0, 0, 0, x_pre.shape[1] - h.shape[1]))
                out[i] = h if i not in out else out[i] + h
        return out

    def __call__(self, dit: ZImageDiT, x_pre, x_mask, x_rot, x_ref, unified, mask, rot, context, n_img, sizes, c):
        """Hints {DiT layer: [B, S, D]} summed over the controls.

        x_pre / x_ref: [B, Np, D] image tokens before / after the DiT's noise_refiner (x_mask, x_rot theirs);
        unified: [B, S, D] the DiT's first unified hidden states (mask, rot theirs); n_img: padded image
        token counts per sample; sizes: (h, w) token grids.
        """
        hints: dict[int, torch.Tensor] = {}
        for ctl in self.controls:
            if ctl.tokens == "image":
                cc = self._state.pop(id(ctl), None)
                if cc is None:
                    cc = _image_refiner(ctl, dit, x_pre, x_rot, n_img, sizes, c)[1]
                found = _image_hints(ctl, dit, cc, unified, rot, sizes, c)
            else:
                found = _hints(ctl, dit, x_pre, x_mask, x_rot, x_ref, unified, mask, rot, context, n_img, sizes, c)
            for layer, h in found.items():
                hints[layer] = h if layer not in hints else hints[layer] + h
        return hints


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample token runs -> [B, S, D], zero-padded like the DiT's own batches (rotary tables are the DiT's)."""
    return nn.utils.rnn.pad_sequence(rows, batch_first=True)


def _per_sample(t: torch.Tensor, B: int, what: str) -> list[torch.Tensor]:
    if len(t) == B:
        return list(t.unbind(0))
    if len(t) == 1 or B % len(t) == 0:  # one for all, or the same batch repeated (CFG's positive | negative)
        return [t[b % len(t)] for b in range(B)]
    raise InputError(f"{len(t)} {what} for a batch of {B}; give one, or one per latent.")


def _hints(ctl: Control, dit: ZImageDiT, x_pre, x_mask, x_rot, x_ref, unified, mask, rot, context, n_img, sizes, c):
    net, dtype = ctl.net, dit.compute_dtype
    B = len(n_img)
    pad = dit.x_pad_token.to(device=x_pre.device, dtype=dtype)
    latents = _control_latents(ctl, dit, sizes, B, x_pre.device)
    cc = _pad([net.embed(lat, dtype, pad) for lat in latents])

    # refiner phase: the branch's own view of the image tokens
    x_branch = x_ref
    if net.cfg.variant == "plain":
        for blk in net.control_noise_refiner:
            cc = blk(cc, x_mask, x_rot, c)
    else:
        blocks = net.control_layers if net.cfg.variant == "layers" else net.control_noise_refiner
        ref_hints = []
        for blk in blocks:
            hint, cc = blk.control(cc, x_pre, x_mask, x_rot, c)
            ref_hints.append(hint)
        x_branch = x_pre
        for i, blk in enumerate(dit.noise_refiner):
            x_branch = blk(x_branch, x_mask, x_rot, c)
            if i < len(ref_hints):
                x_branch = x_branch + ctl.scale * ref_hints[i]

    # main phase over [image ‖ caption]
    if x_branch is x_ref:
        x_u = unified
    else:
        x_u = _pad([torch.cat([x_branch[b, : n_img[b]], context.tokens[b].to(dtype)]) for b in range(B)])
    cu = _pad([torch.cat([cc[b, : n_img[b]], context.tokens[b].to(dtype)]) for b in range(B)])
    image_scale = None
    if ctl.mask is not None:
        image_scale = _mask_tokens(ctl.mask.to(x_pre.device), B, sizes, unified.shape[1], dtype)
    out = {}
    for layer, blk in zip(net.cfg.places(dit.cfg.n_layers), net.control_layers):
        hint, cu = blk.control(cu, x_u, mask, rot, c)
        hint = hint * ctl.scale
        out[layer] = hint if image_scale is None else hint * image_scale
    return out


def _control_latents(ctl: Control, dit: ZImageDiT, sizes, B: int, device) -> list[torch.Tensor]:
    """The control latent of each sample, on `device`, checked against the sample's latent size."""
    p = dit.cfg.patch_size
    h0, w0 = sizes[0]
    latents = _per_sample(ctl.latent_for(h0 * p, w0 * p).to(device), B, "control latents")
    for lat, (h, w) in zip(latents, sizes):
        if tuple(lat.shape[-2:]) != (h * p, w * p):
            raise InputError(f"control latent {tuple(lat.shape[-2:])} for a latent of {(h * p, w * p)}; resize the "
                             "control image to the generated size.")
    return latents


def _image_latents(ctl: Control, dit: ZImageDiT, sizes, B: int, device) -> torch.Tensor:
    if len(set(sizes)) > 1:
        raise InputError("a ControlNet with tokens='image' needs latents of one size in a batch.")
    return torch.stack(_control_latents(ctl, dit, sizes, B, device))


def _image_refiner(ctl: Control, dit: ZImageDiT, x_pre, x_rot, n_img, sizes, c):
    """`IMAGE_TOKENS`, refiner phase: ({refiner layer: scaled hint [B, hw, D]}, branch state [B, hw, D])."""
    net, dtype = ctl.net, dit.compute_dtype
    hw = sizes[0][0] * sizes[0][1]
    lat = _image_latents(ctl, dit, sizes, len(n_img), x_pre.device)
    cc = torch.stack([net.embed(lt, dtype, dit.x_pad_token.to(device=x_pre.device, dtype=dtype))[:hw] for lt in lat])
    x, rot = x_pre[:, :hw], x_rot[:, :hw]
    hints = {}
    if net.cfg.variant == "plain":
        for blk in net.control_noise_refiner:
            cc = blk(cc, None, rot, c)
    elif net.cfg.variant == "refiner":
        for i, blk in enumerate(net.control_noise_refiner):
            hint, cc = blk.control(cc, x, None, rot, c)
            hints[i] = hint * ctl.scale
    else:  # 2.0: control_layers[0], then control_layers[1:] in a row giving the first one's hint
        hint, cc = net.control_layers[0].control(cc, x, None, rot, c)
        hints[0] = hint * ctl.scale
        rest = []
        for blk in net.control_layers[1:]:
            h, cc = blk.control(cc, x, None, rot, c)
            rest.append(h)
        if rest and dit.cfg.n_refiner_layers > 1:
            hints[1] = rest[0] * ctl.scale
    return hints, cc


def _image_hints(ctl: Control, dit: ZImageDiT, cc, unified, rot, sizes, c) -> dict[int, torch.Tensor]:
    """`IMAGE_TOKENS`, main phase: hints [B, S, D], zero outside the image tokens."""
    hw = sizes[0][0] * sizes[0][1]
    B, S = unified.shape[:2]
    x, xrot = unified[:, :hw], rot[:, :hw]
    image_scale = None
    if ctl.mask is not None:
        image_scale = _mask_tokens(ctl.mask.to(unified.device), B, sizes, hw, unified.dtype)
    out = {}
    for layer, blk in zip(ctl.net.cfg.places(dit.cfg.n_layers), ctl.net.control_layers):
        hint, cc = blk.control(cc, x, None, xrot, c)
        hint = hint * ctl.scale
        if image_scale is not None:
            hint = hint * image_scale
        out[layer] = F.pad(hint, (0, 0, 0, S - hw))
    return out


def _mask_tokens(mask: torch.Tensor, B: int, sizes, S: int, dtype) -> torch.Tensor:
    """[B, S, 1] weights: the mask averaged over each 2x2 patch on image tokens, 1 elsewhere (the padding rows
    of the image run and the caption tokens), so an all-ones mask is the same as none."""
    out = torch.ones(B, S, 1, dtype=dtype, device=mask.device)
    for b, (m, (h, w)) in enumerate(zip(_per_sample(mask, B, "control masks"), sizes)):
        m = m.reshape(-1, *m.shape[-2:])[:1].float()
        if tuple(m.shape[-2:]) != (2 * h, 2 * w):
            m = torch.nn.functional.interpolate(m[None], size=(2 * h, 2 * w), mode="bilinear", align_corners=False)[0]
        tok = torch.nn.functional.avg_pool2d(m[None], 2)[0].reshape(-1)  # [h * w], row-major like the patches
        out[b, : h * w, 0] = tok.to(dtype)
    return out


# ---------------------------------------------------------------------------------------- control images

@dataclass
class ControlImage:
    """A ControlNet with its control image, as a user gives it (node, CLI, pipeline).

    image: IMAGE [1 or B, H, W, 3] in 0..1 (canny, depth, pose, ... already made by a preprocessor);
    inpaint_image / inpaint_mask (inpaint-capable 33-channel files only): the image to inpaint and
    [1 or B, H, W] 0..1, 1 = repaint; mask: optional [1 or B, H, W] spatial weight of the control.
    Images are resized to the generated size (bicubic, antialiased) and encoded with the Flux VAE's mean,
    as diffusers' ZImageControlNet(Inpaint)Pipeline does; without an inpaint input a 33-channel file gets
    zeros there, as in diffusers' plain ControlNet pipeline.
    """

    net: ZImageControlNet
    image: torch.Tensor
    scale: float = 0.75
    start: float = 0.0
    end: float = 1.0
    mask: torch.Tensor | None = None
    inpaint_image: torch.Tensor | None = None
    inpaint_mask: torch.Tensor | None = None
    tokens: str = "unified"

    def __post_init__(self):
        extra = self.net.cfg.control_in_dim - 16
        if (self.inpaint_image is None) != (self.inpaint_mask is None):
            raise InputError("ControlNet inpainting needs both the image to inpaint and its mask (1 = repaint).")
        if self.inpaint_image is not None and extra != 17:
            raise InputError(f"this ControlNet ({self.net.source if hasattr(self.net, 'source') else 'file'}) has "
                             f"no inpaint input (control_in_dim {self.net.cfg.control_in_dim}); inpainting needs "
                             "a 2.0 or newer Union file (33 input channels).")

    def to_control(self, vae) -> Control:
        def latent(h: int, w: int) -> torch.Tensor:
            return control_latent(vae, self, h * 8, w * 8)

        mask = None if self.mask is None else self.mask.float().reshape(-1, 1, *self.mask.shape[-2:])
        return Control(self.net, latent, self.scale, self.start, self.end, mask, self.tokens)


def _resized_pixels(image: torch.Tensor, height: int, width: int, what: str, native: bool = False) -> torch.Tensor:
    """IMAGE [B, H, W, C>=3] 0..1 -> [B, 3, height, width] in -1..1 (bicubic; 'area' as ComfyUI's patch when
    native)."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"{what} of shape {tuple(image.shape)}; expected an IMAGE [B, H, W, 3] in 0..1.")
    pixels = image[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
    if pixels.shape[-2:] != (height, width):
        if native:
            pixels = F.interpolate(pixels, size=(height, width), mode="area")
        else:
            pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True).clamp(-1, 1)
    return pixels


@torch.no_grad()
def control_latent(vae, ctl: ControlImage, height: int, width: int) -> torch.Tensor:
    """Model-space control latent [B, control_in_dim, height/8, width/8] on the CPU, float32."""
    def encode(pixels):  # the mean of the latent distribution (diffusers' sample_mode="argmax")
        return to_model_space(vae.encode(pixels)).float().cpu()

    native = ctl.tokens == "image"
    latent = encode(_resized_pixels(ctl.image, height, width, "control image", native))
    extra = ctl.net.cfg.control_in_dim - latent.shape[1]
    if extra <= 0:
        return latent
    if ctl.inpaint_image is None:
        if native:  # ComfyUI's patch: no keep-mask (zeros) and the latent of a gray picture (0 in -1..1)
            gray = encode(torch.zeros(1, 3, height, width))
            return torch.cat([latent, latent.new_zeros(latent.shape[0], 1, *latent.shape[2:]),
                              gray.expand(latent.shape[0], -1, -1, -1)], dim=1)
        return torch.cat([latent, latent.new_zeros(latent.shape[0], extra, *latent.shape[2:])], dim=1)
    m = ctl.inpaint_mask.float().reshape(-1, 1, *ctl.inpaint_mask.shape[-2:])
    m = (F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False) >= 0.5).float()  # binarised
    init = encode(_resized_pixels(ctl.inpaint_image, height, width, "inpaint image", native) * (m < 0.5))
    keep = F.interpolate(1 - m, size=latent.shape[-2:], mode="nearest")
    n = max(len(latent), len(init), len(keep))
    rep = [t.repeat(n // len(t), 1, 1, 1) if len(t) < n else t for t in (latent, keep, init)]
    return torch.cat(rep, dim=1)


# ------------------------------------------------------------------------------------------------ loading

def read_config(shapes: dict[str, tuple[int, ...]], zero_before_proj, where: str) -> ControlNetConfig:
    """Sizes and variant from parameter shapes (native names)."""
    try:
        dim, patch_in = shapes["control_all_x_embedder.2-1.weight"]
        head_dim = shapes["control_layers.0.attention.q_norm.weight"][0]
        ffn_dim = shapes["control_layers.0.feed_forward.w1.weight"][0]
    except KeyError as e:
        raise CheckpointError(f"{where}: required tensor {e} is missing; not a complete Z-Image ControlNet.") from None
    n_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("control_layers."))
    refiner = {int(k.split(".")[1]) for k in shapes if k.startswith("control_noise_refiner.")}
    if not refiner or zero_before_proj():
        variant = "layers"
    elif "control_noise_refiner.0.before_proj.weight" in shapes:
        variant = "refiner"
    else:
        variant = "plain"
    if patch_in % 4:
        raise CheckpointError(f"{where}: control_all_x_embedder takes {patch_in} inputs; expected 2*2*channels.")
    return ControlNetConfig(dim=dim, n_heads=dim // head_dim, ffn_dim=ffn_dim, control_in_dim=patch_in // 4,
                            n_control_layers=n_layers, variant=variant,
                            n_refiner_layers=(1 + max(refiner)) if refiner else 2)


def _native_name(key: str) -> str:
    """diffusers attention names -> ours (the embedder keeps its diffusers-style name `control_all_x_embedder`)."""
    for a, b in ((".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
                 (".attention.norm_k.", ".attention.k_norm.")):
        key = key.replace(a, b)
    return key


def is_controlnet(keys) -> bool:
    return any(k.endswith("control_all_x_embedder.2-1.weight") for k in keys)


def load_controlnet(path: str | Path, weight_dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                    compute_device: str | torch.device | None = None) -> ZImageControlNet:
    """A Z-Image ControlNet from a VideoX-Fun / diffusers single file or a diffusers folder, any prefix,
    bf16/fp16/fp32/fp8 storage; sizes and variant from the file."""
    path = Path(path)
    src = WeightSource(path, mmap=True)
    keys = src.keys()
    if not is_controlnet(keys):
        from ..weights.checkpoint import identify, wrong_model_error

        raise wrong_model_error(src, "a Z-Image ControlNet (Z-Image-Turbo-Fun-Controlnet-Union)",
                                identify(keys, lambda k: src.shape(k)))
    prefix = strip_prefix(keys, ("model.diffusion_model.", "diffusion_model.", "controlnet.", "model."))
    # the branch's own tensors; a file that also carries the shared DiT parts keeps those in the DiT's file
    names = {k[len(prefix):]: k for k in keys if k.startswith(prefix + "control_")}
    zero_bp = "control_noise_refiner.0.before_proj.weight"

    def zero_before_proj() -> bool:
        return zero_bp in names and not bool(torch.count_nonzero(src.get(names[zero_bp])))

    sources, shapes = {}, {}
    for name, key in names.items():
        if name.endswith(_QKV[1:]):
            continue
        if name.endswith(_QKV[0]):
            base = name[: -len(_QKV[0])]
            parts = [names.get(base + q) for q in _QKV]
            if None in parts:
                raise CheckpointError(f"{src.describe()}: {base} lacks one of to_q/to_k/to_v.")
            sources[base + ".attention.qkv.weight"] = lambda parts=parts: torch.cat([src.get(k) for k in parts])
            shapes[base + ".attention.qkv.weight"] = (sum(src.shape(k)[0] for k in parts), src.shape(parts[0])[1])
            continue
        native = _native_name(name)
        sources[native] = lambda key=key: src.get(key)
        shapes[native] = src.shape(key)
    cfg = read_config(shapes, zero_before_proj, src.describe())
    if cfg.variant == "layers":  # 2.0's untrained refiner is not used (as diffusers drops it)
        sources = {k: v for k, v in sources.items() if not k.startswith("control_noise_refiner.")}
    with torch.device("meta"):
        net = ZImageControlNet(cfg)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(sources))
    unexpected = sorted(set(sources) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sources) if tuple(shapes[k]) != expected[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{src.describe()}: not a complete Z-Image ControlNet ({cfg.variant} variant, {cfg.n_control_layers} "
            f"control layers): missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}.")
    stored = src.dtype(names["control_layers.0.feed_forward.w1.weight"])
    storage, compute = default_dtypes(weight_dtype, stored, torch.device(compute_device or device))
    state = {}
    for name, make in sources.items():
        t = make()
        target = compute if (storage in FP8_DTYPES and (t.ndim < 2 or "norm" in name or "embedder" in name)) \
            else storage
        state[name] = t.to(device=device, dtype=target)
    net.load_state_dict(state, assign=True)
    net.compute_dtype = compute
    net.source = str(path)
    return net.eval().requires_grad_(False)
