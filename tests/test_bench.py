"""The benchmark runs end to end (smoke config; CI never checks timings, only that every measure exists)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")


def test_benchmark_smoke_run_writes_every_measure_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "zimage_core.tools.bench", "--config", "smoke", "--repeats", "1",
                        "--workdir", str(tmp_path / "w"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ours/diff" in r.stdout
    res = json.loads(out.read_text())
    for key in ("forward", "decode", "generate", "process", "ratios"):
        assert res[key]["ours"] if key != "ratios" else res[key]
    for ratio in ("forward", "decode", "generate", "process", "load_vs_single_file", "load_vs_from_pretrained"):
        assert res["ratios"][ratio] > 0, ratio
    assert res["dtypes"]["bf16"]["rel_err_vs_fp32"] < 0.05
    assert res["decode"]["max_rel_diff"] < 1e-4
    assert "error" not in res["load"]["diffusers_single_file"]
    for label in ("1.0", "2.1"):
        assert res["controlnet"][f"ours_{label}_over_plain"] > 0 and res["controlnet"][f"ours_{label}_over_diffusers"] > 0
    assert "ControlNet 2.1: forward" in r.stdout
    assert res["nag"]["nag_over_plain"] > 0 and res["nag"]["nag_over_cfg"] > 0 and "NAG: forward" in r.stdout


def test_make_tiny_cli_writes_the_comfyui_and_diffusers_layouts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zimage_core", "make-tiny", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for rel in ("diffusion_models/z_image_tiny.safetensors", "text_encoders/qwen_3_4b_tiny.safetensors",
                "vae/ae_tiny.safetensors", "tokenizer/tokenizer.json", "Z-Image-Tiny/model_index.json",
                "Z-Image-Tiny/transformer/config.json", "Z-Image-Tiny/vae/config.json",
                "Z-Image-Tiny/text_encoder/config.json", "model_patches/controlnet_tiny_2.1.safetensors",
                "model_patches/controlnet_tiny_1.0/config.json", "model_patches/controlnet_tiny_tile.safetensors",
                "model_patches/controlnet_tiny_tile/config.json", "model_patches/controlnet_tiny_inpaint.safetensors",
                "model_patches/controlnet_tiny_inpaint/config.json"):
        assert (tmp_path / rel).exists(), rel
