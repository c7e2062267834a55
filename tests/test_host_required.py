"""In CI the real-host tests can never silently skip (tests/conftest.py): a missing host stops the run before
any test, and a host test that skips anyway is reported as failed. Each case runs pytest in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frontend import missing_tools

REPO = Path(__file__).resolve().parent.parent
VOCAB_TEST = "tests/test_tokenizer.py::test_comfyui_qwen_vocabulary_matches_transformers"


def _pytest(env_changes, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "CI", "ZIMAGE_REQUIRE_HOST")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_ci_without_a_host_stops_before_any_test(tmp_path):
    r = _pytest({"CI": "true", "ZIMAGE_TEST_HOST": str(tmp_path)}, VOCAB_TEST)
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert "must run here" in r.stderr and "tests/setup-host.sh" in r.stderr


def test_without_ci_a_missing_host_skips_with_the_reason(tmp_path):
    r = _pytest({"ZIMAGE_TEST_HOST": str(tmp_path)}, "-rs", VOCAB_TEST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout and "COMFYUI_PATH is not set" in r.stdout


def test_ci_turns_a_skipped_host_test_into_a_failure(tmp_path):
    if missing_tools():  # the configure-time check wants the browser tools too
        pytest.skip(missing_tools())
    fake = tmp_path / "ComfyUI"  # a "host" without the Qwen vocabulary: the test would skip
    fake.mkdir()
    (fake / "main.py").write_text("")
    r = _pytest({"ZIMAGE_REQUIRE_HOST": "1", "COMFYUI_PATH": str(fake)}, VOCAB_TEST)
    assert r.returncode == pytest.ExitCode.TESTS_FAILED, r.stdout + r.stderr
    assert "1 failed" in r.stdout and "a real-host test skipped where the host is required" in r.stdout
