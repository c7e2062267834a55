"""Normalized Attention Guidance (NAG, Chen et al. 2025): a negative prompt for Turbo at cfg 1.

Combination rule, per image token (Z = the attention output of one token, all heads concatenated, before the
output projection `attention.out`; ‖·‖₁ over its dim features):
    Z̃ = Z⁺ + s · (Z⁺ − Z⁻)
    r = ‖Z̃‖₁ / ‖Z⁺‖₁;   if r > τ:  Z̃ ← Z̃ · τ / r
    Z = α · Z̃ + (1 − α) · Z⁺          (computed as Z⁺ + α · (Z̃ − Z⁺), exactly Z⁺ when Z̃ = Z⁺)
Defaults s = 5, τ = 2.5, α = 0.25. (The paper's scale φ is s + 1: Z̃ = φ Z⁺ − (φ − 1) Z⁻.)

Where it acts in the single-stream DiT: each of the main `layers` runs over the unified sequence
[image run ‖ positive caption run]; NAG adds a negative branch [image run ‖ negative caption run] to it:
  - Z⁺ of the image tokens is their attention output in the positive sequence (as without NAG).
  - Z⁻ of the image tokens is their attention output over the keys/values of [image run ‖ negative caption]:
    the image rows' q, k, v are those of the positive pass (the image tokens have ONE hidden state and keep
    their positions, axis 0 = Lp + 1 of the positive caption), the negative caption rows' q, k, v come from
    the negative caption's own hidden state in this layer (caption positions 1..Ln).
  - The image tokens' attention output becomes the NAG combination; their `out` projection, residual and FFN
    run once, on it.
  - The negative caption tokens travel through the layers in their own branch: they start as the negative
    caption after the context refiner (`encode_context`) and in each layer get the same modulated block as
    the positive caption (attention over [image run ‖ negative caption] with the layer's modulation, residual,
    FFN), never reading the positive caption.
  - The positive caption tokens are untouched (they attend over [image ‖ positive caption] as without NAG).
"Image run" includes the x_pad_token rows that pad it to a multiple of 32 (they are image-sequence tokens
that attend and are attended to, and are dropped at the output).
The noise refiner, context refiner and final layer are unchanged. Extra cost per layer: one attention of
(Np + Ln) queries over (Np + Ln) keys, and the qkv/out/FFN of the Ln negative caption tokens.

Identity cases, exact: s = 0 or α = 0, or a step outside start..end -> `NAG.step_controls` returns {} (the same forward
as without NAG); a sample whose refined negative caption equals its positive one (negative = positive) is
left out of the branch (Z⁻ = Z⁺ would make the rule the identity).
With CFG (cfg != 1) the sampler applies NAG to the positive half of its batch only (`NAGGuidance.rows`); the
CFG negative prediction is the plain forward.

Composition: LoRAs act through the shared Linear layers (the negative branch uses the block's own modules),
adaLN controls through the block's modulation chunks (the same for both branches), ControlNet hints are added
to the shared hidden states after a layer (the image rows the negative branch reads include them; the
negative caption rows get none).

`NAG` is a runtime patch (see `patching`): it travels on a ZIMAGE_DIT with LoRAs and adaLN controls. A host
that batches [cond, uncond] itself passes `NAGGuidance.only(cond rows)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..errors import InputError
from ..model.rope import apply_rope
from ..model.transformer import SEQ_MULTI_OF, Context

ROPE_CAPTION_POSITIONS = 1536  # the reference's rotary table length on axis 0 (caption index, image at Lp + 1)
MAX_CAPTION_TOKENS = (ROPE_CAPTION_POSITIONS - 2) // SEQ_MULTI_OF * SEQ_MULTI_OF  # 1504: padded Lp + 1 < 1536


def nag_combine(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """The NAG rule on attention outputs [..., tokens, dim] (norms per token over the last axis, in fp32)."""
    g = z_pos + scale * (z_pos - z_neg)
    ratio = g.float().abs().sum(-1, keepdim=True) / z_pos.float().abs().sum(-1, keepdim=True)
    g = torch.where(ratio > tau, g * (tau / ratio).to(g.dtype), g)
    return z_pos + alpha * (g - z_pos)


def _check(name: str, v: float, lo: float, hi: float | None = None) -> float:
    v = float(v)
    if not (v >= lo and (hi is None or v <= hi)):
        raise InputError(f"NAG {name} must be {'in ' + str(lo) + '..' + str(hi) if hi is not None else '>= ' + str(lo)}"
                         f"; got {v}.")
    return v


class NAG:
    """The runtime patch: a negative caption (features [L, cap_feat_dim], one, or one per sample) and the rule's
    parameters, active for the steps with start <= step / n_steps < end."""

    def __init__(self, negative: list[torch.Tensor], scale: float = 5.0, tau: float = 2.5, alpha: float = 0.25,
                 start: float = 0.0, end: float = 1.0):
        self.scale = _check("scale", scale, 0.0)
        self.tau = _check("tau", tau, 1.0)
        self.alpha = _check("alpha", alpha, 0.0, 1.0)
        self.start, self.end = _check("start", start, 0.0, 1.0), _check("end", end, 0.0, 1.0)
        if self.end < self.start:
            raise InputError(f"NAG end ({end}) must not be before start ({start}).")
        if not negative:
            raise InputError("NAG needs a negative caption.")
        for i, f in enumerate(negative):
            if f.ndim != 2 or len(f) == 0:
                raise InputError(f"NAG negative caption {i} has shape {tuple(f.shape)}; expected [L >= 1, hidden].")
            if len(f) > MAX_CAPTION_TOKENS:
                raise InputError(
                    f"the NAG negative prompt has {len(f)} tokens, longer than the DiT's context: its caption axis has "
                    f"{ROPE_CAPTION_POSITIONS} rotary positions, so at most {MAX_CAPTION_TOKENS} tokens. "
                    f"Shorten the negative prompt.")
        self.negative = list(negative)
        self._dit = None
        self._context: Context | None = None

    def __repr__(self) -> str:
        return (f"NAG(scale={self.scale}, tau={self.tau}, alpha={self.alpha}, start={self.start}, end={self.end}, "
                f"negative tokens={[len(f) for f in self.negative]})")

    @property
    def is_noop(self) -> bool:
        """Scale 0, alpha 0 or an empty range: the output equals the run without NAG (no patch needed)."""
        return self.scale == 0.0 or self.alpha == 0.0 or self.end <= self.start

    def check(self, dit) -> None:
        dim = dit.cfg.cap_feat_dim
        for f in self.negative:
            if f.shape[-1] != dim:
                raise InputError(f"the NAG negative conditioning has hidden size {f.shape[-1]}, but this Z-Image DiT "
                                 f"reads captions of hidden size {dim} (Qwen3-4B): encode the negative prompt with "
                                 f"the Z-Image text encoder (ZImageTextEncode or a lumina2 CLIPTextEncode).")

    def install(self, dit) -> None:
        self.check(dit)
        self._dit, self._context = dit, None

    def uninstall(self, dit) -> None:
        self._dit, self._context = None, None

    def context(self) -> Context:
        """The negative caption after the context refiner, encoded on first use in a run (after every patch is
        installed, so LoRAs on the context refiner apply) and kept until the patch is uninstalled."""
        if self._context is None:
            self._context = self._dit.encode_context(self.negative)
        return self._context

    def active(self, step: int, n_steps: int) -> bool:
        p = step / max(n_steps, 1)
        return self.scale != 0.0 and self.alpha != 0.0 and self.start <= p < self.end

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        if not self.active(step, n_steps):
            return {}
        return {"nag": NAGGuidance(self.context(), self.scale, self.tau, self.alpha)}


class NAGGuidance:
    """What one forward gets (`ZImageDiT.forward(nag=...)`): the refined negative Context and the parameters.
    `rows`: the samples of the batch NAG acts on (the positive ones under CFG), None = all; the negative has
    one caption, or one per sample of the batch."""

    def __init__(self, negative: Context, scale: float, tau: float, alpha: float, rows: list[int] | None = None):
        self.negative, self.scale, self.tau, self.alpha, self.rows = negative, scale, tau, alpha, rows

    def only(self, rows: list[int]) -> NAGGuidance:
        """The same guidance for these samples only (e.g. a host's conditional rows of a [cond, uncond] batch)."""
        return NAGGuidance(self.negative, self.scale, self.tau, self.alpha, list(rows))

    def positive_half(self, n: int) -> NAGGuidance:
        """For our sampler's CFG batch [positive x n, negative x n]."""
        return self.only(range(n))

    def branch(self, context: Context, img_lens: list[int]) -> _Branch | None:
        """The negative branch of one forward (positive `context`, image run lengths per sample), or None when
        no sample needs one."""
        B = len(img_lens)
        rows = list(range(B)) if self.rows is None else [b for b in self.rows if b < B]
        if len(self.negative) == 1:
            neg = self.negative.repeat(B)
        elif len(self.negative) == B:
            neg = self.negative
        elif self.rows is not None and len(self.negative) == len(self.rows):  # one per guided sample
            neg = Context([self.negative.tokens[0]] * B, [self.negative.rot[0]] * B)
            for i, b in enumerate(self.rows):
                neg.tokens[b], neg.rot[b] = self.negative.tokens[i], self.negative.rot[i]
        else:
            raise InputError(f"the NAG negative has {len(self.negative)} captions for a batch of {B}; give one, or "
                             f"one per sample.")
        rows = [b for b in rows if not (neg.tokens[b].shape == context.tokens[b].shape
                                        and torch.equal(neg.tokens[b], context.tokens[b]))]
        if not rows:
            return None
        return _Branch(self, rows, [img_lens[b] for b in rows], [neg.tokens[b] for b in rows],
                       [neg.rot[b] for b in rows])


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows) if all(len(r) == len(rows[0]) for r in rows) else pad_sequence(rows, batch_first=True)


class _Branch:
    """Hidden states of the negative caption tokens [R, Ln, dim] of the R samples with NAG, through the layers."""

    def __init__(self, g: NAGGuidance, rows: list[int], img_lens: list[int], tokens: list[torch.Tensor],
                 rot: list[torch.Tensor]):
        self.g, self.rows, self.img_lens = g, rows, img_lens
        self.cap_lens = [len(t) for t in tokens]
        self.y = _pad(tokens)  # [R, Ln_max, dim]
        self.rot = _pad(rot)  # [R, Ln_max, Dh/2, 2]
        self.uniform = len(set(img_lens)) == 1 and len(set(self.cap_lens)) == 1
        self.mask = None  # key mask [R, 1, 1, S] of the negative sequences when their lengths differ
        if not self.uniform:
            lens = torch.tensor([a + b for a, b in zip(img_lens, self.cap_lens)], device=self.y.device)
            self.mask = (torch.arange(int(lens.max()), device=self.y.device)[None] < lens[:, None])[:, None, None]

    def _join(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """[R, *, ...] image rows (of the positive sequence) and [R, Ln_max, ...] caption rows -> the negative
        sequences [R, Np + Ln, ...] (padded at the end when lengths differ)."""
        if self.uniform:
            return torch.cat([img[:, : self.img_lens[0]], cap], dim=1)
        return pad_sequence([torch.cat([img[r, :n], cap[r, :m]]) for r, (n, m)
                             in enumerate(zip(self.img_lens, self.cap_lens))], batch_first=True)

    def _split(self, o: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Negative-sequence outputs [R, S', dim] -> image rows per sample, caption rows [R, Ln_max, dim]."""
        img = [o[r, :n] for r, n in enumerate(self.img_lens)]
        if self.uniform:
            return img, o[:, self.img_lens[0]:]
        cap = [o[r, n: n + m] for r, (n, m) in enumerate(zip(self.img_lens, self.cap_lens))]
        return img, pad_sequence(cap, batch_first=True)

    def block_hook(self, blk, scale_msa, gate_msa, scale_mlp, gate_mlp):
        """The `o_hook` of one modulated block's attention (modulation chunks [B, 1, dim] of the whole batch)."""
        rows, att = self.rows, blk.attention

        def pick(m):  # the rows of the samples with NAG
            return m if rows == list(range(m.shape[0])) else m[rows]

        def hook(q, k, v, o):  # q, k, v: [B, S, H, Dh] (normed, roped); o: [B, S, dim] before `out`
            R, H = len(rows), att.n_heads
            y = self.y.to(q.dtype)
            yn = blk.attention_norm1.modulated(y, 1 + pick(scale_msa))
            qc, kc, vc = att.qkv(yn).view(R, yn.shape[1], 3, H, -1).unbind(2)
            qc, kc = apply_rope(att.q_norm(qc), self.rot), apply_rope(att.k_norm(kc), self.rot)
            qs, ks, vs = (self._join(pick(a), c) for a, c in ((q, qc), (k, kc), (v, vc)))
            on = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                                attn_mask=self.mask)
            z_neg, z_cap = self._split(on.transpose(1, 2).reshape(R, qs.shape[1], -1))
            g = self.g
            for r, b in enumerate(rows):  # image rows: the NAG combination replaces Z+
                n = self.img_lens[r]
                o[b, :n] = nag_combine(o[b, :n], z_neg[r], g.scale, g.tau, g.alpha)
            # the negative caption tokens: residual and FFN of this block, in their own branch
            y = blk.attention_norm2.gated_residual(y, att.out(z_cap), pick(gate_msa).tanh())
            ffn = blk.feed_forward(blk.ffn_norm1.modulated(y, 1 + pick(scale_mlp)))
            self.y = blk.ffn_norm2.gated_residual(y, ffn, pick(gate_mlp).tanh())
            return o

        return hook
