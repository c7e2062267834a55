"""Qwen3 text encoder: parity with diffusers' ZImagePipeline.encode_prompt, loading formats, tokenizer lookup,
wrong-file errors. Everything runs on a tiny random Qwen3 + tiny BPE tokenizer written once per session."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zimage_core.errors import CheckpointError, ZImageError
from zimage_core.model.text_encoder import TextEncoder, load_text_encoder, resolve_tokenizer_dir
from zimage_core.tiny.text_encoder import write_tiny_text_encoder

SHORT = "A photograph of a small red fox sitting in the snow at sunrise, soft golden light."
LONG = " ".join(["The old lighthouse stands on a rocky cliff above the stormy sea, waves crash below."] * 40)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_text_encoder(tmp_path_factory.mktemp("tiny_te"))


@pytest.fixture(scope="session")
def te(tiny) -> TextEncoder:
    return load_text_encoder(tiny["single_file"], tokenizer_path=tiny["tokenizer"])


@pytest.fixture(scope="session")
def pipe(tiny):
    """A real diffusers ZImagePipeline around the tiny Qwen3 (loaded by transformers as Qwen3Model)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3Model

    text_encoder = Qwen3Model.from_pretrained(str(tiny["text_encoder"]), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny["tokenizer"]), local_files_only=True)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=1, n_refiner_layers=1,
        n_heads=4, n_kv_heads=4, cap_feat_dim=text_encoder.config.hidden_size, axes_dims=[4, 6, 6],
        axes_lens=[1536, 512, 512])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,), layers_per_block=1,
                        latent_channels=16, norm_num_groups=32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


def reference(pipe, prompts: list[str]) -> list[torch.Tensor]:
    with torch.no_grad():
        embeds, neg = pipe.encode_prompt(list(prompts), device=torch.device("cpu"), do_classifier_free_guidance=False)
    assert neg == []
    return embeds


# ------------------------------------------------------------------------------------------------ template

def test_format_prompt_is_the_qwen3_chat_template(te, pipe):
    for prompt in (SHORT, "", "line one\nline two"):
        msgs = [{"role": "user", "content": prompt}]
        ref = pipe.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
        assert te.format_prompt(prompt) == ref == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    no_think = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)
    assert no_think == te.format_prompt("x") + "<think>\n\n</think>\n\n"
    assert te.tokenizer.pad_token_id == te.tokenizer.token_to_id("<|endoftext|>") is not None


# -------------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("prompt", [SHORT, ""], ids=["short", "empty"])
def test_features_match_diffusers(te, pipe, prompt):
    (ref,) = reference(pipe, [prompt])
    (out,) = te.encode(prompt)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ref.shape[0] == len(te.tokenizer.encode(te.format_prompt(prompt)))
    assert ref.std() > 0.1  # features are not degenerate
    err = rel_err(out, ref)
    print(f"max rel err ({prompt[:10]!r}): {err:.2e}")
    assert err <= 1e-5


def test_long_prompt_is_truncated_like_diffusers_and_warns(te, pipe):
    n_tokens = len(te.tokenizer.encode(te.format_prompt(LONG)))
    assert n_tokens > 512
    (ref,) = reference(pipe, [LONG])
    with pytest.warns(UserWarning, match=rf"last {n_tokens - 512} tokens were dropped"):
        (out,) = te.encode([LONG])
    assert out.shape == ref.shape == (512, te.hidden_size)
    err = rel_err(out, ref)
    print(f"max rel err (long): {err:.2e}")
    assert err <= 1e-5
    # Shorter max_length, same rule.
    with pytest.warns(UserWarning, match=rf"last {n_tokens - 40} tokens"):
        (short,) = te.encode(LONG, max_length=40)
    assert torch.allclose(short, out[:40], rtol=0, atol=1e-5 * out.abs().max().item())


def test_batch_matches_diffusers_batch(te, pipe):
    prompts = [SHORT, "", "a cat on books", LONG]
    refs = reference(pipe, prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = te.encode(prompts)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        print(f"max rel err (batch, L={r.shape[0]}): {rel_err(o, r):.2e}")
        assert rel_err(o, r) <= 1e-5


# ------------------------------------------------------------------------------------------------- loading

def test_single_file_and_sharded_folder_give_identical_features(tiny, te):
    from_folder = load_text_encoder(tiny["text_encoder"])  # tokenizer found in ../tokenizer
    from_root = load_text_encoder(tiny["root"])  # whole diffusers folder: text_encoder/ + tokenizer/
    a, b, c = (m.encode([SHORT, ""]) for m in (te, from_folder, from_root))
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    cfg = from_folder.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size) == (64, 3, 4, 2, 16, 128)
    assert cfg.rms_norm_eps == 1e-6 and cfg.rope_theta == 1e6
    assert cfg.tie_word_embeddings


def test_lm_head_shares_the_embedding(te):
    emb = te.model.model.embed_tokens.weight
    assert te.model.lm_head.weight is emb
    assert te.model.lm_head.weight.data_ptr() == emb.data_ptr()
    assert not any(p.is_meta for p in te.model.parameters())
    assert not any(b.is_meta for b in te.model.buffers())


def test_loading_encoding_and_enhancing_do_not_import_transformers(tiny):
    code = ("import sys; from zimage_core.model.text_encoder import load_text_encoder; "
            "from zimage_core.prompt_enhancer import enhance; "
            f"te = load_text_encoder({str(tiny['single_file'])!r}, tokenizer_path={str(tiny['tokenizer'])!r}); "
            "te.encode(['a fox']); enhance(te, 'a fox', max_new_tokens=3); "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_encoding_never_runs_the_last_layer_nor_the_norm(te):
    calls = []
    hooks = [te.model.model.layers[-1].register_forward_hook(lambda *a: calls.append("last")),
             te.model.model.norm.register_forward_hook(lambda *a: calls.append("norm")),
             te.model.model.layers[-2].register_forward_hook(lambda *a: calls.append("penultimate"))]
    try:
        te.encode([SHORT, "x"])
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["penultimate"]


def test_bf16_load_is_close(tiny, te):
    te16 = load_text_encoder(tiny["single_file"], dtype=torch.bfloat16, tokenizer_path=tiny["tokenizer"])
    assert te16.model.model.embed_tokens.weight.dtype == torch.bfloat16
    (a,), (b,) = te.encode(SHORT), te16.encode(SHORT)
    assert b.dtype == torch.float32 and rel_err(b, a) < 0.1


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of `path` (/proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and Path(parts[5]) == path.resolve():
            a, b = parts[0].split("-")
            out.append((int(a, 16), int(b, 16)))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_bf16_weights_stay_bf16_in_the_memory_mapped_file_and_encode_like_the_fp32_file(tiny, te, tmp_path):
    sd = load_file(str(tiny["single_file"]))
    f = tmp_path / "qwen_3_4b_bf16.safetensors"
    save_file({k: v.bfloat16() for k, v in sd.items()}, str(f))
    f32 = tmp_path / "qwen_3_4b_bf16_as_fp32.safetensors"  # the same values, stored as fp32
    save_file({k: v.bfloat16().float() for k, v in sd.items()}, str(f32))
    m = load_text_encoder(f, tokenizer_path=tiny["tokenizer"])  # compute dtype fp32 (the CPU's)
    ranges = _mapped_ranges(f)
    assert ranges
    for name, p in m.model.named_parameters():
        assert p.dtype == torch.bfloat16, name
        assert any(a <= p.data_ptr() < b for a, b in ranges), f"{name} was copied out of the file"
    reference = load_text_encoder(f32, tokenizer_path=tiny["tokenizer"])
    assert all(p.dtype == torch.float32 for p in reference.model.parameters())
    for a, b in zip(m.encode([SHORT, "x"]), reference.encode([SHORT, "x"])):
        assert a.dtype == torch.float32 and rel_err(a, b) < 1e-6


def test_scaled_fp8_weights_stay_fp8_and_encode_like_their_dequantized_values(tiny, tmp_path):
    sd = load_file(str(tiny["single_file"]))
    fp8, dense = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if k.endswith("_proj.weight"):  # the linear layers, as ComfyUI's scaled-fp8 files store them
            scale = v.abs().amax() / 448
            fp8[k] = (v / scale).to(torch.float8_e4m3fn)
            fp8[k[: -len("weight")] + "scale_weight"] = scale.reshape(1)
            dense[k] = fp8[k].float() * scale
        else:
            fp8[k] = dense[k] = v.bfloat16()
    save_file(fp8, str(tmp_path / "qwen_3_4b_fp8_scaled.safetensors"))
    save_file(dense, str(tmp_path / "dense.safetensors"))
    q = load_text_encoder(tmp_path / "qwen_3_4b_fp8_scaled.safetensors", tokenizer_path=tiny["tokenizer"])
    proj = q.model.model.layers[0].mlp.up_proj
    assert proj.weight.dtype == torch.float8_e4m3fn and proj.scale_weight is not None
    d = load_text_encoder(tmp_path / "dense.safetensors", tokenizer_path=tiny["tokenizer"])
    for a, b in zip(q.encode([SHORT]), d.encode([SHORT])):
        assert rel_err(a, b) < 1e-5


def test_lm_head_in_file_is_loaded_untied(tiny, tmp_path):
    sd = load_file(str(tiny["single_file"]))
    sd = {k[len("model."):]: v for k, v in sd.items()}  # also: no `model.` prefix
    sd["lm_head.weight"] = torch.randn_like(sd["embed_tokens.weight"])
    f = tmp_path / "qwen3_with_head.safetensors"
    save_file(sd, str(f))
    m = load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
    assert not m.model.config.tie_word_embeddings
    assert torch.equal(m.model.lm_head.weight, sd["lm_head.weight"])
    assert m.model.lm_head.weight.data_ptr() != m.model.model.embed_tokens.weight.data_ptr()


# ----------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_resolution_order(tiny, tmp_path):
    tok = tiny["tokenizer"]
    fallback = tmp_path / "qwen25_tokenizer"
    shutil.copytree(tok, fallback)
    explicit = tmp_path / "explicit_tok"
    shutil.copytree(tok, explicit)
    # diffusers layout: <model>/tokenizer for <model> and for <model>/text_encoder (and a shard inside it)
    assert resolve_tokenizer_dir(tiny["root"]) == tok
    assert resolve_tokenizer_dir(tiny["text_encoder"], fallback_dirs=[fallback]) == tok
    assert resolve_tokenizer_dir(tiny["text_encoder"] / "model.safetensors.index.json") == tok
    # explicit path wins over everything
    assert resolve_tokenizer_dir(tiny["text_encoder"], tokenizer_path=explicit, fallback_dirs=[fallback]) == explicit
    # tokenizer files inside the given folder itself
    own = tmp_path / "te_with_tok"
    shutil.copytree(tiny["text_encoder"], own)
    for f in tok.iterdir():
        shutil.copy(f, own / f.name)
    assert resolve_tokenizer_dir(own, fallback_dirs=[fallback]) == own
    # a lone single file: only fallback dirs (e.g. ComfyUI's bundled tokenizer), in order
    lone = tmp_path / "lone" / "qwen_3_4b.safetensors"
    lone.parent.mkdir()
    shutil.copy(tiny["single_file"], lone)
    assert resolve_tokenizer_dir(lone, fallback_dirs=[tmp_path / "nope", fallback]) == fallback
    m = load_text_encoder(lone, fallback_dirs=[fallback])
    assert m.tokenizer.folder == fallback
    # nothing found: the error says where to put which files
    with pytest.raises(ZImageError) as e:
        load_text_encoder(lone, fallback_dirs=[tmp_path / "nope"])
    msg = str(e.value)
    assert "qwen_3_4b.safetensors" in msg and "tokenizer.json" in msg and "vocab.json + merges.txt" in msg
    assert "tokenizer_config.json" in msg and str(tmp_path / "nope") in msg
    with pytest.raises(ZImageError, match="no tokenizer files"):
        resolve_tokenizer_dir(lone, tokenizer_path=tmp_path / "nope")


# ------------------------------------------------------------------------------------------- wrong files

def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_wrong_files_are_named(tiny, tmp_path):
    vae = _write(tmp_path / "ae.safetensors", {
        "decoder.conv_in.weight": torch.zeros(512, 16, 3, 3), "decoder.up.0.block.0.conv1.weight": torch.zeros(4, 4),
        "encoder.down.0.block.0.conv1.weight": torch.zeros(4, 4)})
    lora = _write(tmp_path / "my_lora.safetensors", {
        "diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64),
        "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4)})
    dit = _write(tmp_path / "z_image_turbo.safetensors", {
        "cap_embedder.1.weight": torch.zeros(8, 8), "t_embedder.mlp.2.weight": torch.zeros(256, 8)})
    clip = _write(tmp_path / "clip_l.safetensors", {"text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4, 4)})
    for f, what in ((vae, "Flux VAE"), (lora, "LoRA"), (dit, "Z-Image DiT"), (clip, "CLIP")):
        with pytest.raises(CheckpointError) as e:
            load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
        assert f.name in str(e.value) and what in str(e.value) and "Qwen3 text encoder" in str(e.value)
    pickled = tmp_path / "qwen_3_4b.pt"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        load_text_encoder(pickled, tokenizer_path=tiny["tokenizer"])


def test_missing_and_unexpected_keys_are_listed(tiny, tmp_path):
    sd = load_file(str(tiny["single_file"]))
    broken = dict(sd)
    del broken["model.layers.1.mlp.up_proj.weight"]
    del broken["model.norm.weight"]
    broken["model.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
    f = _write(tmp_path / "qwen_broken.safetensors", broken)
    with pytest.raises(CheckpointError) as e:
        load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
    msg = str(e.value)
    assert f.name in msg and "2 missing" in msg and "layers.1.mlp.up_proj.weight" in msg and "norm.weight" in msg
    assert "1 unexpected" in msg and "rotary" in msg


def test_heads_that_cannot_share_key_value_heads_name_the_file(tiny, tmp_path):
    sd = load_file(str(tiny["single_file"]))
    for i in range(3):  # 4 query heads over 3 key/value heads of 16
        for p in ("k_proj", "v_proj"):
            sd[f"model.layers.{i}.self_attn.{p}.weight"] = torch.zeros(48, 64)
    f = _write(tmp_path / "qwen_odd_heads.safetensors", sd)
    with pytest.raises(CheckpointError, match=r"qwen_odd_heads\.safetensors.*4 attention heads cannot share 3"):
        load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
