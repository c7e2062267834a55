"""adaLN controls: neutral settings are bit-identical, effects stay inside their step window / block range,
conditioning variance is seeded and reproducible, conditioning combine, and the adaLN nodes."""

from __future__ import annotations

import importlib

import pytest
import torch

from zimage_core.adapters.adaln import AdaLNDetail, AdaLNScale, ConditioningVariance, combine_conditioning, window_weight
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.sampling.loop import Guidance, sample_euler
from zimage_core.sampling.schedules import flow_sigmas
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import ZImageDiT

CFG = TINY_DIT
STEPS = 8


@pytest.fixture(scope="module")
def dit():
    m = ZImageDiT(CFG)
    m.load_state_dict(random_dit_state(CFG, seed=3))
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data(dit):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 8, 8, generator=g)
    ctx = dit.encode_context([torch.randn(9, CFG.cap_feat_dim, generator=g)])
    neg = dit.encode_context([torch.randn(4, CFG.cap_feat_dim, generator=g)])
    return noise, ctx, neg


class Recorder:
    """A patch that records, per step, the forward kwargs and every block's modulation (after other hooks)."""

    def __init__(self, inner: PatchedDiT):
        self.inner = inner
        self.steps: list[dict] = []

    def __call__(self, step, sigma, n):
        ctl = self.inner.step_controls(step, sigma, n)
        rec = {"adaln_t": ctl.get("adaln_t"), "context": ctl.get("context"), "mods": {}}
        self.steps.append(rec)
        inner_hook = ctl.get("mod_hook")

        def hook(stage, i, mod):
            mod = inner_hook(stage, i, mod) if inner_hook else mod
            rec["mods"][(stage, i)] = mod.clone()
            return mod

        return {**ctl, "mod_hook": hook}


@torch.no_grad()
def sample(dit, data, *patches, guidance=False, record=False):
    noise, ctx, neg = data
    pd = PatchedDiT(dit, tuple(patches))
    rec = Recorder(pd) if record else None
    with pd.applied():
        x = sample_euler(dit, noise, ctx, flow_sigmas(STEPS, 3.0), Guidance(neg, 3.0) if guidance else None,
                         step_controls=rec or pd.step_controls)
    return (x, rec) if record else x


@pytest.mark.parametrize("patch", [AdaLNDetail(0.0, 0.0, 1.0), AdaLNScale(1.0, 1.0, 0, -1, True),
                                   ConditioningVariance(0.0, 1.0, 5)])
@pytest.mark.parametrize("guidance", [False, True])
def test_neutral_settings_are_bit_identical_to_no_patch(dit, data, patch, guidance):
    assert all(patch.step_controls(i, 0.5, STEPS) == {} for i in range(STEPS))
    assert torch.equal(sample(dit, data, patch, guidance=guidance), sample(dit, data, guidance=guidance))


def test_detail_window_is_smooth_and_zero_outside():
    ps = [i / 100 for i in range(101)]
    w = [window_weight(p, 0.2, 0.8) for p in ps]
    assert all(v == 0.0 for p, v in zip(ps, w) if p <= 0.2 or p >= 0.8)
    assert max(w) == 1.0 and all(abs(a - b) < 0.2 for a, b in zip(w, w[1:]))  # no jumps


def test_detail_offsets_the_adaln_time_only_inside_its_window_with_the_sign_documented(dit, data):
    patch = AdaLNDetail(0.1, 0.3, 0.75)
    _, base = sample(dit, data, record=True)
    out, rec = sample(dit, data, patch, record=True)
    sig = flow_sigmas(STEPS, 3.0).tolist()
    inside = []
    for i, (b, r) in enumerate(zip(base.steps, rec.steps)):
        p = i / (STEPS - 1)
        if not 0.3 < p < 0.75:
            assert r["adaln_t"] is None and all(torch.equal(r["mods"][k], b["mods"][k]) for k in b["mods"])
            continue
        inside.append(i)
        assert r["adaln_t"] > 1.0 - sig[i]  # positive amount: the modulation sees a cleaner (later) time
        assert r["adaln_t"] - (1.0 - sig[i]) <= 0.1 + 1e-6
        assert not torch.equal(r["mods"][("layers", 0)], b["mods"][("layers", 0)])
    assert inside == [3, 4, 5]
    assert not torch.equal(out, sample(dit, data))
    neg = AdaLNDetail(-0.1, 0.3, 0.75)
    assert all(neg.step_controls(i, sig[i], STEPS)["adaln_t"] < 1.0 - sig[i] for i in inside)


@torch.no_grad()
def test_detail_changes_only_the_time_the_modulation_sees(dit, data):
    noise, ctx, _ = data
    patch = AdaLNDetail(0.2, 0.0, 1.0)
    ctl = patch.step_controls(3, 0.6, STEPS)
    t_mod = ctl["adaln_t"]
    # same as running the whole model at time t_mod: the noise level only enters through the adaLN path
    assert torch.equal(dit(noise, torch.tensor([0.4]), ctx, **ctl), dit(noise, torch.tensor([t_mod]), ctx))


def test_scale_changes_only_the_chosen_blocks_and_chunks(dit, data):
    _, base = sample(dit, data, record=True)
    out, rec = sample(dit, data, AdaLNScale(scale=1.3, gate=1.0, first_block=1, last_block=1), record=True)
    d = CFG.dim
    for b, r in zip(base.steps, rec.steps):
        for key, mod in b["mods"].items():
            got = r["mods"][key]
            if key != ("layers", 1):
                # blocks before the targeted one are bit-identical; later ones see the same modulation
                # (the modulation depends only on t), so only the target's values differ
                assert torch.equal(got, mod), key
                continue
            assert torch.allclose(got[:, :d], 1.3 * mod[:, :d]) and torch.equal(got[:, d:2 * d], mod[:, d:2 * d])
            assert torch.allclose(got[:, 2 * d:3 * d], 1.3 * mod[:, 2 * d:3 * d])
            assert torch.equal(got[:, 3 * d:], mod[:, 3 * d:])
    assert not torch.equal(out, sample(dit, data))
    _, rec2 = sample(dit, data, AdaLNScale(scale=1.0, gate=0.5, first_block=0, last_block=0, include_refiner=True),
                     record=True)
    changed = {k for k, m in rec2.steps[0]["mods"].items() if not torch.equal(m, base.steps[0]["mods"][k])}
    assert changed == {("noise_refiner", 0), ("noise_refiner", 1), ("layers", 0)}


@torch.no_grad()
def test_scale_block_activations_differ_only_from_the_first_targeted_block(dit, data):
    noise, ctx, _ = data
    outs = {}

    def capture(name):
        def hook(module, args, out):
            outs.setdefault(name, []).append(out.clone())
        return hook

    handles = [blk.register_forward_hook(capture(i)) for i, blk in enumerate(dit.layers)]
    try:
        dit(noise, torch.tensor([0.5]), ctx)
        pd = PatchedDiT(dit, (AdaLNScale(scale=1.0, gate=1.5, first_block=1, last_block=1),))
        with pd.applied():
            dit(noise, torch.tensor([0.5]), ctx, **pd.step_controls(0, 0.5, 1))
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(outs[0][0], outs[0][1])  # block 0 untouched
    assert not torch.equal(outs[1][0], outs[1][1])  # block 1 changed


def test_conditioning_variance_is_seeded_and_limited_to_the_first_steps(dit, data):
    noise, ctx, _ = data
    patch = ConditioningVariance(0.5, until=0.3, seed=7)
    out, rec = sample(dit, data, patch, record=True)
    noisy = [i for i, r in enumerate(rec.steps) if r["context"] is not None]
    assert noisy == [0, 1, 2]  # step / 8 < 0.3
    assert torch.equal(out, sample(dit, data, ConditioningVariance(0.5, until=0.3, seed=7)))  # reproducible
    assert not torch.equal(out, sample(dit, data, ConditioningVariance(0.5, until=0.3, seed=8)))
    assert not torch.equal(out, sample(dit, data))
    # the noisy context is computed once per run and only the positive prompt is changed
    patch.install(dit)
    a, b = patch.noisy(ctx), patch.noisy(ctx)
    assert a is b and torch.equal(a.rot[0], ctx.rot[0])
    rel = ((a.tokens[0] - ctx.tokens[0]).norm() / ctx.tokens[0].norm()).item()
    assert 0.3 < rel < 0.7  # strength 0.5 of the tokens' RMS
    patch.uninstall(dit)
    assert patch._cache is None
    assert torch.equal(ConditioningVariance(0.5, 0.3, 7).noisy(ctx).tokens[0], a.tokens[0])


def test_two_chained_variance_patches_both_apply(dit, data):
    _, ctx, _ = data
    a, b = ConditioningVariance(0.5, 0.3, 7), ConditioningVariance(0.5, 0.3, 8)
    pd = PatchedDiT(dit, (a, b))
    with pd.applied():
        got = pd.step_controls(0, 1.0, STEPS)["context"](ctx)
        expected = b.noisy(a.noisy(ctx))
    assert torch.equal(got.tokens[0], expected.tokens[0])
    assert not torch.equal(got.tokens[0], a.noisy(ctx).tokens[0])
    assert not torch.equal(sample(dit, data, a, b), sample(dit, data, b))


@torch.no_grad()
def test_variance_with_cfg_keeps_the_negative_prompt(dit, data):
    noise, ctx, neg = data
    seen = []
    orig = dit.velocity

    def spy(x, sigma, context, **kw):
        seen.append(context)
        return orig(x, sigma, context, **kw)

    dit.velocity = spy
    try:
        sample(dit, data, ConditioningVariance(0.5, until=0.3, seed=1), guidance=True)
    finally:
        del dit.velocity
    assert torch.equal(seen[0].tokens[1], neg.tokens[0]) and not torch.equal(seen[0].tokens[0], ctx.tokens[0])
    assert torch.equal(seen[-1].tokens[0], ctx.tokens[0])


def test_combine_conditioning():
    a, b = torch.randn(5, 8), torch.randn(3, 8)
    assert torch.equal(combine_conditioning(a, b, "concat"), torch.cat([a, b]))
    avg = combine_conditioning(a, b, "average", 0.75)
    assert avg.shape == (5, 8) and torch.allclose(avg[:3], 0.75 * a[:3] + 0.25 * b) and torch.equal(avg[3:], a[3:])


# ------------------------------------------------------------------------------------------ nodes

@pytest.fixture(scope="module")
def nodes(pack):
    return importlib.import_module(pack.__name__ + ".nodes.adaln")


def test_adaln_nodes_declare_v1_api_with_tooltips(nodes):
    for nid, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()["required"]
        assert all("tooltip" in v[1] for v in spec.values()), nid
        assert cls.CATEGORY == "Z-Image/adaLN" and cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


def test_adaln_nodes_return_patched_copies(pack, nodes):
    patching = importlib.import_module(pack.__name__ + ".zimage_core.adapters.patching")
    core = importlib.import_module(pack.__name__ + ".zimage_core.model.transformer")
    errors = importlib.import_module(pack.__name__ + ".zimage_core.errors")
    with torch.device("meta"):
        base = patching.PatchedDiT(core.ZImageDiT(CFG))
    assert nodes.ZImageAdaLNDetail().apply(base, 0.0, 0.2, 0.8)[0] is base
    (d,) = nodes.ZImageAdaLNDetail().apply(base, 0.1, 0.2, 0.8)
    (s,) = nodes.ZImageAdaLNScale().apply(d, 1.1, 1.0, 0, -1, False)
    (v,) = nodes.ZImageConditioningVariance().apply(s, 0.3, 0.3, 42)
    assert base.patches == () and len(d.patches) == 1 and [type(p).__name__ for p in v.patches] == [
        "AdaLNDetail", "AdaLNScale", "ConditioningVariance"]
    with pytest.raises(errors.InputError):
        nodes.ZImageAdaLNScale().apply(base, 1.1, 1.0, 1, 5, False)


def test_conditioning_combine_node_keeps_the_comfyui_layout(nodes):
    def cond(n):
        return [[torch.randn(1, n, 16), {"pooled_output": None, "attention_mask": torch.ones(1, n, dtype=torch.long)}]]

    a, b = cond(4), cond(6)
    (c,) = nodes.ZImageConditioningCombine().combine(a, b, "concat", 0.5)
    assert c[0][0].shape == (1, 10, 16) and c[0][1]["attention_mask"].shape == (1, 10)
    assert c[0][1]["pooled_output"] is None and torch.equal(c[0][0][0, 4:], b[0][0][0])
    (m,) = nodes.ZImageConditioningCombine().combine(a, b, "average", 0.5)
    assert m[0][0].shape == (1, 6, 16) and m[0][1]["attention_mask"].dtype == torch.long
