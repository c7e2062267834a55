"""NAG: the combination rule against its formula, the optimised negative branch against a plain two-sequence
reference on a tiny DiT (batches, different lengths, adaLN, LoRA, CFG), the exact identity cases, bad input."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from zimage_core.adapters.adaln import AdaLNScale
from zimage_core.model.dit_loader import native_to_diffusers
from zimage_core.errors import InputError
from zimage_core.adapters.lora import LoraPatch, parse_lora
from zimage_core.adapters.nag import MAX_CAPTION_TOKENS, NAG, NAGGuidance, nag_combine
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.model.rope import apply_rope
from zimage_core.sampling.loop import Guidance, sample_euler
from zimage_core.sampling.schedules import flow_sigmas
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import ZImageDiT, _round_up

CFG = TINY_DIT
S, TAU, ALPHA = 5.0, 2.5, 0.25


@pytest.fixture(scope="module")
def dit():
    m = ZImageDiT(CFG)
    m.load_state_dict(random_dit_state(CFG, seed=5))
    return m.eval().requires_grad_(False)


def feats(n, seed):
    return torch.randn(n, CFG.cap_feat_dim, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- the rule

def test_rule_matches_the_formula_token_by_token():
    g = torch.Generator().manual_seed(0)
    z_pos, z_neg = torch.randn(3, 7, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    z_neg[0, 0] = z_pos[0, 0] + 0.01  # a token whose guided norm stays under tau
    out = nag_combine(z_pos, z_neg, S, TAU, ALPHA)
    for idx in [(0, 0), (1, 3), (2, 6)]:
        zp, zn = z_pos[idx].double(), z_neg[idx].double()
        zt = zp + S * (zp - zn)
        r = zt.abs().sum() / zp.abs().sum()
        if r > TAU:
            zt = zt * TAU / r
        want = ALPHA * zt + (1 - ALPHA) * zp
        torch.testing.assert_close(out[idx].double(), want, rtol=1e-6, atol=1e-6)
    # the rescaled tokens have exactly the ratio tau before the alpha mix
    zt = z_pos + S * (z_pos - z_neg)
    clipped = (out - (1 - ALPHA) * z_pos) / ALPHA
    r_in = zt.abs().sum(-1) / z_pos.abs().sum(-1)
    r_out = clipped.abs().sum(-1) / z_pos.abs().sum(-1)
    assert (r_in > TAU).any() and (r_in <= TAU).any()
    torch.testing.assert_close(r_out[r_in > TAU], torch.full_like(r_out[r_in > TAU], TAU), rtol=1e-5, atol=1e-5)


def test_rule_is_the_identity_for_scale_zero_or_equal_outputs():
    z = torch.randn(2, 5, 8)
    assert torch.equal(nag_combine(z, torch.randn(2, 5, 8), 0.0, TAU, ALPHA), z)
    assert torch.equal(nag_combine(z, z.clone(), S, TAU, ALPHA), z)


# ------------------------------------------------------------------------------- plain reference

def _pre_out(att, x, rot):
    """Attention output before the `out` projection, [1, S, dim], computed plainly."""
    B, L, _ = x.shape
    q, k, v = att.qkv(x).view(B, L, 3, att.n_heads, -1).unbind(2)
    q, k = apply_rope(att.q_norm(q), rot), apply_rope(att.k_norm(k), rot)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2).reshape(B, L, -1)


def _rest(blk, x, z, gate_msa, scale_mlp, gate_mlp):
    x = x + gate_msa.tanh() * blk.attention_norm2(blk.attention.out(z))
    return x + gate_mlp.tanh() * blk.ffn_norm2(blk.feed_forward(blk.ffn_norm1(x) * (1 + scale_mlp)))


@torch.no_grad()
def reference(dit, x, t, pos, neg, scale, tau, alpha, mod_hook=None):
    """One sample, no batching: two full sequences P = [image ‖ positive caption], N = [image ‖ negative caption]
    through every main layer, all of N recomputed; image rows of P get alpha*Z~ + (1-alpha)*Z+ before `out`, the
    image rows of N are reset to P's after each layer (one hidden state per image token)."""
    cfg, p = dit.cfg, dit.cfg.patch_size
    ctx, nctx = dit.encode_context([pos]), dit.encode_context([neg])
    c = dit.t_embedder(torch.tensor([t]), torch.float32)
    C, H, W = x.shape
    patches = x.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape(-1, cfg.patch_dim)
    n = len(patches)
    img = torch.cat([dit.x_embedder(patches), dit.x_pad_token.expand(_round_up(n) - n, -1)])[None]
    np_ = img.shape[1]
    img_rope = dit.image_rope(len(ctx.tokens[0]), H // p, W // p, "cpu")
    for i, blk in enumerate(dit.noise_refiner):
        img = blk(img, None, img_rope[None], c, mod_hook and (lambda m, i=i: mod_hook("noise_refiner", i, m)))
    P, rot_p = torch.cat([img, ctx.tokens[0][None]], 1), torch.cat([img_rope, ctx.rot[0]])[None]
    N, rot_n = torch.cat([img, nctx.tokens[0][None]], 1), torch.cat([img_rope, nctx.rot[0]])[None]
    for i, blk in enumerate(dit.layers):
        mod = blk.adaLN_modulation(c)
        if mod_hook is not None:
            mod = mod_hook("layers", i, mod)
        sm, gm, sf, gf = mod[:, None].chunk(4, dim=-1)
        zp = _pre_out(blk.attention, blk.attention_norm1(P) * (1 + sm), rot_p)
        zn = _pre_out(blk.attention, blk.attention_norm1(N) * (1 + sm), rot_n)
        a, b = zp[:, :np_], zn[:, :np_]
        zt = a + scale * (a - b)
        r = zt.abs().sum(-1, keepdim=True) / a.abs().sum(-1, keepdim=True)
        zt = torch.where(r > tau, zt * tau / r, zt)
        zp = torch.cat([alpha * zt + (1 - alpha) * a, zp[:, np_:]], 1)
        P, N = _rest(blk, P, zp, gm, sf, gf), _rest(blk, N, zn, gm, sf, gf)
        N = torch.cat([P[:, :np_], N[:, np_:]], 1)
    u = dit.final_layer(P, c)[0, :n].view(H // p, W // p, p, p, C)
    return u.permute(4, 0, 2, 1, 3).reshape(C, H, W)


def test_reference_without_guidance_is_the_plain_forward(dit):
    x, pos = torch.randn(16, 8, 6), feats(9, 1)
    want = dit([x], torch.tensor([0.4]), [pos])[0]
    torch.testing.assert_close(reference(dit, x, 0.4, pos, feats(5, 2), 0.0, TAU, ALPHA), want, rtol=0, atol=1e-5)


@torch.no_grad()
def optimised(dit, xs, t, pos, neg, mod_hook=None, **kw):
    g = NAGGuidance(dit.encode_context(neg), kw.get("scale", S), kw.get("tau", TAU), kw.get("alpha", ALPHA))
    return dit(xs, t, dit.encode_context(pos), mod_hook=mod_hook, nag=g)


def test_optimised_branch_equals_the_reference_on_a_batch_of_different_lengths(dit):
    xs = [torch.randn(16, 8, 6), torch.randn(16, 10, 10)]  # image runs of 32 and 32 (pad) ... and 25 -> 32
    xs.append(torch.randn(16, 16, 18))  # 72 tokens -> a run of 96
    pos = [feats(9, 1), feats(40, 3), feats(3, 4)]  # caption runs 32, 64, 32
    neg = [feats(5, 2), feats(33, 6), feats(70, 7)]  # negative runs 32, 64, 96
    t = torch.tensor([0.2, 0.5, 0.9])
    got = optimised(dit, xs, t, pos, neg)
    for b in range(3):
        want = reference(dit, xs[b], float(t[b]), pos[b], neg[b], S, TAU, ALPHA)
        assert (got[b] - want).abs().max().item() <= 1e-5
        assert (want - dit([xs[b]], t[b:b + 1], [pos[b]])[0]).abs().max().item() > 1e-3  # NAG changes the output


def test_optimised_branch_equals_the_reference_with_adaln_and_lora(dit):
    g = torch.Generator().manual_seed(9)
    sd = {}
    for k, v in native_to_diffusers(dit.state_dict()).items():
        if v.ndim == 2 and k.endswith(".weight") and "pad_token" not in k and k.startswith("layers."):
            base = f"transformer.{k[: -len('.weight')]}"
            sd[f"{base}.lora_A.weight"] = torch.randn(4, v.shape[1], generator=g) * 0.3 / v.shape[1] ** 0.5
            sd[f"{base}.lora_B.weight"] = torch.randn(v.shape[0], 4, generator=g) * 0.3
    lora = LoraPatch(*parse_lora(sd, CFG))
    scale = AdaLNScale(1.1, 0.9)
    x = torch.randn(2, 16, 8, 8, generator=g)  # one latent batch, one caption each
    pos, neg = feats(12, 10), feats(20, 11)
    with PatchedDiT(dit, (lora, scale)).applied() as m:
        hook = scale.step_controls(0, 0.5, 8)["mod_hook"]
        got = optimised(m, x, torch.tensor([0.5, 0.5]), [pos], [neg], mod_hook=hook)
        want = reference(m, x[1], 0.5, pos, neg, S, TAU, ALPHA, mod_hook=hook)
    assert (got[1] - want).abs().max().item() <= 1e-5
    assert (got[0] - reference(dit, x[0], 0.5, pos, neg, S, TAU, ALPHA)).abs().max().item() > 1e-3  # LoRA acts


def test_guidance_for_chosen_rows_leaves_the_other_samples_bit_identical(dit):
    x, t = torch.randn(3, 16, 8, 8), torch.tensor([0.5, 0.5, 0.5])
    pos, neg = [feats(9, 1)], [feats(5, 2)]
    with torch.no_grad():
        ctx = dit.encode_context(pos)
        plain = dit(x, t, ctx)
        got = dit(x, t, ctx, nag=NAGGuidance(dit.encode_context(neg), S, TAU, ALPHA).only([1]))
    assert torch.equal(got[0], plain[0]) and torch.equal(got[2], plain[2])
    assert (got[1] - reference(dit, x[1], 0.5, pos[0], neg[0], S, TAU, ALPHA)).abs().max().item() <= 1e-5


# -------------------------------------------------------------------------------- through the sampler

@torch.no_grad()
def sample(dit, patches, neg_cfg=None, cfg=1.0, steps=3):
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    pd = PatchedDiT(dit, tuple(patches))
    with pd.applied() as m:
        ctx = m.encode_context([feats(9, 1)])
        guidance = Guidance(m.encode_context([neg_cfg]), cfg) if neg_cfg is not None else None
        return sample_euler(m, noise, ctx, flow_sigmas(steps, 3.0), guidance, step_controls=pd.step_controls)


def test_scale_zero_and_negative_equal_to_positive_are_exact(dit):
    plain = sample(dit, [])
    assert torch.equal(sample(dit, [NAG([feats(5, 2)], scale=0.0)]), plain)
    assert torch.equal(sample(dit, [NAG([feats(9, 1)])]), plain)  # negative = positive
    assert torch.equal(sample(dit, [NAG([feats(5, 2)], start=0.5, end=0.5)]), plain)  # empty window
    assert not torch.allclose(sample(dit, [NAG([feats(5, 2)])]), plain, atol=1e-3)


def test_with_cfg_nag_guides_the_positive_prediction_only(dit):
    neg_cfg, neg_nag = feats(6, 20), feats(5, 2)
    got = sample(dit, [NAG([neg_nag])], neg_cfg=neg_cfg, cfg=3.0, steps=1)
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(2)  # the first sigma is 1
    v_pos = -optimised(dit, noise, t, [feats(9, 1)], [neg_nag])
    v_neg = -dit(noise, t, dit.encode_context([neg_cfg]))
    want = noise + (0.0 - 1.0) * Guidance(None, 3.0).combine(v_pos, v_neg)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- bad input

def test_a_negative_longer_than_the_context_is_refused():
    with pytest.raises(InputError, match=f"at most {MAX_CAPTION_TOKENS} tokens"):
        NAG([torch.zeros(MAX_CAPTION_TOKENS + 1, CFG.cap_feat_dim)])
    NAG([torch.zeros(MAX_CAPTION_TOKENS, CFG.cap_feat_dim)])


def test_a_negative_from_another_text_encoder_is_refused(dit):
    with pytest.raises(InputError, match="hidden size 768"):
        with PatchedDiT(dit, (NAG([torch.zeros(7, 768)]),)).applied():
            pass


@pytest.mark.parametrize("kw", [{"tau": 0.5}, {"alpha": 1.5}, {"scale": -1.0}, {"start": 0.8, "end": 0.2}])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(InputError, match="NAG"):
        NAG([feats(3, 0)], **kw)


# ---------------------------------------------------------------------------------------------- node

def _cond(f):
    return [[f[None], {"attention_mask": torch.ones(1, len(f), dtype=torch.long)}]]


def test_node_returns_a_patched_copy_and_refuses_bad_input(pack, dit):
    mod = pack.nodes.nag
    core_patching = importlib.import_module(pack.__name__ + ".zimage_core.adapters.patching")
    errors = importlib.import_module(pack.__name__ + ".zimage_core.errors")
    node = pack.NODE_CLASS_MAPPINGS["ZImageNAG"]()
    assert pack.NODE_CLASS_MAPPINGS["ZImageNAG"] is mod.ZImageNAG
    base = core_patching.PatchedDiT(dit)
    (out,) = node.apply(base, _cond(feats(5, 2)), 5.0, 2.5, 0.25)
    assert base.patches == () and [type(p).__name__ for p in out.patches] == ["NAG"]
    assert out.patches[0].negative[0].shape == (5, CFG.cap_feat_dim)
    assert node.apply(base, _cond(feats(5, 2)), 0.0, 2.5, 0.25)[0] is base  # scale 0: untouched
    with pytest.raises(errors.InputError, match="ZImageNAG: `dit` must be a Z-Image DiT"):
        node.apply(object(), _cond(feats(5, 2)), 5.0, 2.5, 0.25)
    with pytest.raises(errors.InputError, match="hidden size 768"):
        node.apply(base, _cond(torch.zeros(6, 768)), 5.0, 2.5, 0.25)
    with pytest.raises(errors.InputError, match="longer than the DiT's context"):
        node.apply(base, _cond(torch.zeros(MAX_CAPTION_TOKENS + 1, CFG.cap_feat_dim)), 5.0, 2.5, 0.25)
    spec = mod.ZImageNAG.INPUT_TYPES()
    assert all("tooltip" in v[1] for part in spec.values() for v in part.values()) and mod.ZImageNAG.DESCRIPTION
