"""ControlNet Union: parity with diffusers' ZImageControlNetModel + ZImageTransformer2DModel for every variant
(1.0 'plain', 2.0 'layers', 2.1 'refiner', inpaint-capable 33-channel input, lite), loading, scale/range/mask."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.adapters.controlnet import Control, ControlStep, load_controlnet
from zimage_core.model.dit_loader import load_dit
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
    z = torch.zeros(2, 2)
    others = {  # key names of the released files of each family (a few each)
        "a Flux ControlNet": {"controlnet_blocks.0.weight": z, "double_blocks.0.img_attn.qkv.weight": z,
                              "pos_embed_input.weight": z},
        "a Stable Diffusion / SDXL ControlNet": {"control_model.input_blocks.0.0.weight": z,
                                                 "control_model.zero_convs.0.0.weight": z},
        "a Qwen-Image blockwise ControlNet": {"controlnet_blocks.0.y_rms.weight": z, "img_in.weight": z},
        "a Qwen-Image ControlNet": {"controlnet_blocks.0.weight": z, "transformer_blocks.0.img_mod.1.weight": z},
    }
    for i, (family, sd) in enumerate(others.items()):
        save_file({k: v.clone() for k, v in sd.items()}, str(tmp_path / f"other{i}.safetensors"))
        with pytest.raises(CheckpointError, match=f"expected a Z-Image ControlNet.*looks like {family}"):
            load_controlnet(tmp_path / f"other{i}.safetensors")
    net = load_controlnet(write(reference_controlnet("1.0"), tmp_path / "cn.safetensors"), "fp32")
    with pytest.raises(InputError, match="start 0.8 and end 0.2"):
        Control(net, torch.zeros(1, 16, 8, 8), start=0.8, end=0.2)
    with pytest.raises(InputError, match="takes \\[B, 16, H, W\\]"):
        Control(net, torch.zeros(1, 33, 8, 8))
    with pytest.raises(InputError, match="resize the control image"):
        ours_dit(torch.zeros(1, 16, 8, 8), torch.tensor([0.5]), [torch.zeros(3, 64)],
                 control=ControlStep([Control(net, torch.zeros(1, 16, 12, 8))]))


# ------------------------------------------------------------------------------ whole pipelines, tiny files

PROMPT = "a red fox sitting in the snow at sunrise"
W, H = 128, 96


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from zimage_core.pipeline import ZImagePipeline
    from zimage_core.tiny import make_tiny
    from zimage_core.tiny.controlnet import write_tiny_controlnets

    d = tmp_path_factory.mktemp("cn_tiny")
    paths = make_tiny(d / "models")
    nets = write_tiny_controlnets(d / "controlnets")
    pipe = ZImagePipeline.from_files(paths["dit"], paths["text_encoder"], paths["vae"], paths["tokenizer"], "fp32")
    return paths, nets, pipe


def _image(seed, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)  # IMAGE


def _pixels(images):
    import numpy as np

    a = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return (a * 255).round().astype(np.int32)


def test_single_file_and_diffusers_folder_load_the_same_weights(tiny_set):
    _, nets, _ = tiny_set
    for variant in ("1.0", "2.0", "2.1", "lite", "tile", "inpaint"):
        a, b = load_controlnet(nets[variant], "fp32"), load_controlnet(nets[variant + "/diffusers"], "fp32")
        assert a.cfg == b.cfg
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(va, vb), (variant, k)


@pytest.mark.parametrize("variant,scale,end", [("1.0", 0.7, 1.0), ("2.1", 1.0, 1.0), ("2.0", 0.7, 1.0),
                                               ("tile", 0.85, 1.0), ("lite", 0.7, 1.0)])
def test_controlnet_pipeline_matches_diffusers(tiny_set, variant, scale, end):
    from zimage_core.adapters.controlnet import ControlImage

    paths, nets, pipe = tiny_set
    ref_net = diffusers.ZImageControlNetModel.from_pretrained(str(nets[variant + "/diffusers"]))
    ref = diffusers.ZImageControlNetPipeline.from_pretrained(str(paths["diffusers"]), controlnet=ref_net)
    control = _image(3)
    expected = ref(PROMPT, control_image=control.permute(0, 3, 1, 2) * 2 - 1, controlnet_conditioning_scale=scale,
                   height=H, width=W, num_inference_steps=4, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(9), output_type="np").images
    net = load_controlnet(nets[variant], "fp32")
    got = pipe.generate(PROMPT, width=W, height=H, steps=4, seed=9, controls=[ControlImage(net, control, scale)])
    a, b = _pixels(got), _pixels(expected)
    assert b.std() > 20 and abs(a - b).max() <= 1
    plain = _pixels(pipe.generate(PROMPT, width=W, height=H, steps=4, seed=9))
    assert abs(a - plain).max() > 10  # the control changed the picture


@pytest.mark.parametrize("variant", ["2.1", "inpaint"])
def test_controlnet_inpaint_pipeline_matches_diffusers(tiny_set, variant):
    from zimage_core.adapters.controlnet import ControlImage

    paths, nets, pipe = tiny_set
    ref_net = diffusers.ZImageControlNetModel.from_pretrained(str(nets[variant + "/diffusers"]))
    ref = diffusers.ZImageControlNetInpaintPipeline.from_pretrained(str(paths["diffusers"]), controlnet=ref_net)
    control, init = _image(4), _image(5)
    mask = torch.zeros(1, H, W)
    mask[:, 16:80, 32:96] = 1.0
    expected = ref(PROMPT, image=init.permute(0, 3, 1, 2) * 2 - 1, mask_image=mask[:, None],
                   control_image=control.permute(0, 3, 1, 2) * 2 - 1, controlnet_conditioning_scale=0.9,
                   height=H, width=W, num_inference_steps=4, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(2), output_type="np").images
    net = load_controlnet(nets[variant], "fp32")
    got = pipe.generate(PROMPT, width=W, height=H, steps=4, seed=2, controls=[
        ControlImage(net, control, 0.9, inpaint_image=init, inpaint_mask=mask)])
    a, b = _pixels(got), _pixels(expected)
    assert abs(a - b).max() <= 1


def test_partial_range_equals_the_reference_with_the_hint_off_outside_it(tiny_set):
    """start/end in model time t = 1 - sigma: with end 0.2 the control acts on the steps with sigma >= 0.8.
    The reference: diffusers' denoising loop with the scale set to 0 on the other steps."""
    from zimage_core.adapters.controlnet import ControlImage
    from zimage_core.sampling.schedules import flow_sigmas

    paths, nets, pipe = tiny_set
    ref_net = diffusers.ZImageControlNetModel.from_pretrained(str(nets["1.0/diffusers"]))
    ref = diffusers.ZImageControlNetPipeline.from_pretrained(str(paths["diffusers"]), controlnet=ref_net)
    sig = flow_sigmas(4).tolist()[:-1]
    on = [0.0 <= 1 - s <= 0.2 for s in sig]
    assert any(on) and not all(on)
    scales = iter([0.8 if o else 0.0 for o in on])
    forward = ref_net.forward
    ref_net.forward = lambda *a, conditioning_scale=1.0, **k: forward(*a, conditioning_scale=next(scales), **k)
    control = _image(6)
    expected = ref(PROMPT, control_image=control.permute(0, 3, 1, 2) * 2 - 1, controlnet_conditioning_scale=0.8,
                   height=H, width=W, num_inference_steps=4, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(1), output_type="np").images
    net = load_controlnet(nets["1.0"], "fp32")
    got = pipe.generate(PROMPT, width=W, height=H, steps=4, seed=1,
                        controls=[ControlImage(net, control, 0.8, start=0.0, end=0.2)])
    assert abs(_pixels(got) - _pixels(expected)).max() <= 1


def test_cli_control_gives_the_pipeline_image(tiny_set, tmp_path):
    import numpy as np
    from PIL import Image

    from zimage_core.tools.cli import main
    from zimage_core.adapters.controlnet import ControlImage

    paths, nets, pipe = tiny_set
    control = _image(7)
    Image.fromarray((control[0].numpy() * 255).round().astype(np.uint8)).save(tmp_path / "canny.png")
    rc = main(["generate", "--dit", str(paths["dit"]), "--text-encoder", str(paths["text_encoder"]),
               "--vae", str(paths["vae"]), "--tokenizer", str(paths["tokenizer"]), "--prompt", PROMPT,
               "--width", str(W), "--height", str(H), "--steps", "2", "--seed", "4",
               "--control", str(tmp_path / "canny.png"), "--control-model", str(nets["2.1"]),
               "--control-scale", "0.6", "--out", str(tmp_path / "out.png")])
    assert rc == 0
    saved = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(np.int32)
    reread = torch.from_numpy(np.asarray(Image.open(tmp_path / "canny.png"), dtype=np.float32) / 255)[None]
    net = load_controlnet(nets["2.1"])
    expected = _pixels(pipe.generate(PROMPT, width=W, height=H, steps=2, seed=4,
                                     controls=[ControlImage(net, reread, 0.6)]))[0]
    assert abs(saved - expected).max() <= 1
    rc = main(["generate", "--dit", str(paths["dit"]), "--text-encoder", str(paths["text_encoder"]),
               "--vae", str(paths["vae"]), "--tokenizer", str(paths["tokenizer"]), "--prompt", PROMPT,
               "--width", str(W), "--height", str(H), "--steps", "2", "--seed", "4",
               "--control", str(tmp_path / "canny.png"), "--control-model", str(nets["2.1"]),
               "--control-scale", "0.6", "--control-tokens", "image", "--out", str(tmp_path / "image.png")])
    assert rc == 0
    saved = np.asarray(Image.open(tmp_path / "image.png").convert("RGB")).astype(np.int32)
    expected_image = _pixels(pipe.generate(PROMPT, width=W, height=H, steps=2, seed=4,
                                           controls=[ControlImage(net, reread, 0.6, tokens="image")]))[0]
    assert abs(saved - expected_image).max() <= 1 and abs(expected_image - expected).max() > 1


def test_cli_control_errors_are_clear(tiny_set, tmp_path, capsys):
    from zimage_core.tools.cli import main

    paths, nets, _ = tiny_set
    base = ["generate", "--tiny", "--prompt", "x", "--width", "64", "--height", "64", "--steps", "1",
            "--out", str(tmp_path / "o.png")]
    assert main(base + ["--control", "a.png"]) == 2
    assert "1 --control image(s) but 0 --control-model" in capsys.readouterr().err
    assert main(base + ["--control-inpaint"]) == 2
    assert "--control-inpaint needs a ControlNet" in capsys.readouterr().err


# Released files -> (control_in_dim, control layers, refiner kind, the DiT layers their config lists, the model
# type diffusers' single-file detection assigns). Configs: 1.0 = hlky/Z-Image-Turbo-Fun-Controlnet-Union
# (control_layers_places 0, 5, ..., 25; add_control_noise_refiner None; control_in_dim 16); 2.0 / 2.1 =
# hlky/...-Union-2.0 / -2.1 (places 0, 2, ..., 28; refiner places [0, 1]; "control_layers" /
# "control_noise_refiner"; control_in_dim 33); lite = VideoX-Fun's 2.1 lite config (places 0, 10, 20); tile and
# the 8-step distilled files are run with the 2.1 (or lite) config: same keys, other weights.
RELEASED = {
    "1.0": (16, 6, "plain", [0, 5, 10, 15, 20, 25], "z-image-turbo-controlnet"),
    "2.0": (33, 15, "layers", list(range(0, 30, 2)), "z-image-turbo-controlnet-2.0"),
    "2.1": (33, 15, "refiner", list(range(0, 30, 2)), "z-image-turbo-controlnet-2.1"),
    "2.1-8steps": (33, 15, "refiner", list(range(0, 30, 2)), "z-image-turbo-controlnet-2.1"),
    "tile-2.1": (33, 15, "refiner", list(range(0, 30, 2)), "z-image-turbo-controlnet-2.1"),
    # diffusers has no lite entry: its detection (no control_layers.14) falls to the 1.0 type, whose config
    # would not fit the file; our loader reads the sizes from the file instead
    "lite": (33, 3, "refiner", [0, 10, 20], "z-image-turbo-controlnet"),
    "tile-lite": (33, 3, "refiner", [0, 10, 20], "z-image-turbo-controlnet"),
}


@pytest.mark.parametrize("variant", list(RELEASED))
def test_full_size_released_variants_on_the_meta_device(variant):
    """The released files' key sets and shapes (diffusers names, as in the VideoX-Fun files) for a
    3840-wide, 30-layer Z-Image DiT; built on the meta device, read back through the loader's config, and
    compared with what diffusers' own ZImageControlNetModel holds for that config."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from zimage_core.adapters.controlnet import ControlNetConfig, ZImageControlNet, read_config
    from zimage_core.tiny.controlnet import diffusers_config
    from zimage_core.model.transformer import DiTConfig

    in_dim, n, kind, places, detected = RELEASED[variant]
    dit = DiTConfig()
    cfg = ControlNetConfig(dim=3840, n_heads=30, ffn_dim=10240, control_in_dim=in_dim, n_control_layers=n,
                           variant=kind)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageControlNet(cfg).state_dict().items()}
        conf = {k: v for k, v in diffusers_config(cfg, dit.n_layers).items() if not k.startswith("_")}
        ref = diffusers.ZImageControlNetModel(**conf)
    assert cfg.places(dit.n_layers) == places == conf["control_layers_places"]
    # the file's keys: diffusers' parameters of the branch (as VideoX-Fun saves them; 2.0 files also carry an
    # all-zero control_noise_refiner that diffusers drops)
    file_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k.startswith("control_")}
    ours_in_file_names = {}
    for k, v in shapes.items():
        if k.endswith(".attention.qkv.weight"):
            base = k[: -len("qkv.weight")]
            for part in ("to_q", "to_k", "to_v"):
                ours_in_file_names[f"{base}{part}.weight"] = (v[0] // 3, v[1])
            continue
        for a, b in ((".attention.out.", ".attention.to_out.0."), (".attention.q_norm.", ".attention.norm_q."),
                     (".attention.k_norm.", ".attention.norm_k.")):
            k = k.replace(a, b)
        ours_in_file_names[k] = v
    assert ours_in_file_names == file_shapes
    assert shapes["control_all_x_embedder.2-1.weight"] == (3840, 4 * in_dim)
    assert shapes[f"control_layers.{n - 1}.adaLN_modulation.0.weight"] == (4 * 3840, 256)
    assert shapes["control_layers.0.attention.qkv.weight"] == (3 * 3840, 3840)  # to_q/to_k/to_v in the file
    assert shapes["control_layers.0.feed_forward.w1.weight"] == (10240, 3840)
    assert shapes["control_layers.0.before_proj.weight"] == (3840, 3840)
    assert "control_layers.1.before_proj.weight" not in shapes
    assert shapes[f"control_layers.{n - 1}.after_proj.weight"] == (3840, 3840)
    refiner = {k for k in shapes if k.startswith("control_noise_refiner.")}
    if kind == "layers":
        assert not refiner
    else:
        assert "control_noise_refiner.1.adaLN_modulation.0.weight" in shapes
        assert ("control_noise_refiner.0.before_proj.weight" in shapes) == (kind == "refiner")
    assert read_config(shapes, lambda: False, "meta") == cfg
    # diffusers' single-file detection on the same key set (before_proj all-zero in a 2.0 file)
    ckpt = {k: torch.empty(v, device="meta") for k, v in file_shapes.items()}
    if kind == "layers":
        ckpt["control_noise_refiner.0.before_proj.weight"] = torch.zeros(2, 2)
    elif kind == "refiner":
        ckpt["control_noise_refiner.0.before_proj.weight"] = torch.ones(2, 2)
    assert infer_diffusers_model_type(ckpt) == detected
