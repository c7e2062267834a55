"""ControlNet Union: parity with diffusers' ZImageControlNetModel + ZImageTransformer2DModel for every variant
(1.0 'plain', 2.0 'layers', 2.1 'refiner', inpaint-capable 33-channel input, lite), loading, scale/range/mask."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.controlnet import Control, ControlStep, load_controlnet
from zimage_core.dit_loader import load_dit
from zimage_core.errors import CheckpointError, InputError
from zimage_core.tiny.dit import TINY_DIT, random_dit_state, write_diffusers_folder

diffusers = pytest.importorskip("diffusers")

# variant -> (diffusers add_control_noise_refiner, control_in_dim, number of control layers)
VARIANTS = {
    "1.0": (None, 16, 2),
    "2.0": ("control_layers", 33, 2),
    "2.1": ("control_noise_refiner", 33, 2),
    "lite": ("control_noise_refiner", 33, 1),
}
OUR_VARIANT = {None: "plain", "control_layers": "layers", "control_noise_refiner": "refiner"}


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    d = tmp_path_factory.mktemp("cn_dit")
    state = random_dit_state(TINY_DIT, seed=3)
    save_file(state, str(d / "dit.safetensors"))
    write_diffusers_folder(state, TINY_DIT, d / "transformer")
    ref = diffusers.ZImageTransformer2DModel.from_pretrained(str(d / "transformer")).eval()
    return load_dit(d / "dit.safetensors", "fp32"), ref


def reference_controlnet(variant, seed=0):
    mode, in_dim, n = VARIANTS[variant]
    step = round(TINY_DIT.n_layers / n)
    net = diffusers.ZImageControlNetModel(
        control_layers_places=[k * step for k in range(n)], control_refiner_layers_places=[0, 1],
        control_in_dim=in_dim, add_control_noise_refiner=mode, dim=TINY_DIT.dim, n_refiner_layers=2,
        n_heads=TINY_DIT.n_heads, n_kv_heads=TINY_DIT.n_heads).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised projections get weights, or the hints would all be 0
        for name, p in net.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5))
    return net


def write(net, path, prefix=""):
    """The branch's own tensors, as the released files hold them."""
    save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items() if k.startswith("control_")},
              str(path))
    return path


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_hints_and_output_match_diffusers(dit, tmp_path, variant):
    ours_dit, ref_dit = dit
    ref_net = diffusers.ZImageControlNetModel.from_transformer(reference_controlnet(variant), ref_dit)
    net = load_controlnet(write(ref_net, tmp_path / "cn.safetensors"), "fp32")
    assert net.cfg.variant == OUR_VARIANT[VARIANTS[variant][0]]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 10, 14, generator=g)
    caps = [torch.randn(7, TINY_DIT.cap_feat_dim, generator=g), torch.randn(40, TINY_DIT.cap_feat_dim, generator=g)]
    ctl = torch.randn(2, net.cfg.control_in_dim, 10, 14, generator=g)
    t = torch.tensor([0.3, 0.85])
    for scale in (0.0, 0.7, 1.0):
        hints = ref_net(list(x.unsqueeze(2)), t, caps, list(ctl.unsqueeze(2)), conditioning_scale=scale)
        expected = ref_dit(list(x.unsqueeze(2)), t, caps, controlnet_block_samples=hints, return_dict=False)[0]
        got = ours_dit(x, t, caps, control=ControlStep([Control(net, ctl, scale)]))
        assert rel_err(got, torch.stack(expected)[:, :, 0]) <= 1e-5, (variant, scale)


@torch.no_grad()
def test_two_controls_sum_their_hints_and_a_zero_mask_removes_the_image_part(dit, tmp_path):
    ours_dit, ref_dit = dit
    net = load_controlnet(write(reference_controlnet("1.0", seed=4), tmp_path / "a.safetensors"), "fp32")
    g = torch.Generator().manual_seed(2)
    x, cap = torch.randn(1, 16, 8, 8, generator=g), [torch.randn(9, TINY_DIT.cap_feat_dim, generator=g)]
    a, b = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    t = torch.tensor([0.5])
    both = ours_dit(x, t, cap, control=ControlStep([Control(net, a, 0.6), Control(net, b, 0.3)]))
    plain = ours_dit(x, t, cap)
    only_a = ours_dit(x, t, cap, control=ControlStep([Control(net, a, 0.6)]))
    assert rel_err(both, plain) > 1e-3 and rel_err(both, only_a) > 1e-3
    full_mask = ours_dit(x, t, cap, control=ControlStep([Control(net, a, 0.6, mask=torch.ones(1, 1, 8, 8))]))
    assert torch.allclose(full_mask, only_a, atol=1e-6)
    zero_mask = ours_dit(x, t, cap, control=ControlStep([Control(net, a, 0.6, mask=torch.zeros(1, 1, 8, 8))]))
    assert rel_err(zero_mask, plain) > 1e-4  # caption tokens still receive the hint
    assert rel_err(zero_mask, only_a) > 1e-4


def test_files_load_with_prefixes_and_in_bf16(tmp_path):
    ref = reference_controlnet("2.1")
    a = load_controlnet(write(ref, tmp_path / "plain.safetensors"), "fp32")
    b = load_controlnet(write(ref, tmp_path / "prefixed.safetensors", "model.diffusion_model."), "fp32")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    c = load_controlnet(write(ref.to(torch.bfloat16), tmp_path / "bf16.safetensors"))
    assert c.control_layers[0].attention.qkv.weight.dtype == torch.bfloat16


def test_zero_refiner_of_2_0_files_is_detected(tmp_path):
    ref = reference_controlnet("2.1")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if k.startswith("control_")}
    sd["control_noise_refiner.0.before_proj.weight"].zero_()
    save_file(sd, str(tmp_path / "cn20.safetensors"))
    net = load_controlnet(tmp_path / "cn20.safetensors", "fp32")
    assert net.cfg.variant == "layers" and net.control_noise_refiner is None


def test_wrong_files_and_bad_inputs_get_clear_errors(tmp_path, dit):
    ours_dit, _ = dit
    save_file(random_dit_state(TINY_DIT), str(tmp_path / "dit.safetensors"))
    with pytest.raises(CheckpointError, match="expected a Z-Image ControlNet.*Z-Image DiT"):
        load_controlnet(tmp_path / "dit.safetensors")
    net = load_controlnet(write(reference_controlnet("1.0"), tmp_path / "cn.safetensors"), "fp32")
    with pytest.raises(InputError, match="start 0.8 and end 0.2"):
        Control(net, torch.zeros(1, 16, 8, 8), start=0.8, end=0.2)
    with pytest.raises(InputError, match="takes \\[B, 16, H, W\\]"):
        Control(net, torch.zeros(1, 33, 8, 8))
    with pytest.raises(InputError, match="resize the control image"):
        ours_dit(torch.zeros(1, 16, 8, 8), torch.tensor([0.5]), [torch.zeros(3, 64)],
                 control=ControlStep([Control(net, torch.zeros(1, 16, 12, 8))]))
