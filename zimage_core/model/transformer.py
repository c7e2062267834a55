"""The Z-Image S3-DiT (single-stream diffusion transformer).

Module and parameter names are those of the original/ComfyUI checkpoints (`x_embedder`, fused
`attention.qkv`, `attention.out`, `q_norm`/`k_norm`, `final_layer`), so a ComfyUI single file loads
without renaming and the diffusers layout is converted once at load time (see `dit_loader`).

Data flow of one forward (per sample, batched where sizes agree):
    caption feats (L, cap_dim) -> cap_embedder -> pad to Lp = 32k with cap_pad_token -> context_refiner
        (done once per prompt: `encode_context` -> `Context`)
    latent (16, H, W) -> 2x2 patches (N, 64) -> x_embedder -> pad to Np = 32k with x_pad_token -> noise_refiner
    [image run (Np), caption run (Lp)] -> 30 modulated layers -> final_layer -> first N tokens -> unpatchify

Time convention: the network takes t = 1 - sigma (0 = pure noise) and predicts x0 - noise.
`ZImageDiT.velocity` is the one place that converts this into the sampler's dx/dsigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..weights.ops import Linear, RMSNorm, cast_workspace
from .rope import ImagePositions, apply_rope, axes_dims_for, rope_angles

SEQ_MULTI_OF = 32  # image and caption token runs are padded to multiples of this
ADALN_EMBED_DIM = 256  # width of the timestep conditioning vector (min(dim, 256))
T_SCALE = 1000.0  # the network multiplies its time input t in [0, 1] by this

# mod_hook(stage, index, mod) -> mod: sees the adaLN modulation [B, 4*dim] of block `index` of
# stage 'noise_refiner' or 'layers' before it is split into (scale_msa, gate_msa, scale_mlp, gate_mlp).
ModHook = Callable[[str, int, torch.Tensor], torch.Tensor]

# block_hook(stage, index, x, x_input=..., n_img=..., vec=..., rot=...) -> x: runs after block `index` of
# stage 'noise_refiner' (x: image tokens [B, Np, dim]) or 'layers' (x: [B, Np + Lp, dim], the image run
# first, n_img = Np of it); x_input is the stage's input, vec the adaLN input [B, adaln_dim], rot the
# rotary table of x. Used by host adapters that forward another framework's block patches.
BlockHook = Callable[..., torch.Tensor]

# attention(q, k, v, mask) -> o replaces the scaled-dot-product attention of one block: q, k, v [B, H, S, Dh]
# (normed and rotated), mask None or a boolean key mask [B, 1, 1, S]; o [B, S, H * Dh] before `attention.out`.
AttentionFn = Callable[..., torch.Tensor]
# attention_for(stage, index) -> AttentionFn or None (plain attention): the attention of block `index` of stage
# 'context_refiner', 'noise_refiner' or 'layers'. Used by host adapters that forward another framework's attention
# override; the extra attentions of NAG and of a ControlNet branch stay plain.
AttentionFor = Callable[[str, int], "AttentionFn | None"]


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    ffn_dim: int = 10240  # int(dim / 3 * 8)
    cap_feat_dim: int = 2560
    in_channels: int = 16
    patch_size: int = 2
    t_mid_dim: int = 1024
    freq_dim: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 256.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_EMBED_DIM)

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        return axes_dims_for(self.head_dim)

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_channels


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoid(t * 1000) (cos first, 256-d, fp32) -> MLP -> [B, adaln_dim]."""

    def __init__(self, out_dim: int, mid_dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, mid_dim), nn.SiLU(), Linear(mid_dim, out_dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t * T_SCALE)[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = Linear(dim, 3 * dim, bias=False)  # rows: q | k | v
        self.out = Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(dim // n_heads, eps)
        self.k_norm = RMSNorm(dim // n_heads, eps)

    def forward(self, x, mask, rot, o_hook: Callable | None = None, attention: AttentionFn | None = None):
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.n_heads, -1).unbind(2)  # each [B, S, H, Dh]
        q = apply_rope(self.q_norm(q), rot)
        k = apply_rope(self.k_norm(k), rot)
        if attention is None:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
            o = o.transpose(1, 2).reshape(B, S, -1)
        else:
            o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        if o_hook is not None:  # NAG (see nag.py): sees q, k, v [B, S, H, Dh] and o [B, S, dim] before `out`
            o = o_hook(q, k, v, o)
        return self.out(o)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)

    def forward(self, x):
        if torch.is_grad_enabled():  # training: keep every intermediate for backward
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        # inference: SiLU and the product in place, two fewer [tokens, hidden] buffers to allocate (and to
        # fault in on the CPU) per block
        return self.w2(F.silu(self.w1(x), inplace=True).mul_(self.w3(x)))


class TransformerBlock(nn.Module):
    """Sandwich-norm block; modulated (noise_refiner, layers) or not (context_refiner)."""

    def __init__(self, cfg: DiTConfig, modulation: bool):
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.n_heads, 1e-5)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)
        self.attention_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        if modulation:
            self.adaLN_modulation = nn.Sequential(Linear(cfg.adaln_dim, 4 * cfg.dim))

    def forward(self, x, mask, rot, adaln_input=None, mod_hook: Callable | None = None, nag=None,
                attention: AttentionFn | None = None):
        if adaln_input is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, rot, attention=attention))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        mod = self.adaLN_modulation(adaln_input)  # [B, 4*dim], no SiLU before the linear
        if mod_hook is not None:
            mod = mod_hook(mod)
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod[:, None].chunk(4, dim=-1)  # each [B, 1, dim]
        # x + tanh(gate) * norm2(attention(norm1(x) * (1 + scale))), each norm fused with its multiply
        o_hook = nag.block_hook(self, scale_msa, gate_msa, scale_mlp, gate_mlp) if nag is not None else None
        attn = self.attention(self.attention_norm1.modulated(x, 1 + scale_msa), mask, rot, o_hook, attention)
        x = self.attention_norm2.gated_residual(x, attn, gate_msa.tanh())
        ffn = self.feed_forward(self.ffn_norm1.modulated(x, 1 + scale_mlp))
        return self.ffn_norm2.gated_residual(x, ffn, gate_mlp.tanh())


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, adaln_dim: int):
        super().__init__()
        self.linear = Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(adaln_dim, dim))

    def forward(self, x, c):
        scale = 1 + self.adaLN_modulation(c)[:, None]
        return self.linear(F.layer_norm(x, (x.shape[-1],), eps=1e-6) * scale)


@dataclass
class Context:
    """Caption tokens after the context refiner, per sample; constant across the steps of one prompt."""

    tokens: list[torch.Tensor]  # [Lp_i, dim]
    rot: list[torch.Tensor]  # rotary (cos, sin) [Lp_i, head_dim / 2, 2]

    def __len__(self) -> int:
        return len(self.tokens)

    def __add__(self, other: Context) -> Context:
        return Context(self.tokens + other.tokens, self.rot + other.rot)

    def repeat(self, n: int) -> Context:
        return Context(self.tokens * n, self.rot * n)

    def select(self, idx: list[int]) -> Context:
        return Context([self.tokens[i] for i in idx], [self.rot[i] for i in idx])


def _round_up(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


def _batch(rows: list[torch.Tensor], rot: list[torch.Tensor]):
    """Per-sample runs -> [B, S, ...] tensors; a key mask [B, 1, 1, S] only when lengths differ."""
    lens = [len(r) for r in rows]
    if all(n == lens[0] for n in lens):
        return torch.stack(rows), torch.stack(rot), None
    pad = nn.utils.rnn.pad_sequence
    mask = torch.arange(max(lens), device=rows[0].device)[None] < torch.tensor(lens, device=rows[0].device)[:, None]
    return pad(rows, batch_first=True), pad(rot, batch_first=True), mask[:, None, None]


class ZImageDiT(nn.Module):
    # Modules are registered in the order of ComfyUI's NextDiT (and of the checkpoints), here and in
    # TransformerBlock: host code that walks named_modules() in order behaves as on the native model (ComfyUI's
    # TrainLoraNode draws each adapter's random init from the global RNG in that order).
    def __init__(self, cfg: DiTConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.x_embedder = Linear(cfg.patch_dim, cfg.dim)
        self.noise_refiner = nn.ModuleList(TransformerBlock(cfg, True) for _ in range(cfg.n_refiner_layers))
        self.context_refiner = nn.ModuleList(TransformerBlock(cfg, False) for _ in range(cfg.n_refiner_layers))
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim, cfg.t_mid_dim, cfg.freq_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), Linear(cfg.cap_feat_dim, cfg.dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.layers = nn.ModuleList(TransformerBlock(cfg, True) for _ in range(cfg.n_layers))
        self.final_layer = FinalLayer(cfg.dim, cfg.patch_dim, cfg.adaln_dim)
        self._rope_cache: dict[tuple, torch.Tensor] = {}

    # -- positions ---------------------------------------------------------------------------------
    def _rope(self, key: tuple, make_ids: Callable[[], torch.Tensor]):
        if key not in self._rope_cache:
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            self._rope_cache[key] = rope_angles(make_ids(), self.cfg.axes_dims, self.cfg.rope_theta)
        return self._rope_cache[key]

    def caption_rope(self, lp: int, device):
        """Caption positions (k, 0, 0), k = 1..Lp (padding rows continue the count)."""

        def ids():
            k = torch.arange(1, lp + 1, device=device)
            return torch.stack([k, torch.zeros_like(k), torch.zeros_like(k)], dim=-1)

        return self._rope(("cap", lp, str(device)), ids)

    def image_rope(self, lp: int, ht: int, wt: int, device, positions: ImagePositions = ImagePositions()):
        """Image positions (Lp + 1, h, w) row-major (h, w placed by `positions`), then (0, 0, 0) for the padding
        rows."""

        def ids():
            h, w = positions.grid(ht, wt, device)
            grid = torch.stack([torch.full_like(h, lp + 1), h, w], dim=-1).reshape(-1, 3)
            pad = torch.zeros(_round_up(ht * wt) - ht * wt, 3, dtype=grid.dtype, device=device)
            return torch.cat([grid, pad])

        return self._rope(("img", lp, ht, wt, str(device), positions), ids)

    # -- text side ---------------------------------------------------------------------------------
    def encode_context(self, cap_feats: list[torch.Tensor], device: torch.device | None = None,
                       attention: AttentionFor | None = None) -> Context:
        """Caption features [L_i, cap_feat_dim] -> refined caption tokens (run once per prompt), computed on
        `device` (default: where the DiT's pad tokens are); `attention`: see `AttentionFor`."""
        with cast_workspace():
            return self._encode_context(cap_feats, device or self.x_pad_token.device, attention)

    def _encode_context(self, cap_feats: list[torch.Tensor], device: torch.device, attention) -> Context:
        cfg, dtype = self.cfg, self.compute_dtype
        for i, f in enumerate(cap_feats):
            if f.ndim != 2 or f.shape[-1] != cfg.cap_feat_dim or len(f) == 0:
                raise InputError(
                    f"caption features {i} have shape {tuple(f.shape)}; expected [L >= 1, {cfg.cap_feat_dim}] "
                    f"(the text encoder of this DiT has hidden size {cfg.cap_feat_dim})."
                )
        lens = [len(f) for f in cap_feats]
        emb = self.cap_embedder(torch.cat(cap_feats).to(device=device, dtype=dtype)).split(lens)
        pad = self.cap_pad_token.to(device=device, dtype=dtype)
        rows = [torch.cat([e, pad.expand(_round_up(n) - n, -1)]) for e, n in zip(emb, lens)]
        ropes = [self.caption_rope(len(r), device) for r in rows]
        y, rot, mask = _batch(rows, ropes)
        for i, blk in enumerate(self.context_refiner):
            y = blk(y, mask, rot, attention=attention and attention("context_refiner", i))
        return Context([y[i, : len(r)] for i, r in enumerate(rows)], ropes)

    # -- full forward ------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor | list[torch.Tensor],
        t: torch.Tensor,
        context: Context | list[torch.Tensor],
        mod_hook: ModHook | None = None,
        adaln_t: torch.Tensor | None = None,
        control: Callable[..., dict[int, torch.Tensor]] | None = None,
        nag=None,
        block_hook: BlockHook | None = None,
        device: torch.device | None = None,
        positions: ImagePositions = ImagePositions(),
        attention: AttentionFor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Network output (x0 - noise) for latents x at model time t = 1 - sigma.

        x: [B, 16, H, W] or a list of [16, H, W] / [16, 1, H, W] (sizes may differ); t: [B] in [0, 1];
        context: `encode_context(...)` or a list of caption features, one per sample (or one for all).
        adaln_t: a different time for the adaLN conditioning only (adaLN controls); default t.
        control: a ControlNet step (`controlnet.ControlStep`): given the image tokens before and after the
        noise_refiner and the first unified hidden states, it returns hints {layer: [B, S, dim]} that are added
        to the output of those layers; its optional `refiner_hints(...)` gives hints {i: [B, Np, dim]} added to
        the output of noise_refiner block i (ComfyUI-style image-token controls).
        nag: a `nag.NAGGuidance` (normalized attention guidance with a negative caption in the main layers).
        block_hook: see `BlockHook` (the image runs of all samples must then have one length).
        device: where to compute (default: where the pad tokens are; ComfyUI's MODEL passes its input's device,
        as its partial loading may leave any layer on the offload device).
        positions: where the image tokens sit on the rotary (h, w) axes (`rope.ImagePositions`; ScaleROPE).
        attention: replaces the attention of the DiT's own blocks (see `AttentionFor`).
        Returns float32 in the layout of x.
        """
        with cast_workspace():  # CPU weight casts reuse one buffer (see ops.cast_workspace)
            return self._forward(x, t, context, mod_hook, adaln_t, control, nag, block_hook,
                                 device or self.x_pad_token.device, positions, attention)

    def _forward(self, x, t, context, mod_hook, adaln_t, control, nag, block_hook, device, positions, attention):
        cfg, dtype = self.cfg, self.compute_dtype
        is_list = isinstance(x, (list, tuple))
        latents = [xi.squeeze(1) if xi.ndim == 4 else xi for xi in x] if is_list else list(x.unbind(0))
        if not isinstance(context, Context):
            context = self.encode_context(context, device, attention)
        B = len(latents)
        if len(context) == 1 and B > 1:
            context = context.repeat(B)
        if len(context) != B:
            raise InputError(f"{B} latents but {len(context)} captions; give one caption or one per latent.")
        t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1).expand(B)
        c = self.t_embedder(t if adaln_t is None else torch.as_tensor(adaln_t, device=device).reshape(-1).expand(B), dtype)

        # image tokens: [16, H, W] -> [N, 64] with (ph, pw, c) inside each patch, channel fastest
        p, sizes, patches = cfg.patch_size, [], []
        for xi in latents:
            C, H, W = xi.shape
            if C != cfg.in_channels or H % p or W % p:
                raise InputError(
                    f"latent of shape {tuple(xi.shape)}; expected [{cfg.in_channels}, H, W] with H and W even."
                )
            sizes.append((H // p, W // p))
            patches.append(xi.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape(-1, cfg.patch_dim))
        n_tok = [h * w for h, w in sizes]
        emb = self.x_embedder(torch.cat(patches).to(device=device, dtype=dtype)).split(n_tok)
        pad = self.x_pad_token.to(device=device, dtype=dtype)
        img = [torch.cat([e, pad.expand(_round_up(n) - n, -1)]) for e, n in zip(emb, n_tok)]
        img_rope = [self.image_rope(len(ct), h, w, device, positions) for ct, (h, w) in zip(context.tokens, sizes)]

        u, rot, mask = _batch(img, img_rope)
        x_pre, x_mask, x_rot = u, mask, rot
        if block_hook is not None and len({len(r) for r in img}) > 1:
            raise InputError("block patches need latents of one size in a batch.")
        ref_hints = {} if control is None or not hasattr(control, "refiner_hints") else control.refiner_hints(
            self, x_pre, x_rot, [len(r) for r in img], sizes, c)
        for i, blk in enumerate(self.noise_refiner):
            u = blk(u, mask, rot, c, mod_hook and (lambda m, i=i: mod_hook("noise_refiner", i, m)),
                    attention=attention and attention("noise_refiner", i))
            if i in ref_hints:
                u = u + ref_hints[i]
            if block_hook is not None:
                u = block_hook("noise_refiner", i, u, x_input=x_pre, n_img=u.shape[1], vec=c, rot=rot)

        # unified sequence: [image run, caption run] per sample
        seq = [torch.cat([u[b, : len(img[b])], context.tokens[b].to(dtype)]) for b in range(B)]
        x_ref = u
        u, rot, mask = _batch(seq, [torch.cat([img_rope[b], context.rot[b]]) for b in range(B)])
        hints = {} if control is None else control(
            self, x_pre, x_mask, x_rot, x_ref, u, mask, rot, context, [len(r) for r in img], sizes, c)
        nag = nag and nag.branch(context, [len(r) for r in img])  # None when it changes nothing
        u_input = u
        for i, blk in enumerate(self.layers):
            u = blk(u, mask, rot, c, mod_hook and (lambda m, i=i: mod_hook("layers", i, m)), nag=nag,
                    attention=attention and attention("layers", i))
            if i in hints:
                u = u + hints[i]
            if block_hook is not None:
                u = block_hook("layers", i, u, x_input=u_input, n_img=len(img[0]), vec=c, rot=rot)
        u = self.final_layer(u, c)

        out = []
        for b, (h, w) in enumerate(sizes):
            tok = u[b, : h * w].float().view(h, w, p, p, cfg.in_channels)
            out.append(tok.permute(4, 0, 2, 1, 3).reshape(cfg.in_channels, h * p, w * p))
        if is_list:
            return [o.unsqueeze(1) if xi.ndim == 4 else o for o, xi in zip(out, x)]
        return torch.stack(out)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, context: Context, **controls) -> torch.Tensor:
        """Flow-matching velocity dx/dsigma (= noise - x0) at noise level sigma (1 = pure noise).

        The one place where the sampler's sigma becomes the network's time t = 1 - sigma and the
        network's prediction (x0 - noise) is negated.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        return -self.forward(x, 1.0 - sigma, context, **controls)
