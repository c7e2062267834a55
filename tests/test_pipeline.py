"""Prompt to image: our pipeline against diffusers' Z-Image pipelines on the same tiny weights and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from zimage_core.errors import InputError
from zimage_core.pipeline import ZImagePipeline, check_size
from zimage_core.sampling.schedules import denoise_sigmas, flow_sigmas, parse_sigmas
from zimage_core.tiny import make_tiny

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red fox sitting in the snow at sunrise"
W, H = 192, 256  # not square, so a transposed layout would show


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def ours(tiny):
    return ZImagePipeline.from_files(tiny["dit"], tiny["text_encoder"], tiny["vae"], tiny["tokenizer"], "fp32")


def pixels(images) -> np.ndarray:
    """0..1 float images -> 8-bit values as diffusers' postprocess rounds them."""
    a = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return (a * 255).round().astype(np.int32)


def assert_same_picture(ours_img, ref_img):
    a, b = pixels(ours_img), pixels(ref_img)
    assert a.shape == b.shape
    assert b.std() > 20  # a real picture, not a flat field
    assert np.abs(a - b).max() <= 1


def test_turbo_text_to_image_matches_diffusers_pixel_for_pixel(tiny, ours):
    ref = diffusers.ZImagePipeline.from_pretrained(str(tiny["diffusers"]))
    expected = ref(PROMPT, height=H, width=W, num_inference_steps=8, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
    assert_same_picture(ours.generate(PROMPT, width=W, height=H, steps=8, seed=42), expected)


def test_cfg_with_negative_prompt_matches_diffusers(tiny, ours):
    ref = diffusers.ZImagePipeline.from_pretrained(str(tiny["diffusers"]))
    # diffusers' guidance_scale s is the extra weight: pred = pos + s (pos - neg), i.e. our cfg = 1 + s
    expected = ref(PROMPT, negative_prompt="blurry, low quality", height=H, width=W, num_inference_steps=12,
                   guidance_scale=3.0, cfg_normalization=1.2, cfg_truncation=0.8,
                   generator=torch.Generator("cpu").manual_seed(7), output_type="np").images
    got = ours.generate(PROMPT, "blurry, low quality", width=W, height=H, steps=12, cfg=4.0, seed=7,
                        cfg_normalization=1.2, cfg_truncation=0.8)
    assert_same_picture(got, expected)
    assert np.abs(pixels(got) - pixels(ours.generate(PROMPT, width=W, height=H, steps=12, seed=7))).max() > 10


def test_batch_of_images_matches_diffusers_num_images_per_prompt(tiny, ours):
    ref = diffusers.ZImagePipeline.from_pretrained(str(tiny["diffusers"]))
    expected = ref(PROMPT, height=128, width=128, num_inference_steps=4, guidance_scale=0.0, num_images_per_prompt=2,
                   generator=torch.Generator("cpu").manual_seed(3), output_type="np").images
    got = ours.generate(PROMPT, width=128, height=128, steps=4, seed=3, batch=2)
    assert got.shape == (2, 128, 128, 3)
    assert_same_picture(got, expected)


def _test_image(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, H // 32, W // 32, generator=g)
    return torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear").permute(0, 2, 3, 1)


def test_image_to_image_at_denoise_0_6_matches_diffusers_strength_0_6(tiny, ours):
    ref = diffusers.ZImageImg2ImgPipeline.from_pretrained(str(tiny["diffusers"]))
    image = _test_image()
    expected = ref(PROMPT, image=image.permute(0, 3, 1, 2), strength=0.6, height=H, width=W, num_inference_steps=8,
                   guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(11), output_type="np").images
    got = ours.generate(PROMPT, width=W, height=H, steps=8, seed=11, image=image, denoise=0.6)
    assert_same_picture(got, expected)


def test_inpainting_keeps_the_unmasked_area_and_matches_diffusers(tiny, ours):
    """Intended difference: none for binary masks. diffusers binarises the mask at 0.5 and resizes it to
    the latent with 'nearest'; we use the same resize but keep soft mask values (a 0.5 mask blends)."""
    image = _test_image(1)
    mask = torch.zeros(1, H, W)
    mask[:, 64:192, 48:144] = 1.0
    ref = diffusers.ZImageInpaintPipeline.from_pretrained(str(tiny["diffusers"]))
    expected = ref(PROMPT, image=image.permute(0, 3, 1, 2), mask_image=mask[:, None], strength=1.0, height=H, width=W,
                   num_inference_steps=8, guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(5),
                   output_type="np").images
    got = ours.generate(PROMPT, width=W, height=H, steps=8, seed=5, image=image, mask=mask)
    assert_same_picture(got, expected)
    # the latent outside the mask is exactly the input image's latent at the end of sampling ...
    from zimage_core.model.latent import to_model_space
    from zimage_core.sampling.loop import sample_euler

    latent = to_model_space(ours.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1))
    lmask = torch.zeros(1, 1, H // 8, W // 8)
    lmask[..., 8:24, 6:18] = 1.0
    ctx = ours.dit.encode_context(ours.text_encoder.encode([PROMPT]))
    x = sample_euler(ours.dit, torch.randn(latent.shape, generator=torch.Generator().manual_seed(5)), ctx,
                     flow_sigmas(8), latent_image=latent, noise_mask=lmask)
    assert torch.equal(x[lmask.expand_as(x) == 0], latent[lmask.expand_as(x) == 0])
    assert (x - latent)[lmask.expand_as(x) == 1].abs().mean() > 0.1
    # In pixels the unmasked area is the VAE's reproduction of that latent; it is not compared pixel by
    # pixel because the VAE mid-block attention is global (random tiny weights make that effect large).


def test_same_seed_same_picture_and_other_seed_another(ours):
    a = ours.generate(PROMPT, width=128, height=128, steps=4, seed=1)
    b = ours.generate(PROMPT, width=128, height=128, steps=4, seed=1)
    c = ours.generate(PROMPT, width=128, height=128, steps=4, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_custom_sigmas_override_steps_and_shift(ours):
    a = ours.generate(PROMPT, width=128, height=128, steps=8, shift=3.0, seed=1)
    b = ours.generate(PROMPT, width=128, height=128, seed=1, sigmas=flow_sigmas(8, 3.0))
    c = ours.generate(PROMPT, width=128, height=128, seed=1, sigmas=parse_sigmas("1, 0.75, 0.5, 0.25"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_turbo_schedule_is_the_reference_one():
    expected = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
    assert flow_sigmas(8, 3.0).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 9, 20, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
def test_sigma_schedules_match_the_reference_formula_and_scheduler(steps, shift):
    s = np.linspace(1.0, 1.0 / steps, steps)
    formula = np.append(shift * s / (1 + (shift - 1) * s), 0.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist())
    ours = flow_sigmas(steps, shift).numpy()
    assert ours == pytest.approx(formula, abs=1e-6)
    assert ours == pytest.approx(sched.sigmas.numpy(), abs=1e-7)


def test_denoise_runs_the_tail_of_the_schedule_like_diffusers_strength():
    sig = flow_sigmas(8, 3.0)
    assert denoise_sigmas(sig, 1.0).tolist() == sig.tolist()
    assert denoise_sigmas(sig, 0.6).tolist() == sig[3:].tolist()  # 5 steps from 0.8333
    assert denoise_sigmas(sig, 0.01).tolist() == sig[7:].tolist()  # always at least one step
    with pytest.raises(InputError, match="denoise must be in"):
        denoise_sigmas(sig, 0.0)


def test_sizes_not_multiple_of_16_are_refused_with_the_nearest_valid_sizes(ours):
    with pytest.raises(InputError, match=r"width 1000: use 992 or 1008"):
        check_size(1000, 1024)
    with pytest.raises(InputError, match="height 520"):
        ours.generate(PROMPT, width=512, height=520)


def test_mask_without_image_and_denoise_without_image_are_refused(ours):
    with pytest.raises(InputError, match="mask needs an input image"):
        ours.generate(PROMPT, width=128, height=128, mask=torch.ones(1, 128, 128))
    with pytest.raises(InputError, match="needs an input image"):
        ours.generate(PROMPT, width=128, height=128, denoise=0.5)


def test_cli_generate_tiny_writes_a_png_with_parameters(tmp_path, tiny):
    from PIL import Image

    tiny_root = tiny["dit"].parent.parent
    out = tmp_path / "fox.png"
    r = subprocess.run([sys.executable, "-m", "zimage_core", "generate", "--tiny", "--tiny-dir", str(tiny_root),
                        "--prompt", PROMPT, "--width", "128", "--height", "96", "--steps", "4", "--seed", "9",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    assert img.size == (128, 96)
    params = json.loads(img.text["parameters"])
    assert params["seed"] == 9 and params["prompt"] == PROMPT and params["steps"] == 4


def test_cli_reports_bad_size_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zimage_core", "generate", "--tiny", "--prompt", "x", "--width", "100",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "width 100: use 96 or 112" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning applies on Linux only")
def test_cli_keeps_freed_memory_on_glibc_unless_turned_off():
    import platform

    code = "from zimage_core.tools.cli import keep_freed_memory; print(keep_freed_memory())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert on == str(platform.libc_ver()[0] == "glibc")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ZIMAGE_KEEP_FREED_MEMORY": "0"}).stdout.strip()
    assert off == "False"


def test_cli_applies_two_loras_with_strengths_like_the_patched_pipeline(tmp_path, tiny, ours):
    from PIL import Image
    from safetensors.torch import save_file

    from zimage_core.tools.cli import parse_lora_arg
    from zimage_core.adapters.lora import load_lora
    from zimage_core.weights.ops import Linear
    from zimage_core.adapters.patching import PatchedDiT

    assert parse_lora_arg("C:\\loras\\a.safetensors:0.5") == ("C:\\loras\\a.safetensors", 0.5)
    assert parse_lora_arg("C:\\loras\\a.safetensors") == ("C:\\loras\\a.safetensors", 1.0)
    g = torch.Generator().manual_seed(3)
    lora, loha = {}, {}
    for name, m in ours.dit.named_modules():
        if name.startswith("layers.") and isinstance(m, Linear):  # (RMSNorms carry patches too)
            o, i = m.out_features, m.in_features
            if "attention" in name:
                lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, i, generator=g) / i ** 0.5
                lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(o, 4, generator=g) * 0.3
            else:
                for j in (1, 2):
                    loha[f"lycoris_{name.replace('.', '_')}.hada_w{j}_a"] = torch.randn(o, 2, generator=g) * 0.4
                    loha[f"lycoris_{name.replace('.', '_')}.hada_w{j}_b"] = torch.randn(2, i, generator=g) / i ** 0.5
    save_file(lora, str(tmp_path / "a.safetensors"))
    save_file(loha, str(tmp_path / "b.safetensors"))
    tiny_root = tiny["dit"].parent.parent
    out = tmp_path / "lora.png"
    r = subprocess.run([sys.executable, "-m", "zimage_core", "generate", "--tiny", "--tiny-dir", str(tiny_root),
                        "--prompt", PROMPT, "--width", "128", "--height", "96", "--steps", "4", "--seed", "9",
                        "--weight-dtype", "fp32", "--lora", f"{tmp_path / 'a.safetensors'}:0.8",
                        "--lora", f"{tmp_path / 'b.safetensors'}:1.5", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "a.safetensors:" in r.stderr and "modules patched" in r.stderr and "LoHa" in r.stderr
    patches = (load_lora(tmp_path / "a.safetensors", ours.dit, 0.8), load_lora(tmp_path / "b.safetensors", ours.dit, 1.5))
    with PatchedDiT(ours.dit, patches).applied():
        ref = ours.generate(PROMPT, None, 128, 96, 4, 1.0, 3.0, 9)
    plain = ours.generate(PROMPT, None, 128, 96, 4, 1.0, 3.0, 9)
    got = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)
    assert np.abs(got - pixels(ref)[0]).max() <= 1
    assert np.abs(got - pixels(plain)[0]).max() > 10  # the LoRAs change the picture
