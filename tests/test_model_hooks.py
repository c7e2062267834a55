"""Every transformer_options hook that ComfyUI's own NextDiT honours acts the same on our MODEL (in process):
DIFFUSION_MODEL wrappers (EasyCache; LazyCache wraps the noise prediction above the model), rope_options
(ScaleROPE), optimized_attention_override (with block_index / block_type / total_blocks as native sets them),
the model's inference dtype (ModelComputeDtype); NAGuidance, which native NextDiT skips, acts through our NAG;
patches neither DiT can honour are refused with a message naming the node. Our ModelPatcher overrides take the
call forms of newer hosts (0.38.x) and forward what the running host's ModelPatcher understands.

Same tiny 256-wide DiT as test_model_bridge; native = ComfyUI's NextDiT over the same weights.
"""
from __future__ import annotations

import pytest
import torch
from comfy_inprocess import comfy, native_model, our_model  # skips the module without COMFYUI_PATH
from test_model_bridge import CFG, SEED, bridge, cond  # noqa: F401  (bridge: the fixture)


STEPS = 10
LATENT = torch.zeros(1, 16, 8, 8)


@pytest.fixture(scope="module")
def env(bridge):
    """test_model_bridge's tiny DiT, its weights and the pack's host_model."""
    return bridge


@pytest.fixture(scope="module")
def extras():
    # (the modules that import ComfyUI's top-level `nodes` cannot be imported here, where that name is our pack's
    # package: ModelComputeDtype's one call is made directly below; the server test runs the node itself)
    from comfy_extras import nodes_easycache, nodes_nag, nodes_rope, nodes_slg, nodes_tomesd

    return {"easycache": nodes_easycache, "tomesd": nodes_tomesd, "nag": nodes_nag, "rope": nodes_rope,
            "slg": nodes_slg}


def models(env):
    """(ours, native); both have Z-Image's model sampling (shift 3) from ComfyUI's ZImage config."""
    return our_model(env), native_model(env)


def sample(model, steps=STEPS, negative=None, cfg=1.0, latent=LATENT):
    negative = negative or [[torch.zeros_like(cond(1)[0][0]), {}]]
    noise = comfy.sample.prepare_noise(latent, SEED)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", cond(1), negative, latent,
                               seed=SEED, disable_pbar=True)


def close(a, b, rel=1e-3):
    return (a - b).abs().max() <= rel * b.abs().max()


def count_forwards(model):
    """Counts the calls of the diffusion model's own forward (inside the DIFFUSION_MODEL wrappers)."""
    dm = model.model.diffusion_model
    calls = []
    inner = dm._forward

    def counting(*a, **k):
        calls.append(a[0].shape[0])
        return inner(*a, **k)

    dm._forward = counting
    return calls, lambda: dm.__dict__.pop("_forward")


def node(cls, *args, **kwargs):
    """The first output of a ComfyUI node (V3 `execute` classmethod)."""
    return cls.execute(*args, **kwargs).result[0]


def test_diffusion_model_wrappers_get_the_arguments_native_gives_them(env):
    seen = {}

    def probe(tag):
        def wrapper(executor, *args, **kwargs):
            to = kwargs["transformer_options"]
            out = executor(*args, **kwargs) * 0.5  # a wrapper may change the output
            seen.setdefault(tag, []).append((len(args), [type(a).__name__ for a in args], sorted(kwargs),
                                             "sigmas" in to and "cond_or_uncond" in to,
                                             [to.get(k) for k in ("total_blocks", "block_type", "block_index")]))
            return out
        return wrapper

    outs = {}
    for tag, m in zip(("ours", "native"), models(env)):
        m = m.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "probe", probe(tag))
        outs[tag] = sample(m, steps=2)
    assert seen["ours"] == seen["native"] and len(seen["ours"]) == 2
    assert close(outs["ours"], outs["native"])
    assert not close(outs["ours"], sample(models(env)[0], steps=2), rel=1e-2)  # the wrapper took effect


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_cache_nodes_skip_the_same_steps_on_our_model_as_on_native(env, extras, cache):
    cls = getattr(extras["easycache"], f"{cache}Node")
    runs = {}
    for tag, m in zip(("ours", "native"), models(env)):
        cached = node(cls, m, reuse_threshold=0.5, start_percent=0.0, end_percent=1.0, verbose=False)
        calls, restore = count_forwards(cached)
        try:
            runs[tag] = (sample(cached), len(calls))
        finally:
            restore()
    (ours, n_ours), (native, n_native) = runs["ours"], runs["native"]
    assert n_ours == n_native < STEPS, (n_ours, n_native)  # steps were skipped, the same number
    assert close(ours, native)


def test_scale_rope_moves_our_image_positions_as_it_moves_natives(env, extras):
    ours, native = (node(extras["rope"].ScaleROPE, m, scale_x=0.5, shift_x=1.5, scale_y=2.0, shift_y=-3.0,
                         scale_t=1.0, shift_t=0.0) for m in models(env))
    plain = sample(models(env)[0], steps=2)
    got, ref = sample(ours, steps=2), sample(native, steps=2)
    assert not close(got, plain, rel=1e-2)  # the positions matter
    assert close(got, ref)


def test_attention_override_sees_natives_calls_and_changes_our_attention_as_natives(env):
    calls = {}

    def override(tag):
        def attention(func, q, k, v, heads, mask=None, **kwargs):
            to = kwargs["transformer_options"]
            calls.setdefault(tag, []).append((to.get("block_type"), to.get("block_index"), to.get("total_blocks"),
                                              tuple(q.shape), heads, kwargs.get("skip_reshape")))
            return func(q * 1.5, k, v, heads, mask, **kwargs)  # sharper attention
        return attention

    outs = {}
    for tag, m in zip(("ours", "native"), models(env)):
        m = m.clone()
        m.model_options["transformer_options"]["optimized_attention_override"] = override(tag)
        outs[tag] = sample(m, steps=2)
    assert calls["ours"] == calls["native"]
    per_forward = 2 * CFG.n_refiner_layers + CFG.n_layers
    assert len(calls["ours"]) == 2 * per_forward
    assert calls["ours"][-1][:3] == ("double", CFG.n_layers - 1, CFG.n_layers)
    assert close(outs["ours"], outs["native"])
    assert not close(outs["ours"], sample(models(env)[0], steps=2), rel=1e-2)


def test_model_compute_dtype_makes_our_dit_compute_in_that_dtype_as_native(env, extras):
    bf16 = []
    for m in models(env):  # what ModelComputeDtype("bf16") does
        m = m.clone()
        m.set_model_compute_dtype(torch.bfloat16)
        bf16.append(m)
    ours, native = (sample(m, steps=2) for m in bf16)
    fp32 = sample(models(env)[0], steps=2)
    assert (ours - native).abs().max() < (fp32 - native).abs().max()  # ours computed in bf16 too
    assert close(ours, native, rel=2e-2)  # bf16 noise


@pytest.mark.parametrize("neg_tokens", [7, 12])
def test_nag_guidance_on_our_model_is_our_nag_with_the_same_settings(env, extras, neg_tokens):
    """ComfyUI's NAGuidance does nothing on native Z-Image (NextDiT never calls attn1_output_patch); on ours it
    is our NAG with the CFG negative as the NAG negative and scale = nag_scale - 1. With as many tokens as the
    positive (7) ComfyUI batches [cond, uncond] in one call; with another count (12) it runs them apart (Lumina2's
    num_tokens is a constant), and the positive's call still gets the negative."""
    negative = cond(9, n=neg_tokens)
    ours = models(env)[0]
    guided = node(extras["nag"].NAGuidance, ours, nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5)
    got = sample(guided, steps=2, negative=negative)
    nag_node = env["mod"]("nodes.nag").ZImageNAGModel()
    (ref_model,) = nag_node.apply(ours, negative, scale=4.0, tau=1.5, alpha=0.5)
    ref = sample(ref_model, steps=2, negative=negative)
    plain = sample(ours, steps=2, negative=negative)
    assert not close(ref, plain, rel=1e-2)
    assert close(got, ref)


@pytest.mark.parametrize("case", ["TomePatchModel", "SkipLayerGuidanceDiT", "unknown_patch"])
def test_patches_no_z_image_dit_can_honour_are_refused_naming_the_node(env, extras, case):
    ours = models(env)[0]
    if case == "TomePatchModel":
        m = node(extras["tomesd"].TomePatchModel, ours, ratio=0.3)
        words = ["'attn1_patch'", "'attn1_output_patch'", "TomePatchModel"]
    elif case == "SkipLayerGuidanceDiT":
        m = node(extras["slg"].SkipLayerGuidanceDiT, ours, double_layers="1", single_layers="", scale=3.0,
                 start_percent=0.0, end_percent=1.0, rescaling_scale=0.0)
        words = ["patches_replace 'dit'", "SkipLayerGuidanceDiT"]
    else:
        m = ours.clone()
        m.set_model_patch(lambda *a: a[0], "my_pack_patch")
        words = ["'my_pack_patch'", "another node or pack"]
    from zimage_core.errors import InputError

    with pytest.raises(Exception) as ei:
        sample(m, steps=1, negative=cond(9), cfg=2.0)
    assert type(ei.value).__name__ == InputError.__name__
    for w in words:
        assert w in str(ei.value), str(ei.value)


# -- the ModelPatcher overrides on newer hosts ----------------------------------------------------------------


def test_our_model_patcher_takes_newer_hosts_call_forms(env):
    """0.38.x calls patch_weight_to_device(key, device_to=..., force_cast=True) and passes fast_disk /
    force_patch_weights; on this 0.18.1 host our overrides accept them (and drop what the host's ModelPatcher does
    not take) instead of failing with 'takes from 2 to 5 positional arguments'."""
    from test_lora import random_lora, style_file

    lora = style_file(random_lora(env["state"], seed=10), "native_dm")
    m, _ = comfy.sd.load_lora_for_models(our_model(env), None, lora, 1.0, 0)
    key = "diffusion_model.layers.0.feed_forward.w1.weight"
    assert key in m.patches
    cpu = torch.device("cpu")
    w = m.patch_weight_to_device(key, device_to=cpu, return_weight=True, force_cast=True)
    assert w.shape == comfy.utils.get_attr(m.model, key).shape
    m.load(cpu, lowvram_model_memory=0, force_patch_weights=False, full_load=True)
    m.partially_unload(cpu, memory_to_free=0, force_patch_weights=True)
    m.unpatch_model(device_to=cpu, unpatch_weights=True)
    assert torch.equal(comfy.utils.get_attr(m.model, key), env["state"][key.removeprefix("diffusion_model.")])
    assert m.memory_required([1, 16, 8, 8]) > 0


def test_our_model_patcher_forwards_newer_keywords_to_a_host_that_takes_them(env):
    """With a host ModelPatcher of 0.38's signatures (emulated), the new keywords reach it unchanged."""
    got = {}

    class Newer(comfy.model_patcher.ModelPatcher):
        def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False,
                                   force_cast=False):
            got["patch_weight_to_device"] = force_cast
            return super().patch_weight_to_device(key, device_to, inplace_update, return_weight)

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False, **kwargs):
            got["partially_unload"] = (force_patch_weights, kwargs)
            return super().partially_unload(device_to, memory_to_free, force_patch_weights)

    cls = type("ZImageOnNewer", (env["hm"].ZImageModelPatcher, Newer), {})
    m = our_model(env)
    n = cls(m.model, m.load_device, m.offload_device, m.model_size())
    cpu = torch.device("cpu")
    key = "diffusion_model.layers.0.feed_forward.w1.weight"
    n.patch_weight_to_device(key, device_to=cpu, force_cast=True)
    n.partially_unload(cpu, memory_to_free=0, force_patch_weights=True, future_flag=1)
    assert got == {"patch_weight_to_device": True, "partially_unload": (True, {"future_flag": 1})}
