"""The full-size benchmark's machinery (zimage_core/tools/bench_full.py, `python -m zimage_core bench`): files
streamed to disk read back as written, contender names, and one end-to-end run on tiny random models in real
ComfyUI processes (needs COMFYUI_PATH): table, JSON, per-node memory and step times, pixel differences, the
memory limit that stops a contender. No timing is asserted: the benchmark reports, the test checks it reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zimage_core.tools import bench_full, fullsize_files
from zimage_core.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_streamed_safetensors_read_back_as_written(tmp_path):
    g = torch.Generator().manual_seed(0)
    made = {"a.weight": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g),
            "c.weight": torch.randn(2, 4, generator=g) / 10}
    specs = {"a.weight": ((3, 5), torch.bfloat16), "b": ((7,), torch.float32), "c.weight": ((2, 4), torch.float8_e4m3fn)}
    path = fullsize_files.write_safetensors_streamed(tmp_path / "x.safetensors", specs, made.__getitem__)
    back = load_file(str(path))
    assert list(back) == list(specs) or set(back) == set(specs)
    for name, (shape, dtype) in specs.items():
        assert back[name].dtype == dtype and tuple(back[name].shape) == shape
        assert torch.equal(back[name], made[name].to(dtype))
    assert not (tmp_path / "x.safetensors.part").exists()


def test_tiny_files_load_with_our_loaders_in_their_stored_formats(tmp_path):
    from zimage_core.model.dit_loader import load_dit
    from zimage_core.model.text_encoder import load_text_encoder

    sizes = fullsize_files.SIZES["tiny"]
    files = fullsize_files.ensure_files(["dit_bf16", "dit_fp8", "dit_q8_0", "te_bf16", "te_fp8", "te_q8_0"], tmp_path,
                                    sizes, log=lambda s: None)
    dit = load_dit(files["dit_bf16"])
    assert dit.cfg.dim == sizes.dit.dim and dit.layers[0].feed_forward.w1.weight.dtype == torch.bfloat16
    fp8 = load_dit(files["dit_fp8"])
    assert fp8.layers[0].feed_forward.w1.weight.dtype == torch.float8_e4m3fn
    from zimage_core.tiny.text_encoder import write_tiny_tokenizer

    tok = write_tiny_tokenizer(tmp_path / "tokenizer")  # none beside these files (ComfyUI gives its own)
    te = load_text_encoder(files["te_bf16"], tokenizer_path=tok)
    assert te.model.config.vocab_size == fullsize_files.FULL_VOCAB
    assert te.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    te8 = load_text_encoder(files["te_fp8"], tokenizer_path=tok)
    assert te8.model.model.layers[0].mlp.up_proj.weight.dtype == torch.float8_e4m3fn
    tq = load_text_encoder(files["te_q8_0"], tokenizer_path=tok)
    a, b, c = (m.encode("a fox")[0] for m in (te, te8, tq))
    assert ((b - a).abs().max() / a.abs().max()) < 0.1 and ((c - a).abs().max() / a.abs().max()) < 0.05


def test_contender_names():
    cs = bench_full.parse_contenders("ours, ours-q4_k@8GB,native-bf16,native-default")
    assert [(c.kind, c.fmt, c.preset, c.flags) for c in cs] == [
        ("ours", "bf16", "auto", ()), ("ours", "q4_k", "8GB", ()), ("native", "bf16", "auto", ("--bf16-unet",)),
        ("native", "bf16", "auto", ())]
    assert cs[1].files == ("dit_q4_k", "te_q4_k", "vae")
    for bad in ("theirs", "ours-int3", "native-bf16@8GB", "ours@9GB", ""):
        with pytest.raises(InputError, match="--contenders"):
            bench_full.parse_contenders(bad)


@pytest.mark.comfyui
def test_tiny_benchmark_runs_each_contender_in_its_own_comfyui_and_reports(tmp_path):
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.skip("COMFYUI_PATH not set")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "zimage_core", "bench", "--tiny", "--contenders", "ours,ours@8GB",
           "--cache", str(tmp_path / "cache"), "--workdir", str(tmp_path / "work"), "--comfyui", comfyui,
           "--size", "64", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {x["contender"]: x for x in res["results"]}
    assert set(rows) == {"ours", "ours@8GB"} and res["summary"]["reference"] == "ours"
    for row in rows.values():
        assert "error" not in row
        assert 0 < row["peak_anon_gb"] <= row["peak_rss_gb"]
        assert row["graph_s"] > 0 and row["process_s"] > row["graph_s"]
        assert len(row["step_s"]) == 2  # one progress tick per step of ZImageSampler
        assert {"ZImageTextEncode", "ZImageSampler", "ZImageVAEDecode"} <= set(row["nodes"])
        assert Path(row["image"]).is_file()
    assert rows["ours@8GB"]["max_pixel_diff_255"] == 0  # no memory preset changes a CPU run
    for name in rows:
        assert name in r.stdout  # the table

    # a contender whose anonymous memory passes --max-anon-gb is stopped and reported, the run goes on
    cmd[cmd.index("--contenders") + 1] = "ours"
    r = subprocess.run(cmd + ["--max-anon-gb", "0.05"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    (row,) = json.loads(out.read_text())["results"]
    assert row["error"].startswith("killed: anonymous memory above the limit")
