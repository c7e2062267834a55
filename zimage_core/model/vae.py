"""The Flux VAE (BFL / LDM "AutoencoderKL"): 3-channel images <-> 16-channel latents, 8x down-sampling.

Module and parameter names are those of BFL's `ae.safetensors` (`encoder.down.0.block.0.conv1.weight`,
`encoder.mid.attn_1.q.weight`, `decoder.up.3.upsample.conv.weight`, ...). diffusers `AutoencoderKL` weights
are renamed on load (`diffusers_to_bfl`); `bfl_to_diffusers` is the inverse, used to write test files.

Latents here are always in the VAE's raw space; the Flux scale/shift (0.3611 / 0.1159) lives only in
`latent.py`. Numerics follow diffusers `AutoencoderKL` (fp32 relative error ~1e-6), including how
`latent_dist.sample(generator)` draws its noise.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from ..weights.checkpoint import WeightSource, identify, wrong_model_error

NORM_GROUPS = 32
SCALE = 8  # pixels per latent cell (three stride-2 down-samplings)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # inference: no extra full-resolution buffers for SiLU and the sum
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return h.add_(x) if inplace else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 convs as projections)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B,C,H,W] -> [B,1,H*W,C]
        q, k, v = (p(y).reshape(b, 1, c, h * w).transpose(2, 3) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: right and bottom only


# Nearest 2x upsampling then a 3x3 conv, along one axis: output row 2i+a reads the upsampled rows
# 2i+a-1 .. 2i+a+1, i.e. input rows (i-1, i, i) for a=0 and (i, i, i+1) for a=1. So each output phase is a
# 2-tap filter of the input whose taps are sums of the 3 taps: _PHASE_TAPS[a] maps 3 taps to 2.
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],   # a=0: input offsets (-1, 0)
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # a=1: input offsets (0, +1)


class Upsample(nn.Module):
    """`conv3x3(nearest_upsample_2x(x))` computed without the upsampled tensor: the four output phases
    (row parity a, column parity b) are one 2x2 conv of the input with 4x the output channels, whose taps
    are sums of the 3x3 taps (taken in fp32). 2.25x fewer multiply-adds, the same memory (the 4-phase
    output is as large as the upsampled input was); equal to the reference up to float rounding (~2e-6
    relative). The parameters stay the checkpoint's."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        w, bias = self.conv.weight, self.conv.bias
        co = w.shape[0]
        taps = _PHASE_TAPS.to(w.device)
        w4 = torch.einsum("ary,oiyx,bcx->aboirc", taps, w.float(), taps).reshape(4 * co, -1, 2, 2)
        w4 = w4.to(w.dtype).contiguous(memory_format=torch.channels_last)
        # out[:, 4 phases * co, i, j]: phase (a, b) at input position (i, j) is at row i + a, column j + b
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), w4, None if bias is None else bias.repeat(4))
        y = y.permute(0, 2, 3, 1)  # [B, H+1, W+1, 4*co], channels-last memory: no copy
        out = torch.empty(B, H, 2, W, 2, co, dtype=y.dtype, device=y.device)
        for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[:, :, a, :, b] = y[:, a:a + H, b:b + W, k * co:(k + 1) * co]
        return out.view(B, 2 * H, 2 * W, co).permute(0, 3, 1, 2)  # [B, co, 2H, 2W], channels-last


class Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


@dataclass(frozen=True)
class VAEConfig:
    channels: tuple[int, ...]  # width of each resolution level, e.g. (128, 256, 512, 512)
    num_res_blocks: int  # resnet blocks per encoder level (the decoder has one more)
    z_channels: int = 16
    in_channels: int = 3
    out_channels: int = 3
    quant_conv: bool = False
    post_quant_conv: bool = False

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "VAEConfig":
        """The architecture read off BFL-named tensor shapes (KeyError when a needed tensor is absent)."""
        levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
        return cls(
            channels=tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels),
            num_res_blocks=len(blocks),
            z_channels=shapes["decoder.conv_in.weight"][1],
            in_channels=shapes["encoder.conv_in.weight"][1],
            out_channels=shapes["decoder.conv_out.weight"][0],
            quant_conv="quant_conv.weight" in shapes,
            post_quant_conv="post_quant_conv.weight" in shapes,
        )


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(prev, c))
                prev = c
            if i != len(ch) - 1:
                level.downsample = Downsample(c)
            self.down.append(level)
        self.mid = Mid(ch[-1])
        self.norm_out = _norm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.z_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.z_channels, ch[-1], 3, padding=1)
        self.mid = Mid(ch[-1])
        # up[i] works at the resolution of encoder level i; it runs from the last index to 0.
        up = []
        prev = ch[-1]
        for i in reversed(range(len(ch))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(prev, ch[i]))
                prev = ch[i]
            if i != 0:
                level.upsample = Upsample(ch[i])
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


Generator = torch.Generator | list[torch.Generator] | None


class FluxVAE(nn.Module):
    """Encoder + decoder. Public methods take/return float32 tensors and compute in the parameters' dtype."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1) if cfg.quant_conv else None
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1) if cfg.post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_in.weight.device

    def _check(self, x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != channels:
            raise InputError(f"VAE {what}: expected a [B,{channels},H,W] tensor, got shape {tuple(x.shape)}.")
        # channels-last: the convolutions (~90% of the time) run 10-15% faster on CPU (oneDNN) and use the
        # tensor cores' native layout on GPUs
        return x.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)

    # ---- raw passes (compute dtype in, compute dtype out) ----

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] -> [B,2*z,H/8,W/8] (mean, logvar)."""
        m = self.encoder(x)
        return self.quant_conv(m) if self.quant_conv is not None else m

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _latent(self, moments: torch.Tensor, generator: Generator) -> torch.Tensor:
        """The mean, or a sample drawn exactly as diffusers' `DiagonalGaussianDistribution.sample`."""
        mean, logvar = moments.chunk(2, dim=1)
        if generator is None:
            return mean.float()
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        # Noise is drawn on the generator's device in the compute dtype (per sample for a list of generators).
        if isinstance(generator, list):
            if len(generator) != mean.shape[0]:
                raise InputError(f"VAE encode: {len(generator)} generators for a batch of {mean.shape[0]}.")
            noise = torch.cat([
                torch.randn((1, *mean.shape[1:]), generator=g, device=g.device, dtype=mean.dtype) for g in generator
            ]).to(mean.device)
        else:
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
            noise = noise.to(mean.device)
        return (mean + std * noise).float()

    # ---- public API ----

    @torch.no_grad()
    def encode(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """image [B,3,H,W] in [-1,1] -> raw latent [B,16,H/8,W/8]: the mean, or a sample when a generator is given."""
        return self._latent(self._moments(self._check(image, self.cfg.in_channels, "encode")), generator)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """raw latent [B,16,h,w] -> image [B,3,8h,8w], about [-1,1] (not clamped), float32."""
        return self._decode(self._check(latent, self.cfg.z_channels, "decode")).float()

    def decode_bytes(self, latent_shape: tuple[int, ...]) -> int:
        """Peak working memory of an untiled `decode` of a latent of this shape: about 8 activations of the
        full-resolution first level (measured 7.8-8.3x on the CPU at 256-512 px); 10x for a margin."""
        b, _, h, w = latent_shape
        elt = torch.finfo(self.dtype).bits // 8
        return 10 * b * (h * SCALE) * (w * SCALE) * self.cfg.channels[0] * elt

    @torch.no_grad()
    def decode_tiled(self, latent: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
        """`decode` in overlapping tiles of `tile` latent cells (`overlap` cells shared), blended linearly."""
        z = self._check(latent, self.cfg.z_channels, "decode")
        return _tiled(self._decode, z, z.shape[-2:], tile, overlap, 1, SCALE, self.cfg.out_channels)

    @torch.no_grad()
    def encode_tiled(
        self, image: torch.Tensor, tile: int = 512, overlap: int = 128, generator: Generator = None
    ) -> torch.Tensor:
        """`encode` in overlapping tiles of `tile` pixels (`overlap` shared); the moments are blended linearly,
        then the mean or a sample is taken. H, W, tile and overlap must be multiples of 8."""
        x = self._check(image, self.cfg.in_channels, "encode")
        if any(v % SCALE for v in (*x.shape[-2:], tile, overlap)):
            raise InputError(
                f"VAE encode_tiled: image size {tuple(x.shape[-2:])}, tile {tile} and overlap {overlap} "
                f"must be multiples of {SCALE}."
            )
        # Tiles are placed on the latent grid so that every tile starts on a latent cell.
        grid = (x.shape[2] // SCALE, x.shape[3] // SCALE)
        moments = _tiled(self._moments, x, grid, tile // SCALE, overlap // SCALE, SCALE, 1, 2 * self.cfg.z_channels)
        return self._latent(moments.to(self.dtype), generator)


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spread [start, end) windows of size `tile` covering `length`, neighbours sharing >= `overlap`."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [(s, s + tile) for s in (round(i * (length - tile) / (n - 1)) for i in range(n))]


def _ramp(spans: list[tuple[int, int]], i: int, scale: int) -> torch.Tensor:
    """1-D blending weight of window i (in output units): linear fall-off across the parts shared with its
    neighbours, 1 elsewhere. Weights of two neighbours sum to 1 over their overlap."""
    s, e = spans[i]
    w = torch.ones((e - s) * scale)
    if i > 0 and (n := (spans[i - 1][1] - s) * scale) > 0:  # shared with the previous window
        w[:n] = torch.minimum(w[:n], (torch.arange(n) + 0.5) / n)
    if i < len(spans) - 1 and (n := (e - spans[i + 1][0]) * scale) > 0:  # shared with the next window
        w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n) + 0.5) / n)
    return w


def _tiled(fn, source, grid, tile, overlap, in_scale, out_scale, out_channels) -> torch.Tensor:
    """Run `fn` on overlapping windows of `source` and blend the outputs with linear weights.

    Windows are laid out on a `grid` (h, w) of latent cells: a cell is `in_scale` source pixels and
    `out_scale` output pixels; `tile` and `overlap` count cells."""
    if not 0 <= overlap < tile:
        raise InputError(f"VAE tiling: need 0 <= overlap < tile, got tile {tile}, overlap {overlap}.")
    (h, w), b, dev = grid, source.shape[0], source.device
    rows, cols = _spans(h, tile, overlap), _spans(w, tile, overlap)
    out = torch.zeros(b, out_channels, h * out_scale, w * out_scale, device=dev, dtype=torch.float32)
    weight = torch.zeros(1, 1, h * out_scale, w * out_scale, device=dev, dtype=torch.float32)
    ss, os_ = in_scale, out_scale
    for i, (y0, y1) in enumerate(rows):
        wy = _ramp(rows, i, os_).to(dev)
        for j, (x0, x1) in enumerate(cols):
            wx = _ramp(cols, j, os_).to(dev)
            wt = wy[:, None] * wx[None, :]  # [h_tile, w_tile] in output units
            y = fn(source[:, :, y0 * ss : y1 * ss, x0 * ss : x1 * ss]).float()
            out[:, :, y0 * os_ : y1 * os_, x0 * os_ : x1 * os_] += y * wt
            weight[:, :, y0 * os_ : y1 * os_, x0 * os_ : x1 * os_] += wt
    return out / weight


# ---- key names: BFL <-> diffusers ----

_ATTN_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_BFL = {v: k for k, v in _ATTN_DIFFUSERS.items()} | {
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",  # older diffusers names
}


def bfl_key_to_diffusers(key: str, levels: int) -> str:
    """One BFL `ae.safetensors` name -> its diffusers `AutoencoderKL` name (`levels`: resolution levels)."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key  # quant_conv / post_quant_conv
    if m := re.match(r"down\.(\d+)\.block\.(\d+)\.(.*)", rest):
        rest = f"down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    elif m := re.match(r"down\.(\d+)\.downsample\.(.*)", rest):
        rest = f"down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    elif m := re.match(r"up\.(\d+)\.block\.(\d+)\.(.*)", rest):
        rest = f"up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    elif m := re.match(r"up\.(\d+)\.upsample\.(.*)", rest):
        rest = f"up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    elif m := re.match(r"mid\.block_([12])\.(.*)", rest):
        rest = f"mid_block.resnets.{int(m[1]) - 1}.{m[2]}"
    elif m := re.match(r"mid\.attn_1\.(\w+)\.(.*)", rest):
        rest = f"mid_block.attentions.0.{_ATTN_DIFFUSERS.get(m[1], m[1])}.{m[2]}"
    elif rest.startswith("norm_out."):
        rest = "conv_" + rest
    return f"{part}.{rest.replace('.nin_shortcut.', '.conv_shortcut.')}"


def diffusers_key_to_bfl(key: str, levels: int) -> str:
    """One diffusers `AutoencoderKL` name -> its BFL name (inverse of `bfl_key_to_diffusers`)."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        rest = f"down.{m[1]}.block.{m[2]}.{m[3]}"
    elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.*)", rest):
        rest = f"down.{m[1]}.downsample.{m[2]}"
    elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        rest = f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
        rest = f"up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.match(r"mid_block\.resnets\.([01])\.(.*)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{m[2]}"
    elif m := re.match(r"mid_block\.attentions\.0\.(to_out\.0|\w+)\.(.*)", rest):
        rest = f"mid.attn_1.{_ATTN_BFL.get(m[1], m[1])}.{m[2]}"
    elif rest.startswith("conv_norm_out."):
        rest = rest[len("conv_"):]
    return f"{part}.{rest.replace('.conv_shortcut.', '.nin_shortcut.')}"


def _diffusers_levels(keys) -> int:
    return 1 + max((int(m[1]) for k in keys if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=0)


def _is_attn_proj(bfl_key: str) -> bool:
    return bool(re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", bfl_key))


def bfl_to_diffusers(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A BFL state dict renamed for diffusers; attention projections become Linear weights [C,C]."""
    return {
        bfl_key_to_diffusers(k, levels): t.flatten(1) if _is_attn_proj(k) else t for k, t in sd.items()
    }


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers state dict renamed for BFL; attention projections become 1x1 conv weights [C,C,1,1]."""
    levels = _diffusers_levels(sd)
    out = {}
    for k, t in sd.items():
        k = diffusers_key_to_bfl(k, levels)
        out[k] = t.reshape(*t.shape[:2], 1, 1) if _is_attn_proj(k) and t.ndim == 2 else t
    return out


def _is_diffusers(keys) -> bool:
    return any(".down_blocks." in k or ".up_blocks." in k or ".mid_block." in k for k in keys)


# ---- loading ----

WANTED = "a Flux VAE (ae.safetensors)"


def _vae_prefix(src: WeightSource) -> str:
    """The prefix in front of the Flux VAE's keys ('' or e.g. 'vae.', 'first_stage_model.'); raises a
    wrong-model error when the file has no Flux VAE."""
    keys = src.keys()
    whole = identify(keys, src.shape)
    anchor = "decoder.conv_in.weight"
    prefixes = sorted({k[: -len(anchor)] for k in keys if k.endswith(anchor)}, key=len)
    for p in prefixes:
        if p and not p.endswith("."):
            continue
        sub = [k for k in keys if k.startswith(p)]
        if identify(sub, src.shape).kind == "vae":
            return p
    raise wrong_model_error(src, WANTED, whole)


def _list(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> FluxVAE:
    """Load the Flux VAE from BFL `ae.safetensors` (optionally with a `vae.`/`first_stage_model.` prefix, also
    inside a bigger checkpoint), a diffusers `vae/` folder, a whole diffusers model folder, or a single file
    with diffusers names. The architecture comes from the tensor shapes."""
    path = Path(path)
    if path.is_dir() and (path / "vae").is_dir() and not list(path.glob("*.safetensors")):
        path = path / "vae"
    src = WeightSource(path)
    prefix = _vae_prefix(src)
    names = {k[len(prefix):]: k for k in src.keys() if k.startswith(prefix)}  # own name -> file key

    # Names and shapes first (no tensor is read) to infer the architecture.
    if _is_diffusers(names):
        levels = _diffusers_levels(names)
        names = {diffusers_key_to_bfl(k, levels): f for k, f in names.items()}
    shapes = {k: src.shape(f) for k, f in names.items()}
    shapes = {k: (*s[:2], 1, 1) if _is_attn_proj(k) and len(s) == 2 else s for k, s in shapes.items()}
    try:
        cfg = VAEConfig.from_shapes(shapes)
    except KeyError as e:
        raise CheckpointError(f"{src.describe()}: incomplete Flux VAE, tensor {e} is missing.") from None

    with torch.device("meta"):
        model = FluxVAE(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {shapes[k]} (expected {expected[k]})" for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} ({_list(v)})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong)) if v]
        raise CheckpointError(f"{src.describe()}: Flux VAE tensors do not match the architecture: {'; '.join(parts)}.")

    # Read tensor by tensor, converting each straight to the target dtype/device: peak RAM ~ one model copy.
    # (reshape: diffusers' attention Linear [C,C] -> conv [C,C,1,1]; a no-op elsewhere)
    sd = {k: src.get(f).reshape(expected[k]).to(device=device, dtype=dtype) for k, f in names.items()}
    model.load_state_dict(sd, assign=True)
    return model.to(memory_format=torch.channels_last).eval().requires_grad_(False)
