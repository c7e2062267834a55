"""ControlNet on the MODEL path, inside ComfyUI (in process):

- ComfyUI's own ModelPatchLoader + ZImageFunControlnet applied to OUR bridged MODEL gives the image it gives on
  ComfyUI's native NextDiT with the same weights (its patch runs its branch on the dictionary our adapter passes
  at 'noise_refiner' / 'double_block', NextDiT's rotary layout included);
- our control (ZImageControlNetApply's: start/end, mask, unified-sequence injection) carried by the ZIMAGE_DIT
  through the conversion to MODEL gives in KSampler what our own sampler gives;
- side by side, native vs reference injection on the same file: measured, and equal where they agree by
  construction.

The DiT is 256 wide with 30 main layers: ComfyUI's ZImageFunControlnet spaces the hints over 30 layers
whatever the DiT, and NextDiT needs >= 256 width (its timestep output). The ControlNet files have the released
layer counts (6 for 1.0, 15 for 2.x, 3 for lite), which is how ModelPatchLoader tells them apart; its ZImage_Control
is built at this width (its constructor defaults are the 3840-wide model's).
"""
from __future__ import annotations

import functools
import importlib

import pytest
import torch
from comfy_inprocess import (  # skips the module without COMFYUI_PATH
    comfy,
    folder_paths,
    native_model,
    nodes_model_patch,
    our_model,
)
from safetensors.torch import save_file

from zimage_core.adapters.controlnet import ControlNetConfig
from zimage_core.tiny.controlnet import random_controlnet_state
from zimage_core.tiny.dit import random_dit_state
from zimage_core.tiny.vae import write_tiny_vae
from zimage_core.model.transformer import DiTConfig

CFG = DiTConfig(dim=256, n_layers=30, n_refiner_layers=2, n_heads=4, ffn_dim=682, cap_feat_dim=64, t_mid_dim=256)
CPU = torch.device("cpu")
STEPS, SEED = 3, 42
H, W = 64, 128  # pixels; latent 8 x 16, 32 image tokens (no padding row)
# name -> (our variant, control_in_dim, control layers): the released layer counts ModelPatchLoader recognises
FILES = {"1.0": ("plain", 16, 6), "2.0": ("layers", 33, 15), "2.1": ("refiner", 33, 15), "lite": ("refiner", 33, 3)}


@pytest.fixture(scope="module")
def env(pack, tmp_path_factory):
    d = tmp_path_factory.mktemp("cn_comfy")
    mod = lambda n: importlib.import_module(f"{pack.__name__}.{n}")
    state = random_dit_state(CFG, seed=3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "dit.safetensors"))
    dit = mod("zimage_core.model.dit_loader").load_dit(d / "dit.safetensors", "fp32")
    for name, (variant, in_dim, n) in FILES.items():
        cfg = ControlNetConfig(dim=CFG.dim, n_heads=CFG.n_heads, ffn_dim=CFG.ffn_dim, control_in_dim=in_dim,
                               n_control_layers=n, variant=variant)
        save_file(random_controlnet_state(cfg, seed=7), str(d / f"cn_{name}.safetensors"))
    folder_paths.add_model_folder_path("model_patches", str(d))
    vae = mod("zimage_core.model.vae").load_vae(write_tiny_vae(d / "vae")["bfl"])
    return {"dir": d, "state": state, "patched": mod("zimage_core.adapters.patching").PatchedDiT(dit), "vae": vae,
            "hm": mod("nodes.host_model"), "mod": mod}


class ComfyVAE:
    """What ZImageControlPatch asks of a ComfyUI VAE (encode an IMAGE to a raw latent; its compression), over
    our tiny Flux VAE: both paths under comparison encode with the very same weights."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, image):
        return self.vae.encode(image[..., :3].movedim(-1, 1).float() * 2 - 1)

    def spacial_compression_encode(self):
        return 8


def native_patch(name):
    """ModelPatchLoader's own detection and loading, with ZImage_Control built at this DiT's width."""
    real = comfy.ldm.lumina.controlnet.ZImage_Control
    narrow = functools.partial(real, dim=CFG.dim, n_heads=CFG.n_heads, n_kv_heads=CFG.n_heads, multiple_of=1)
    comfy.ldm.lumina.controlnet.ZImage_Control = narrow
    try:
        (patch,) = nodes_model_patch.ModelPatchLoader().load_model_patch(f"cn_{name}.safetensors")
    finally:
        comfy.ldm.lumina.controlnet.ZImage_Control = real
    return patch


def with_native_control(model, env, name, image, strength=0.8, inpaint_image=None, mask=None):
    (m,) = nodes_model_patch.ZImageFunControlnet().diffsynth_controlnet(
        model, native_patch(name), ComfyVAE(env["vae"]), image, strength, inpaint_image=inpaint_image, mask=mask)
    return m


def cond(seed, n=7):
    return [[torch.randn(1, n, CFG.cap_feat_dim, generator=torch.Generator().manual_seed(seed)), {}]]


def ksample(model, latent=None):
    latent = torch.zeros(1, 16, H // 8, W // 8) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, SEED)
    return comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", cond(1), [[torch.zeros(1, 7, 64), {}]],
                               latent, seed=SEED, disable_pbar=True)


def pixels(env, latent):
    """0..255 pixels of a model-space latent through the tiny VAE."""
    from zimage_core.model.latent import to_vae_space

    img = env["vae"].decode(to_vae_space(latent))
    return ((img.clamp(-1, 1) + 1) * 127.5).round()


def image(seed, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)


def inpaint_inputs():
    mask = torch.zeros(1, H, W)
    mask[:, 16:48, 32:96] = 1.0  # 1 = repaint
    return image(8), mask


@pytest.mark.parametrize("name", list(FILES))
def test_native_zimage_fun_controlnet_on_our_model_equals_it_on_native_nextdit(env, name):
    kw = {}
    if FILES[name][1] == 33:
        kw["inpaint_image"], kw["mask"] = inpaint_inputs()
    ours = ksample(with_native_control(our_model(env), env, name, image(4), **kw))
    native = ksample(with_native_control(native_model(env), env, name, image(4), **kw))
    plain = ksample(our_model(env))
    a, b = pixels(env, ours), pixels(env, native)
    assert (pixels(env, plain) - b).abs().max() > 10  # the control matters
    assert (a - b).abs().max() <= 1, name


def test_our_control_reaches_ksampler_through_the_model_and_equals_our_sampler(env):
    """ZImageControlNetApply's control (a range and a mask) on the ZIMAGE_DIT survives ZImageDiTToModel."""
    from zimage_core.adapters.controlnet import ControlImage, ControlPatch, load_controlnet

    net = load_controlnet(env["dir"] / "cn_2.1.safetensors", "fp32")
    mask = torch.ones(1, H, W)
    mask[:, :, : W // 2] = 0.3
    ctl = ControlImage(net, image(4), 0.8, 0.0, 0.7, mask=mask).to_control(env["vae"])
    patched = env["patched"].with_patch(ControlPatch([ctl]))
    got = ksample(our_model(env, patched))
    sigmas = comfy.samplers.calculate_sigmas(our_model(env).get_model_object("model_sampling"), "simple", STEPS)
    sampler = env["mod"]("nodes.sampler").ZImageSampler()
    (ref,) = sampler.sample(patched, cond(1), {"samples": torch.zeros(1, 16, H // 8, W // 8)}, SEED, steps=STEPS,
                            cfg=1.0, shift=3.0, sigmas=sigmas)
    plain = ksample(our_model(env))
    a, b = pixels(env, got), pixels(env, ref["samples"])
    assert (pixels(env, plain) - b).abs().max() > 10
    assert (a - b).abs().max() <= 1


def our_control(env, name, tokens, **kw):
    from zimage_core.adapters.controlnet import ControlImage, ControlPatch, load_controlnet

    net = load_controlnet(env["dir"] / f"cn_{name}.safetensors", "fp32")
    ctl = ControlImage(net, image(4), 0.8, tokens=tokens, **kw).to_control(env["vae"])
    return env["patched"].with_patch(ControlPatch([ctl]))


def both_injections(env, name):
    """(ours with the reference's unified-sequence injection, ours with tokens='image', native
    ZImageFunControlnet): pixels of each, same file, control image, seed and sampler."""
    kw, native_kw = {}, {}
    if FILES[name][1] == 33:
        inpaint, mask = inpaint_inputs()
        kw = {"inpaint_image": inpaint, "inpaint_mask": mask}
        native_kw = {"inpaint_image": inpaint, "mask": mask}
    unified = ksample(our_model(env, our_control(env, name, "unified", **kw)))
    image_only = ksample(our_model(env, our_control(env, name, "image", **kw)))
    native = ksample(with_native_control(native_model(env), env, name, image(4), **native_kw))
    return pixels(env, unified), pixels(env, image_only), pixels(env, native)


@pytest.mark.parametrize("name", list(FILES))
def test_image_token_injection_equals_native_zimage_fun_controlnet_and_unified_differs(env, name):
    """Where both agree by construction (our tokens='image' follows ZImageFunControlnet's injection) the images
    match; the reference's unified-sequence injection (our default) gives another picture on the same file."""
    unified, image_only, native = both_injections(env, name)
    assert (image_only - native).abs().max() <= 1, name
    diff = (unified - native).abs()
    print(f"\n{name}: unified vs native injection: max {diff.max():.0f}/255, mean {diff.mean():.2f}/255")
    assert diff.max() > 10
