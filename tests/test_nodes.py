"""Unit tests of the ComfyUI nodes, called directly on tiny models without ComfyUI (host in standalone mode:
model names are paths, CPU only, progress/interrupt are no-ops)."""
from __future__ import annotations

import importlib
import logging
import shutil

import pytest
import torch

from zimage_core.model.latent import to_model_space
from zimage_core.pipeline import ZImagePipeline
from zimage_core.sampling.schedules import flow_sigmas

NODE_IDS = {
    "ZImageDiTLoader": ("Z-Image/loaders", ("dit_name", "weight_dtype"), ("ZIMAGE_DIT",)),
    "ZImageTextEncoderLoader": ("Z-Image/loaders", ("text_encoder_name", "dtype", "device"), ("ZIMAGE_TEXT_ENCODER",)),
    "ZImageVAELoader": ("Z-Image/loaders", ("vae_name",), ("ZIMAGE_VAE",)),
    "ZImageTextEncode": ("Z-Image/conditioning", ("text_encoder", "text"), ("CONDITIONING",)),
    "ZImageEmptyLatent": ("Z-Image/latent", ("width", "height", "batch_size"), ("LATENT",)),
    "ZImageSampler": ("Z-Image/sampling", ("dit", "positive", "latent", "seed", "steps", "cfg", "shift", "denoise",
                                           "negative", "sigmas", "cfg_truncation", "cfg_normalization"), ("LATENT",)),
    "ZImageVAEDecode": ("Z-Image/vae", ("vae", "latent", "tiled"), ("IMAGE",)),
    "ZImageVAEEncode": ("Z-Image/vae", ("vae", "image", "tiled"), ("LATENT",)),
    "ZImageControlNetLoader": ("Z-Image/controlnet", ("controlnet_name", "weight_dtype"), ("ZIMAGE_CONTROLNET",)),
    "ZImageControlNetApply": ("Z-Image/controlnet", ("dit", "controlnet", "vae", "image", "strength", "start_percent",
                                                     "end_percent", "mask", "inpaint_image", "inpaint_mask"),
                              ("ZIMAGE_DIT",)),
}
PROMPT = "a red fox in the snow"


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def M(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(pack.__name__ + ".zimage_core.errors")


@pytest.fixture(scope="module")
def sampler_mod(pack):
    return importlib.import_module(pack.__name__ + ".nodes.sampler")


@pytest.fixture(scope="module")
def models(M, tiny):
    (dit,) = M["ZImageDiTLoader"]().load(str(tiny["dit"]), "auto")
    (te,) = M["ZImageTextEncoderLoader"]().load(str(tiny["diffusers"]), "auto", "default")
    (vae,) = M["ZImageVAELoader"]().load(str(tiny["vae"]))
    return dit, te, vae


@pytest.fixture(scope="module")
def cond(M, models):
    return M["ZImageTextEncode"]().encode(models[1], PROMPT)[0]


@pytest.fixture(scope="module")
def pipe(tiny):
    return ZImagePipeline.from_files(tiny["dit"], tiny["diffusers"], tiny["vae"])


def empty(M, w=64, h=48, b=1):
    return M["ZImageEmptyLatent"]().generate("custom", w, h, b)[0]


def sample(M, dit, cond, latent, seed=1, steps=3, **kw):
    return M["ZImageSampler"]().sample(dit, cond, latent, seed, steps, **kw)[0]


# ------------------------------------------------------------------------------------------- interface

def test_mappings_and_interface(pack):
    assert set(NODE_IDS) <= set(pack.NODE_CLASS_MAPPINGS)
    assert pack.WEB_DIRECTORY == "./web"
    for node_id, (category, inputs, returns) in NODE_IDS.items():
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == category and cls.RETURN_TYPES == returns
        assert cls.DESCRIPTION.strip() and node_id in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert callable(getattr(cls, cls.FUNCTION))
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(inputs) <= set(declared), node_id
        for name, s in declared.items():
            assert s[1].get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"


def test_help_pages_exist(pack):
    from pathlib import Path

    docs = Path(pack.__file__).parent / "web" / "docs"
    for node_id, (_, inputs, _) in NODE_IDS.items():
        page = (docs / f"{node_id}.md").read_text()
        for name in inputs:
            assert f"`{name}`" in page, f"{node_id}.md does not document {name}"


def test_node_modules_do_not_import_comfyui(pack):
    from pathlib import Path

    for f in (Path(pack.__file__).parent / "nodes").glob("*.py"):
        if f.name in ("host.py", "host_model.py"):  # the host adapter (host_model: imported only by host.py)
            continue
        text = f.read_text()
        for bad in ("import comfy", "import folder_paths", "import latent_preview", "from comfy", "import nodes"):
            assert bad not in text, f"{f.name}: {bad} (only nodes/host.py talks to ComfyUI)"
        assert "host_model" not in text, f"{f.name}: host_model is imported only by nodes/host.py"


# --------------------------------------------------------------------------------------------- loaders

def test_dit_loader_formats(M, tiny, pack):
    patching = importlib.import_module(pack.__name__ + ".zimage_core.adapters.patching")
    (a,) = M["ZImageDiTLoader"]().load(str(tiny["dit"]), "auto")
    (b,) = M["ZImageDiTLoader"]().load(str(tiny["diffusers"]), "fp32")
    assert isinstance(a, patching.PatchedDiT) and a.patches == () and a.host is None
    for k, v in a.dit.state_dict().items():
        torch.testing.assert_close(v.float(), b.dit.state_dict()[k].float())
    (c,) = M["ZImageDiTLoader"]().load(str(tiny["dit"]), "bf16")
    assert c.dit.layers[0].feed_forward.w1.weight.dtype == torch.bfloat16


def test_loaders_refuse_wrong_files(M, tiny, errors):
    with pytest.raises(errors.CheckpointError, match="ae_tiny"):
        M["ZImageDiTLoader"]().load(str(tiny["vae"]), "auto")
    with pytest.raises(errors.CheckpointError, match="z_image_tiny"):
        M["ZImageVAELoader"]().load(str(tiny["dit"]))
    with pytest.raises(errors.CheckpointError, match="ae_tiny"):
        M["ZImageTextEncoderLoader"]().load(str(tiny["vae"]), "auto", "default")
    with pytest.raises(errors.InputError, match="not found"):
        M["ZImageVAELoader"]().load("/nonexistent/ae.safetensors")


def test_text_encoder_tokenizer_beside_file_and_missing(M, tiny, tmp_path, errors):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny["text_encoder"], lone / "qwen.safetensors")
    with pytest.raises(errors.ZImageError, match="tokenizer"):
        M["ZImageTextEncoderLoader"]().load(str(lone / "qwen.safetensors"), "auto", "cpu")
    shutil.copytree(tiny["tokenizer"], lone / "tokenizer")
    (te,) = M["ZImageTextEncoderLoader"]().load(str(lone / "qwen.safetensors"), "fp32", "cpu")
    assert te.encoder.encode(["hi"])[0].ndim == 2


# ----------------------------------------------------------------------------------------- conditioning

def test_text_encode_layout_matches_native(cond, models):
    assert isinstance(cond, list) and len(cond) == 1
    t, d = cond[0]
    assert t.dtype == torch.float32 and t.ndim == 3 and t.shape[0] == 1
    assert t.shape[2] == models[1].encoder.hidden_size
    assert d["pooled_output"] is None
    assert d["attention_mask"].dtype == torch.long and d["attention_mask"].shape == (1, t.shape[1])
    assert bool((d["attention_mask"] == 1).all())
    torch.testing.assert_close(t[0], models[1].encoder.encode([PROMPT])[0])


# ---------------------------------------------------------------------------------------------- latent

def test_empty_latent_presets_and_custom(M, errors):
    node = M["ZImageEmptyLatent"]()
    assert node.generate("1216x832 (3:2)", 64, 64, 2)[0]["samples"].shape == (2, 16, 104, 152)
    assert node.generate("custom", 96, 64, 1)[0]["samples"].shape == (1, 16, 8, 12)
    presets = node.INPUT_TYPES()["required"]["resolution"][0]
    for size in ("1024x1024", "1152x896", "896x1152", "1216x832", "832x1216", "1344x768", "768x1344", "1536x640",
                 "640x1536", "1280x720", "720x1280", "2048x2048"):
        assert any(p.startswith(size + " ") for p in presets), size
    with pytest.raises(errors.InputError, match="multiples of 16"):
        node.generate("custom", 100, 64, 1)


# --------------------------------------------------------------------------------------------- sampler

def test_sampler_matches_core_pipeline(M, models, cond, pipe):
    dit, _, vae = models
    lat = sample(M, dit, cond, empty(M), seed=42, steps=4)
    assert lat["samples"].shape == (1, 16, 6, 8) and lat["samples"].device.type == "cpu"
    img = M["ZImageVAEDecode"]().decode(vae, lat)[0]
    ref = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42)
    assert img.shape == (1, 48, 64, 3) and img.dtype == torch.float32
    assert (img * 255).round().sub((ref * 255).round()).abs().max() <= 1


def test_sampler_name_and_scheduler_run_the_core_sampler_standalone(M, models, cond, pipe):
    dit, _, vae = models
    lat = sample(M, dit, cond, empty(M), seed=42, steps=4, sampler_name="dpmpp_2m_sde", scheduler="karras")
    img = M["ZImageVAEDecode"]().decode(vae, lat)[0]
    ref = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42, sampler="dpmpp_2m_sde", scheduler="karras")
    assert (img * 255).round().sub((ref * 255).round()).abs().max() <= 1


def test_unknown_sampler_or_scheduler_names_the_value_and_the_choices(M, models, cond, errors):
    with pytest.raises(errors.InputError, match="'bogus'.*res_multistep"):
        sample(M, models[0], cond, empty(M), seed=1, steps=2, sampler_name="bogus")
    with pytest.raises(errors.InputError, match="'nope'.*karras"):
        sample(M, models[0], cond, empty(M), seed=1, steps=2, scheduler="nope")


def test_comfy_denoise_sigmas(sampler_mod, errors):
    f = sampler_mod.comfy_denoise_sigmas
    torch.testing.assert_close(f(8, 3.0, 1.0), flow_sigmas(8, 3.0))
    s = f(4, 3.0, 0.5)  # KSampler: int(4 / 0.5) = 8 steps, the last 4 of them
    assert len(s) == 5
    torch.testing.assert_close(s, flow_sigmas(8, 3.0)[-5:])
    with pytest.raises(errors.InputError):
        f(4, 3.0, 0.0)


def test_denoise_and_sigmas_override(M, models, cond, sampler_mod, pack):
    dit = models[0]
    base = {"samples": torch.randn(1, 16, 6, 8), "extra_key": "kept"}
    calls = []
    mod = importlib.import_module(pack.__name__ + ".nodes.sampler")
    real = mod.sample_euler

    def spy(model, noise, context, sigmas, *a, **kw):
        calls.append(sigmas.clone())
        return real(model, noise, context, sigmas, *a, **kw)

    mod.sample_euler = spy
    try:
        out = sample(M, dit, cond, base, steps=4, denoise=0.5)
        sample(M, dit, cond, base, steps=4, denoise=0.5, sigmas=torch.tensor([0.8, 0.4, 0.0]))
    finally:
        mod.sample_euler = real
    torch.testing.assert_close(calls[0], sampler_mod.comfy_denoise_sigmas(4, 3.0, 0.5))
    torch.testing.assert_close(calls[1], torch.tensor([0.8, 0.4, 0.0]))
    assert out["extra_key"] == "kept" and out["samples"].shape == base["samples"].shape


def test_batch_index_noise_like_comfyui(sampler_mod):
    full = sampler_mod.prepare_noise((4, 16, 2, 2), 7)
    torch.testing.assert_close(sampler_mod.prepare_noise((4, 16, 2, 2), 7), full)
    picked = sampler_mod.prepare_noise((2, 16, 2, 2), 7, batch_index=[3, 1])
    torch.testing.assert_close(picked, full[[3, 1]])
    g = torch.manual_seed(7)  # ComfyUI's prepare_noise uses the global generator seeded like this
    torch.testing.assert_close(full, torch.randn((4, 16, 2, 2), generator=g))


def test_batch_index_sampling(M, models, cond):
    dit = models[0]
    full = sample(M, dit, cond, empty(M, b=3), seed=5)["samples"]
    lat = empty(M, b=1)
    lat["batch_index"] = [2]
    one = sample(M, dit, cond, lat, seed=5)
    torch.testing.assert_close(one["samples"], full[2:3], atol=1e-4, rtol=1e-4)
    assert one["batch_index"] == [2]


def test_cfg_needs_negative_and_zero_out_works(M, models, cond, errors):
    dit = models[0]
    with pytest.raises(errors.InputError, match="negative"):
        sample(M, dit, cond, empty(M), cfg=2.0)
    zero = [[torch.zeros_like(cond[0][0]), dict(cond[0][1])]]  # what ConditioningZeroOut returns
    a = sample(M, dit, cond, empty(M), cfg=2.0, negative=zero)["samples"]
    b = sample(M, dit, cond, empty(M), cfg=1.0, negative=zero)["samples"]  # cfg 1: negative unused
    c = sample(M, dit, cond, empty(M))["samples"]
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    torch.testing.assert_close(b, c)
    d = sample(M, dit, cond, empty(M), cfg=2.0, negative=zero, cfg_truncation=0.0)["samples"]  # CFG on step 0 only
    assert not torch.allclose(d, a) and not torch.allclose(d, c)


def test_native_padded_conditioning_and_multiple_entries(M, models, cond, caplog):
    dit = models[0]
    t, d = cond[0]
    L = t.shape[1]
    padded = torch.cat([t, torch.randn(1, 5, t.shape[2])], dim=1)
    mask = torch.cat([torch.ones(1, L, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], dim=1)
    native = [[padded, {"pooled_output": None, "attention_mask": mask}]]
    ref = sample(M, dit, cond, empty(M))["samples"]
    torch.testing.assert_close(sample(M, dit, native, empty(M))["samples"], ref)
    other = [[torch.randn_like(t), dict(d)]]
    with caplog.at_level(logging.WARNING, logger="zimage_nodes"):
        two = sample(M, dit, cond + other, empty(M))["samples"]
    torch.testing.assert_close(two, ref)
    assert "only the first" in caplog.text


def test_sampler_refuses_bad_latents(M, models, cond, errors):
    dit = models[0]
    with pytest.raises(errors.InputError, match="4 channels.*ZImageEmptyLatent"):
        sample(M, dit, cond, {"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(errors.InputError, match="multiples of 16"):
        sample(M, dit, cond, {"samples": torch.zeros(1, 16, 7, 8)})


def test_noise_mask_keeps_unmasked_area(M, models, cond):
    dit = models[0]
    image = torch.randn(1, 16, 6, 8)
    mask = torch.zeros(1, 48, 64)  # pixel resolution, [B, H, W]
    mask[:, :, :32] = 1.0  # regenerate the left half
    out = sample(M, dit, cond, {"samples": image, "noise_mask": mask}, steps=3)
    assert "noise_mask" in out
    right = out["samples"][..., 5:]  # latent columns fully outside the (bilinear-resized) mask
    torch.testing.assert_close(right, image[..., 5:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out["samples"][..., :3], image[..., :3], atol=1e-2)


def test_empty_latent_warns_when_a_preset_overrides_width_and_height(M, caplog):
    node = M["ZImageEmptyLatent"]()
    with caplog.at_level(logging.WARNING, logger="zimage_nodes"):
        (lat,) = node.generate("1216x832 (3:2)", 1216, 832)
        assert caplog.text == ""  # in sync, as the editor keeps them
        (lat,) = node.generate("1216x832 (3:2)", 512, 512)
    assert lat["samples"].shape[-2:] == (104, 152)
    assert "width 512 / height 512 are ignored" in caplog.text and "'custom'" in caplog.text


def test_an_empty_noise_mask_warns_that_nothing_is_repainted(M, models, cond, caplog):
    image = torch.randn(1, 16, 6, 8)
    with caplog.at_level(logging.WARNING, logger="zimage_nodes"):
        out = sample(M, models[0], cond, {"samples": image, "noise_mask": torch.zeros(1, 48, 64)}, steps=2)
    assert "noise_mask is empty" in caplog.text and "alpha channel" in caplog.text
    torch.testing.assert_close(out["samples"], image, atol=1e-5, rtol=1e-5)


def test_interrupt_cleans_up_patches(M, models, cond, pack, monkeypatch):
    host = importlib.import_module(pack.__name__ + ".nodes.host")
    dit = models[0]

    class Recorder:
        def __init__(self):
            self.installed = 0

        def install(self, d):
            self.installed += 1

        def uninstall(self, d):
            self.installed -= 1

    rec = Recorder()
    patched = dit.with_patch(rec)

    class Interrupted(Exception):
        pass

    class Boom(host.Progress):
        def update(self, step, x0=None):
            assert rec.installed == 1
            if step == 2:
                raise Interrupted()

    monkeypatch.setattr(host, "progress", lambda total, device=None: Boom(total))
    with pytest.raises(Interrupted):
        sample(M, patched, cond, empty(M), steps=4)
    assert rec.installed == 0
    monkeypatch.undo()
    assert torch.isfinite(sample(M, dit, cond, empty(M))["samples"]).all()  # still usable


def test_progress_reports_every_step(M, models, cond, pack, monkeypatch):
    host = importlib.import_module(pack.__name__ + ".nodes.host")
    seen = []

    class Spy(host.Progress):
        def update(self, step, x0=None):
            seen.append((step, self.total, tuple(x0.shape)))

    monkeypatch.setattr(host, "progress", lambda total, device=None: Spy(total))
    sample(M, models[0], cond, empty(M), steps=3)
    assert seen == [(1, 3, (1, 16, 6, 8)), (2, 3, (1, 16, 6, 8)), (3, 3, (1, 16, 6, 8))]


# ------------------------------------------------------------------------------------------------- vae

def test_vae_encode_decode(M, models, caplog):
    vae = models[2]
    image = torch.rand(2, 50, 70, 3)
    with caplog.at_level(logging.WARNING, logger="zimage_nodes"):
        (lat,) = M["ZImageVAEEncode"]().encode(vae, image)
    assert "centre-cropped" in caplog.text
    assert lat["samples"].shape == (2, 16, 6, 8) and lat["samples"].dtype == torch.float32
    cropped = image[:, 1:49, 3:67]
    ref = vae.vae.encode(cropped.permute(0, 3, 1, 2) * 2 - 1)  # the mean (no generator)
    torch.testing.assert_close(lat["samples"], ref)
    (tiled,) = M["ZImageVAEEncode"]().encode(vae, image, tiled=True)
    assert tiled["samples"].shape == lat["samples"].shape
    (img,) = M["ZImageVAEDecode"]().decode(vae, lat)
    assert img.shape == (2, 48, 64, 3) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert 0 <= img.min() and img.max() <= 1
    (img_t,) = M["ZImageVAEDecode"]().decode(vae, lat, tiled=True)
    assert img_t.shape == img.shape


def test_vae_decode_refuses_sd15_latent(M, models, errors):
    with pytest.raises(errors.InputError, match="4 channels"):
        M["ZImageVAEDecode"]().decode(models[2], {"samples": torch.zeros(1, 4, 8, 8)})


def test_img2img_roundtrip_runs(M, models, cond):
    dit, _, vae = models
    (lat,) = M["ZImageVAEEncode"]().encode(vae, torch.rand(1, 48, 64, 3))
    out = sample(M, dit, cond, lat, steps=4, denoise=0.5)
    assert out["samples"].shape == lat["samples"].shape
    assert torch.isfinite(to_model_space(out["samples"])).all()


# ------------------------------------------------------------------------------------------- ControlNet

def _control_image(seed=0, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)


def test_controlnet_nodes_give_the_pipeline_image_and_stack(M, models, cond, pipe, tiny):
    from zimage_core.adapters.controlnet import ControlImage, load_controlnet

    dit, _, vae = models
    files = tiny["controlnets"]
    (cn21,) = M["ZImageControlNetLoader"]().load(str(files / "controlnet_tiny_2.1.safetensors"))
    (cn10,) = M["ZImageControlNetLoader"]().load(str(files / "controlnet_tiny_1.0"), "auto")  # a diffusers folder
    a, b = _control_image(1), _control_image(2, 96, 128)  # b is resized to the generated size
    (d1,) = M["ZImageControlNetApply"]().apply(dit, cn21, vae, a, 0.8, 0.0, 1.0)
    assert d1 is not dit and dit.patches == ()
    img = M["ZImageVAEDecode"]().decode(vae, sample(M, d1, cond, empty(M), seed=42, steps=4))[0]
    ref = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42, controls=[
        ControlImage(load_controlnet(files / "controlnet_tiny_2.1.safetensors"), a, 0.8)])
    assert (img * 255).round().sub((ref * 255).round()).abs().max() <= 1
    (d2,) = M["ZImageControlNetApply"]().apply(d1, cn10, vae, b, 0.5, 0.0, 0.4)
    img2 = M["ZImageVAEDecode"]().decode(vae, sample(M, d2, cond, empty(M), seed=42, steps=4))[0]
    ref2 = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42, controls=[
        ControlImage(load_controlnet(files / "controlnet_tiny_2.1.safetensors"), a, 0.8),
        ControlImage(load_controlnet(files / "controlnet_tiny_1.0"), b, 0.5, 0.0, 0.4)])
    assert (img2 * 255).round().sub((ref2 * 255).round()).abs().max() <= 1
    assert (img2 - img).abs().max() > 0.02


def test_controlnet_apply_with_image_tokens_gives_the_pipeline_image_of_that_injection(M, models, cond, pipe, tiny):
    """tokens='image' (ComfyUI ZImageFunControlnet's injection; its equality with that node is tested in
    test_controlnet_comfy.py) reaches the core from the node, and differs from the reference's injection."""
    from zimage_core.adapters.controlnet import ControlImage, load_controlnet

    dit, _, vae = models
    f = tiny["controlnets"] / "controlnet_tiny_2.1.safetensors"
    (cn,) = M["ZImageControlNetLoader"]().load(str(f))
    a = _control_image(3)
    imgs = {}
    for tokens in ("unified", "image"):
        (d,) = M["ZImageControlNetApply"]().apply(dit, cn, vae, a, 0.8, 0.0, 1.0, tokens=tokens)
        imgs[tokens] = M["ZImageVAEDecode"]().decode(vae, sample(M, d, cond, empty(M), seed=42, steps=4))[0]
    ref = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42, controls=[
        ControlImage(load_controlnet(f), a, 0.8, tokens="image")])
    assert (imgs["image"] * 255).round().sub((ref * 255).round()).abs().max() <= 1
    assert (imgs["image"] - imgs["unified"]).abs().max() > 0.02


def test_controlnet_nodes_refuse_bad_inputs(M, models, tiny, errors):
    dit, _, vae = models
    files = tiny["controlnets"]
    with pytest.raises(errors.CheckpointError, match="expected a Z-Image ControlNet"):
        M["ZImageControlNetLoader"]().load(str(tiny["vae"]))
    (cn10,) = M["ZImageControlNetLoader"]().load(str(files / "controlnet_tiny_1.0.safetensors"))
    with pytest.raises(errors.InputError, match="start_percent 0.9 is after end_percent 0.1"):
        M["ZImageControlNetApply"]().apply(dit, cn10, vae, _control_image(), 1.0, 0.9, 0.1)
    with pytest.raises(errors.InputError, match="no inpaint input"):
        M["ZImageControlNetApply"]().apply(dit, cn10, vae, _control_image(), 1.0, 0.0, 1.0,
                                           inpaint_image=_control_image(), inpaint_mask=torch.ones(1, 48, 64))
    with pytest.raises(errors.InputError, match="tokens 'both'; expected one of unified, image"):
        M["ZImageControlNetApply"]().apply(dit, cn10, vae, _control_image(), 1.0, 0.0, 1.0, tokens="both")
