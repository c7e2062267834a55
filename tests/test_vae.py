"""Flux VAE: parity with diffusers `AutoencoderKL`, tiling, loading from every format, wrong-file errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.errors import CheckpointError, InputError
from zimage_core.tiny.vae import random_vae, write_tiny_vae
from zimage_core.model.vae import VAEConfig, bfl_to_diffusers, load_vae


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return write_tiny_vae(tmp_path_factory.mktemp("tiny_vae"))


@pytest.fixture(scope="session")
def ref(tiny):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny["diffusers"]).eval()


@pytest.fixture(scope="session")
def ours(tiny):
    return load_vae(tiny["bfl"])


@pytest.fixture(scope="session")
def inputs():
    g = torch.Generator().manual_seed(0)
    latent = 2 * torch.randn(2, 16, 6, 10, generator=g)
    image = torch.rand(2, 3, 48, 80, generator=g) * 2 - 1
    return latent, image


@pytest.mark.parametrize("fmt", ["bfl", "diffusers", "model_folder"])
def test_decode_and_encode_match_diffusers_from_every_format(tiny, ref, inputs, fmt):
    path = tiny["diffusers"].parent if fmt == "model_folder" else tiny[fmt]
    vae = load_vae(path)
    latent, image = inputs
    with torch.no_grad():
        want_img = ref.decode(latent).sample
        want_lat = ref.encode(image).latent_dist.mode()
    got_img, got_lat = vae.decode(latent), vae.encode(image)
    assert got_img.shape == (2, 3, 48, 80) and got_lat.shape == (2, 16, 6, 10)
    assert got_img.dtype == got_lat.dtype == torch.float32
    assert want_img.abs().mean() > 0.1 and want_lat.abs().mean() > 0.1  # not a trivially tiny signal
    assert rel(got_img, want_img) <= 1e-5
    assert rel(got_lat, want_lat) <= 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("channels_last", [True, False])
@torch.no_grad()
def test_upsample_equals_conv_of_the_nearest_upsampled_input(dtype, tol, channels_last):
    from zimage_core.model.vae import Upsample

    g = torch.Generator().manual_seed(4)
    up = Upsample(24).to(dtype)
    up.conv.weight.copy_(torch.randn(24, 24, 3, 3, generator=g) / 15)
    up.conv.bias.copy_(torch.randn(24, generator=g))
    x = torch.randn(2, 24, 5, 7, generator=g).to(dtype)  # odd sizes: every border of every phase
    if channels_last:
        up = up.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    want = up.conv(torch.nn.functional.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(dtype))
    got = up(x)
    assert got.shape == want.shape == (2, 24, 10, 14) and got.dtype == dtype
    assert rel(got.float(), want.float()) <= tol


def test_encode_with_generator_draws_the_same_sample_as_diffusers(ours, ref, inputs):
    _, image = inputs
    with torch.no_grad():
        want = ref.encode(image).latent_dist.sample(torch.Generator().manual_seed(42))
        want_list = ref.encode(image).latent_dist.sample(
            [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
        )
    got = ours.encode(image, generator=torch.Generator().manual_seed(42))
    assert rel(got, want) <= 1e-5
    assert (got - ours.encode(image)).abs().mean() > 0.1  # really a sample, not the mean
    got_list = ours.encode(image, generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert rel(got_list, want_list) <= 1e-5


def test_quant_convs_are_used_when_the_weights_have_them(tmp_path, inputs):
    from diffusers import AutoencoderKL

    cfg = VAEConfig(channels=(32, 32, 32, 32), num_res_blocks=1, quant_conv=True, post_quant_conv=True)
    files = write_tiny_vae(tmp_path, seed=3, cfg=cfg)
    ref = AutoencoderKL.from_pretrained(files["diffusers"]).eval()
    vae = load_vae(files["diffusers"])
    assert vae.quant_conv is not None and vae.post_quant_conv is not None
    latent, image = inputs
    with torch.no_grad():
        assert rel(vae.decode(latent), ref.decode(latent).sample) <= 1e-5
        assert rel(vae.encode(image), ref.encode(image).latent_dist.mode()) <= 1e-5


def test_bf16_load_computes_in_bf16_and_returns_float32(tiny, ours, inputs):
    vae = load_vae(tiny["bfl"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in vae.parameters())
    latent, _ = inputs
    out = vae.decode(latent)
    assert out.dtype == torch.float32
    assert rel(out, ours.decode(latent)) < 0.1


def test_prefixed_vae_keys_load_also_inside_a_bigger_checkpoint(tmp_path, ours, inputs):
    sd = {f"vae.{k}": v.contiguous() for k, v in ours.state_dict().items()}  # the model is channels-last
    sd["model.diffusion_model.cap_embedder.1.weight"] = torch.zeros(8, 4)
    sd["model.diffusion_model.t_embedder.mlp.2.weight"] = torch.zeros(256, 256)
    save_file(sd, str(tmp_path / "all_in_one.safetensors"))
    vae = load_vae(tmp_path / "all_in_one.safetensors")
    latent, _ = inputs
    assert torch.equal(vae.decode(latent), ours.decode(latent))


# ---- tiling ----

TILE, OVERLAP = 12, 4  # latent cells; the test latent (24x24) needs 3x3 tiles


@pytest.fixture(scope="session")
def big():
    g = torch.Generator().manual_seed(7)
    return 2 * torch.randn(1, 16, 24, 24, generator=g)


def test_tiled_decode_is_exact_with_one_tile_and_beats_diffusers_tiling_with_several(ours, ref, big):
    full = ours.decode(big)
    assert torch.allclose(ours.decode_tiled(big, tile=24, overlap=4), full, rtol=0, atol=1e-5)

    ours_err = (ours.decode_tiled(big, tile=TILE, overlap=OVERLAP) - full).abs()
    ref.enable_tiling()
    ref.tile_latent_min_size, ref.tile_sample_min_size = TILE, TILE * 8
    try:
        with torch.no_grad():
            ref_err = (ref.decode(big).sample - full).abs()
    finally:
        ref.disable_tiling()
    # Each tile sees only part of the image (GroupNorm statistics, global attention), so no tiling is exact
    # with random weights; ours must stay close and not be worse than diffusers' tiling anywhere on average.
    assert ours_err.mean() < 0.25 * full.abs().mean()
    assert ours_err.mean() <= ref_err.mean()
    assert ours_err.max() <= ref_err.max()


def test_tiled_encode_is_exact_with_one_tile_and_beats_diffusers_tiling_with_several(ours, ref, big):
    image = ours.decode(big).clamp(-1, 1)  # 192x192
    full = ours.encode(image)
    assert torch.allclose(ours.encode_tiled(image, tile=192, overlap=32), full, rtol=0, atol=1e-5)

    ours_err = (ours.encode_tiled(image, tile=TILE * 8, overlap=OVERLAP * 8) - full).abs()
    ref.enable_tiling()
    ref.tile_latent_min_size, ref.tile_sample_min_size = TILE, TILE * 8
    try:
        with torch.no_grad():
            ref_err = (ref.encode(image).latent_dist.mode() - full).abs()
    finally:
        ref.disable_tiling()
    assert ours_err.mean() < 0.25 * full.abs().mean()
    assert ours_err.mean() <= ref_err.mean()
    assert ours_err.max() <= ref_err.max()


def test_tiled_encode_rejects_sizes_off_the_latent_grid(ours):
    with pytest.raises(InputError, match="multiples of 8"):
        ours.encode_tiled(torch.zeros(1, 3, 60, 64), tile=32, overlap=8)


# ---- wrong files ----

def test_zimage_dit_file_is_named_as_such(tmp_path):
    f = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({
        "cap_embedder.1.weight": torch.zeros(32, 16),
        "t_embedder.mlp.2.weight": torch.zeros(256, 256),
        "layers.0.attention.qkv.weight": torch.zeros(96, 32),
    }, str(f))
    with pytest.raises(CheckpointError, match=r"z_image_turbo_bf16\.safetensors.*Flux VAE.*a Z-Image DiT.*ZImageDiTLoader"):
        load_vae(f)


def test_sd_four_channel_vae_is_refused(tmp_path):
    sd = random_vae(VAEConfig(channels=(32, 32), num_res_blocks=1, z_channels=4, quant_conv=True,
                              post_quant_conv=True)).state_dict()
    f = tmp_path / "sd15_vae.safetensors"
    save_file(bfl_to_diffusers(sd, 2), str(f))
    with pytest.raises(CheckpointError, match=r"sd15_vae\.safetensors.*4-channel VAE that is not the Flux VAE"):
        load_vae(f)


def test_lora_file_is_refused(tmp_path):
    f = tmp_path / "style_lora.safetensors"
    save_file({
        "diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 32),
        "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(32, 4),
    }, str(f))
    with pytest.raises(CheckpointError, match=r"style_lora\.safetensors.*a LoRA"):
        load_vae(f)


def test_truncated_file_is_refused_with_its_name(tmp_path, tiny):
    data = tiny["bfl"].read_bytes()
    f = tmp_path / "ae_partial.safetensors"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ae_partial\.safetensors.*truncated"):
        load_vae(f)


def test_missing_and_unexpected_keys_are_listed_with_counts(tmp_path, ours):
    sd = {k: v.contiguous() for k, v in ours.state_dict().items()}  # the model is channels-last
    del sd["decoder.mid.attn_1.q.weight"], sd["decoder.mid.attn_1.k.weight"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    f = tmp_path / "ae_edited.safetensors"
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"ae_edited\.safetensors") as e:
        load_vae(f)
    msg = str(e.value)
    assert "2 missing (decoder.mid.attn_1.q.weight, decoder.mid.attn_1.k.weight)" in msg
    assert "1 unexpected (encoder.extra.weight)" in msg
