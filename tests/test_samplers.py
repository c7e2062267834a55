"""Every core sampler and scheduler against ComfyUI's own implementations, in process, on the same model.

ComfyUI (COMFYUI_PATH) is the oracle: its k-diffusion samplers run through its KSAMPLER (noise scaling, the
inpainting wrapper, seed handling) on a model whose model_sampling is ModelSamplingAuraFlow's (discrete flow,
shift 3, multiplier 1). The matrix uses a cheap smooth denoiser; a subset runs the real tiny DiT end to end.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from zimage_core.errors import InputError
from zimage_core.sampling.samplers import SAMPLERS, SHIFT_AWARE, Noise
from zimage_core.sampling.loop import Guidance, sample
from zimage_core.sampling.schedules import SCHEDULERS, flow_sigmas, scheduler_sigmas
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import ZImageDiT

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH not set (ComfyUI is the oracle)")]
SHIFT = 3.0
COMFY_SCHEDULERS = [n for n in SCHEDULERS if n != "zimage"]


@pytest.fixture(scope="module")
def comfy():
    sys.path.insert(0, COMFYUI)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported (this torch has no CUDA)
    import comfy.k_diffusion.sampling
    import comfy.model_sampling as ms
    import comfy.samplers as samplers

    class AuraFlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):  # what ModelSamplingAuraFlow patches in
        pass

    m = AuraFlowSampling()
    m.set_parameters(shift=SHIFT, multiplier=1.0)
    return samplers, m


class ComfyModel:
    """The object KSAMPLER.sample takes as model_wrap: `inner_model.model_sampling`, `model_patcher`, and a
    call returning the denoised x0 for (x, sigma)."""

    def __init__(self, model_sampling, x0_fn):
        self.x0_fn = x0_fn
        ms = model_sampling

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


def comfy_sample(comfy, name, x0_fn, noise, sigmas, seed, latent_image=None, mask=None):
    samplers, ms = comfy
    latent = torch.zeros_like(noise) if latent_image is None else latent_image
    return samplers.sampler_object(name).sample(
        ComfyModel(ms, x0_fn), sigmas.clone(), {"seed": seed, "model_options": {}}, None, noise.clone(),
        latent_image=latent, denoise_mask=mask, disable_pbar=True)


def smooth_x0(x, sigma):
    """A cheap deterministic stand-in for a denoiser: smooth, nonlinear in x and sigma."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * torch.tanh(x) * (1 - 0.5 * s) + 0.2 * torch.sin(2 * x + 3 * s)


def core_sample(name, x0_fn, noise, sigmas, seed, latent_image=None, mask=None):
    """Our sampler `name` on x0_fn, with the same mask rule and start as `sampling.sample`."""
    from zimage_core.sampling.loop import initial_latent

    def denoise(x, sigma, step):
        if mask is not None:
            x = mask * x + (1 - mask) * initial_latent(noise, float(sigma), latent_image)
        x0 = x0_fn(x, sigma.reshape(1).expand(x.shape[0]))
        return x0 if mask is None else mask * x0 + (1 - mask) * latent_image

    x = initial_latent(noise, float(sigmas[0]), latent_image)
    kwargs = {"shift": SHIFT} if name in SHIFT_AWARE else {}
    return SAMPLERS[name](denoise, x, sigmas, Noise(x, sigmas, seed), lambda *a: None, **kwargs)


# --------------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("name,steps", [(n, s) for n in COMFY_SCHEDULERS for s in (1, 4, 9, 30)
                                         if not (n == "kl_optimal" and s == 1)])  # it divides by steps - 1
def test_scheduler_gives_comfyui_calculate_sigmas(comfy, name, steps):
    samplers, ms = comfy
    ref = samplers.calculate_sigmas(ms, name, steps)
    assert torch.equal(scheduler_sigmas(name, steps, SHIFT), ref.float())


@pytest.mark.parametrize("shift", [1.0, 6.0])
def test_schedulers_follow_the_shift_like_comfyui(comfy, shift):
    samplers, _ = comfy
    import comfy.model_sampling as ms

    class AuraFlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    m = AuraFlowSampling()
    m.set_parameters(shift=shift, multiplier=1.0)
    for name in COMFY_SCHEDULERS:
        assert torch.equal(scheduler_sigmas(name, 7, shift), samplers.calculate_sigmas(m, name, 7).float()), name


def test_denoise_and_uni_pc_schedules_follow_ksampler(comfy):
    samplers, ms = comfy

    class Patched:
        def get_model_object(self, name):
            return ms

    for sampler, denoise in (("euler", 0.6), ("uni_pc", 1.0), ("uni_pc", 0.5)):
        ks = samplers.KSampler(Patched(), 6, "cpu", sampler=sampler, scheduler="karras", denoise=denoise)
        assert torch.equal(scheduler_sigmas("karras", 6, SHIFT, denoise, sampler), ks.sigmas.float())


def test_zimage_schedule_is_the_reference_turbo_one():
    assert torch.equal(scheduler_sigmas("zimage", 8, 3.0), flow_sigmas(8, 3.0))


def test_unknown_scheduler_names_the_value_and_the_choices():
    with pytest.raises(InputError, match="'bogus'.*karras"):
        scheduler_sigmas("bogus", 8)


# ---------------------------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_matches_comfyui_on_every_scheduler(comfy, name):
    seed = 1234
    noise = torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(seed))
    worst = 0.0
    for sched in SCHEDULERS:
        sigmas = scheduler_sigmas(sched, 6, SHIFT)
        ref = comfy_sample(comfy, name, smooth_x0, noise, sigmas, seed)
        ours = core_sample(name, smooth_x0, noise, sigmas, seed)
        err = float((ours - ref).abs().max())
        assert err <= 1e-4, f"{name} / {sched}: max |ours - comfyui| = {err:.2e}"
        worst = max(worst, err)
    print(f"{name}: worst max abs error over {len(SCHEDULERS)} schedulers {worst:.2e}")


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "er_sde", "lcm"])
def test_stochastic_sampler_noise_depends_on_the_seed_like_comfyui(comfy, name):
    noise = torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(5))
    sigmas = scheduler_sigmas("simple", 5, SHIFT)
    a, b = core_sample(name, smooth_x0, noise, sigmas, 5), core_sample(name, smooth_x0, noise, sigmas, 6)
    assert (a - b).abs().max() > 1e-3  # a different seed draws different ancestral/SDE noise
    assert (b - comfy_sample(comfy, name, smooth_x0, noise, sigmas, 6)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m_sde", "res_multistep", "euler_ancestral"])
def test_inpainting_and_image_to_image_match_comfyui(comfy, name):
    g = torch.Generator().manual_seed(3)
    noise, image = torch.randn((1, 4, 6, 6), generator=g), torch.randn((1, 4, 6, 6), generator=g)
    mask = torch.zeros((1, 1, 6, 6))
    mask[..., 2:5, 1:4] = 1.0
    sigmas = scheduler_sigmas("beta", 8, SHIFT, denoise=0.7)
    ref = comfy_sample(comfy, name, smooth_x0, noise, sigmas, 3, latent_image=image, mask=mask)
    ours = core_sample(name, smooth_x0, noise, sigmas, 3, latent_image=image, mask=mask)
    assert (ours - ref).abs().max() <= 1e-4
    assert torch.allclose(ours[..., 0, :], image[..., 0, :], atol=1e-5)  # the unmasked area is the image


# ----------------------------------------------------------------------------------- the real tiny DiT

@pytest.fixture(scope="module")
def dit():
    model = ZImageDiT(TINY_DIT).eval()
    model.load_state_dict(random_dit_state(TINY_DIT, seed=0))
    g = torch.Generator().manual_seed(7)
    ctx = model.encode_context([torch.randn(5, TINY_DIT.cap_feat_dim, generator=g)])
    neg = model.encode_context([torch.randn(3, TINY_DIT.cap_feat_dim, generator=g)])
    return model, ctx, neg


@pytest.mark.parametrize("name,sched", [("euler", "simple"), ("euler_ancestral", "normal"), ("heun", "karras"),
                                        ("dpmpp_2m", "beta"), ("dpmpp_2m_sde", "sgm_uniform"),
                                        ("dpmpp_sde", "exponential"), ("res_multistep", "linear_quadratic"),
                                        ("er_sde", "simple"), ("lcm", "zimage"), ("deis", "normal"),
                                        ("uni_pc", "karras"), ("uni_pc_bh2", "simple")])
def test_tiny_dit_with_cfg_matches_comfyui_ksampler(comfy, dit, name, sched):
    model, ctx, neg = dit
    guidance = Guidance(neg, cfg=3.0)
    seed = 42
    noise = torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(seed))
    sigmas = scheduler_sigmas(sched, 4, SHIFT, sampler=name)

    def x0_fn(x, sigma):  # ComfyUI's CFG on the DiT's x0 (what its CFGGuider computes for this model)
        v_pos = model.velocity(x, sigma, ctx)
        v_neg = model.velocity(x, sigma, neg)
        s = sigma.reshape(-1, 1, 1, 1)
        pos, un = x - v_pos * s, x - v_neg * s
        return un + (pos - un) * 3.0

    with torch.no_grad():
        ref = comfy_sample(comfy, name, x0_fn, noise, sigmas, seed)
        ours = sample(model, noise, ctx, sigmas, name, seed=seed, shift=SHIFT, guidance=guidance)
    err = float((ours - ref).abs().max())
    print(f"tiny DiT {name}/{sched}: max |ours - comfyui| = {err:.2e} (latent scale {float(ref.abs().max()):.2f})")
    assert err <= 1e-4


def test_unknown_sampler_names_the_value_and_the_choices(dit):
    model, ctx, _ = dit
    with pytest.raises(InputError, match="'bogus'.*dpmpp_2m_sde"):
        sample(model, torch.zeros(1, 16, 4, 4), ctx, flow_sigmas(2), "bogus")


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "uni_pc"])
def test_tiny_dit_inpainting_at_denoise_0_7_matches_comfyui_ksampler(comfy, dit, name):
    model, ctx, _ = dit
    g = torch.Generator().manual_seed(9)
    noise, image = torch.randn((1, 16, 4, 4), generator=g), torch.randn((1, 16, 4, 4), generator=g)
    mask = torch.zeros((1, 1, 4, 4))
    mask[..., 1:3, :] = 1.0
    sigmas = scheduler_sigmas("beta", 5, SHIFT, denoise=0.7, sampler=name)

    def x0_fn(x, sigma):
        return x - model.velocity(x, sigma, ctx) * sigma.reshape(-1, 1, 1, 1)

    with torch.no_grad():
        ref = comfy_sample(comfy, name, x0_fn, noise, sigmas, 9, latent_image=image, mask=mask)
        ours = sample(model, noise, ctx, sigmas, name, seed=9, shift=SHIFT, latent_image=image, noise_mask=mask)
    assert (ours - ref).abs().max() <= 1e-4


def test_every_sampler_reports_each_step_and_passes_its_index_to_the_step_controls(dit):
    model, ctx, _ = dit
    noise = torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(1))
    sigmas = scheduler_sigmas("simple", 3, SHIFT)
    for name in SAMPLERS:
        seen, reported = set(), []

        def controls(step, sigma, n, seen=seen):
            assert n == 3
            seen.add(step)
            return {}

        with torch.no_grad():
            sample(model, noise, ctx, sigmas, name, seed=1, callback=lambda i, n, x, x0, r=reported: r.append(i),
                   step_controls=controls)
        assert reported == [0, 1, 2] and seen == {0, 1, 2}, name


def test_a_callback_that_raises_interrupts_any_sampler(dit):
    model, ctx, _ = dit

    def cancel(i, n, x, x0):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(model, torch.zeros(1, 16, 4, 4), ctx, scheduler_sigmas("karras", 3), "dpmpp_sde", seed=0,
               callback=cancel)
