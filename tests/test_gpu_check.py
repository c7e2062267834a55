"""The one-command GPU check, run on its tiny CPU path (the same rows and code as on a GPU) and as a dry run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_core.tools import gpu_check


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The exact command of the GPU session, in its own process (as on the device machine: pytest's own
    sys.path additions could shadow packages such as gguf that diffusers imports)."""
    out = tmp_path_factory.mktemp("gpu_check")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "zimage_core.tools.gpu_check", "--tiny", "--out", str(out / "out"),
                        "--workdir", str(out / "weights")], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "out" / "gpu_check.json").read_text()), (out / "out" / "gpu_check.txt").read_text()


def test_tiny_run_writes_one_row_per_planned_row_in_order(tiny_run):
    result, text = tiny_run
    names = [r["name"] for r in result["rows"]]
    assert names == [r.name for r in gpu_check.plan(True)]
    assert names[:3] == ["ours bf16 high", "diffusers bf16", "parity fp32 ours vs diffusers"]
    for name in names:
        assert name in text


def test_tiny_run_measures_every_ours_and_diffusers_row(tiny_run):
    result, _ = tiny_run
    timed = [r for r in result["rows"] if r["kind"] in ("ours", "diffusers")]
    assert len(timed) == 8
    for r in timed:
        assert r["status"] == "ok", r
        assert r["generate_s"] > 0 and r["warmup_s"] > 0 and r["load_s"] > 0


def test_tiny_run_parity_with_diffusers_passes_within_one_255th(tiny_run):
    result, text = tiny_run
    parity = next(r for r in result["rows"] if r["kind"] == "parity")
    assert parity["status"] == "ok" and parity["parity"] == "pass"
    assert parity["max_8bit_diff"] <= 1 and parity["image_std_8bit"] > 5  # a real picture, not a flat field
    assert "parity pass" in text


def test_gguf_rows_say_not_available_instead_of_numbers(tiny_run):
    result, _ = tiny_run
    gguf = [r for r in result["rows"] if r["kind"] == "gguf"]
    assert [r["dit"] for r in gguf] == ["Q8_0", "Q4_K"]
    for r in gguf:
        assert r["status"].startswith(("not available", "not run")) and "generate_s" not in r


def test_dry_run_prints_the_plan_with_disk_and_preset_estimates(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "DiT 6.15B" in text and "1024x1024, 8 steps" in text
    for preset in ("12GB", "8GB", "6GB"):
        assert f"ours bf16 {preset}" in text and f"budget {preset[:-2]} GiB" in text
    total = float(text.split("total ")[1].split(" GiB")[0])
    assert 15 < total < 30  # the brief's disk budget


def test_comfy_rows_come_last_native_bf16_first_and_say_why_when_they_cannot_run(tiny_run):
    result, text = tiny_run
    comfy = [r for r in result["rows"] if r["kind"] == "comfy"]
    assert [r["contender"] for r in comfy] == ["native-bf16", "ours@high", "ours@12GB", "ours@8GB", "ours@6GB",
                                               "native-default"]
    assert result["rows"][-len(comfy):] == comfy
    for r in comfy:  # on the tiny CPU run native ComfyUI cannot build the tiny DiT; at most one of ours runs
        assert r["status"] == "ok" or r["status"].startswith(("not available", "not run", "skipped", "timed out")), r
        if r["contender"].startswith("native"):
            assert r["status"] != "ok"
    assert "ComfyUI, released sizes" in text


def _fake_bench_row(tmp_path, name, step, vram, color):
    from PIL import Image

    image = tmp_path / f"{name}.png"
    Image.new("RGB", (8, 8), color).save(image)
    return {"contender": name, "graph_s": 10 * step, "first_step_s": 2 * step, "later_step_s": step,
            "peak_vram_gb": vram, "peak_rss_gb": 3.0, "peak_anon_gb": 1.0, "image": str(image)}


def test_comfy_table_gives_ours_against_native_bf16_of_the_same_run(tmp_path):
    native = _fake_bench_row(tmp_path, "native-bf16", 2.0, 20.0, (10, 20, 30))
    ours = _fake_bench_row(tmp_path, "ours@8GB", 3.0, 8.0, (12, 20, 30))
    rows = [{"name": "comfy native bf16", "kind": "comfy", "status": "ok", **gpu_check.comfy_entry(native, native)},
            {"name": "comfy ours 8GB", "kind": "comfy", "status": "ok", **gpu_check.comfy_entry(ours, native)},
            {"name": "comfy native default", "kind": "comfy", "status": "timed out after 180 s"}]
    e = rows[1]
    assert e["step_s"] == 3.0 and e["step_vs_native"] == 1.5 and e["vram_vs_native"] == 0.4
    assert e["max_pixel_diff_vs_native"] == 2 and "step_vs_native" not in rows[0]
    lines = gpu_check.comfy_table({"size": 1024, "steps": 8, "rows": rows})
    assert "1024x1024, 8 steps" in lines[0]
    row = next(ln for ln in lines if ln.startswith("comfy ours 8GB"))
    assert row.split()[3:] == ["ok", "30.0", "3.00", "8.00", "3.00", "1.50", "0.40", "2/255"]
    assert any(ln.startswith("comfy native default") and "timed" in ln for ln in lines)


def test_only_takes_row_kinds(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--dry-run", "--only", "comfy,nonsense"])
    assert e.value.code == 2 and "nonsense" in capsys.readouterr().err
