"""The headless client `python -m zimage_core.client` against a real ComfyUI (the session's `comfyui_host`): small
graphs of the pack's nodes on tiny models, run, refused and failing as a user meets them (the client against a
fake ComfyUI written independently is tests/test_api_client.py).

    python -m pytest -q tests/test_api_client_server.py
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from zimage_core import client as ac



def run_main(capsys, *argv):
    t = time.monotonic()
    rc = ac.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err, time.monotonic() - t


PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def comfyui(comfyui_host, tmp_path_factory):
    """The session's real ComfyUI server with the tiny models under this module's names."""
    from zimage_core.tiny import make_tiny

    host = comfyui_host
    paths = make_tiny(tmp_path_factory.mktemp("tiny"))
    host.put_model("diffusion_models", "z_image_tiny.safetensors", paths["dit"])
    host.put_model("text_encoders", "qwen_3_4b_tiny.safetensors", paths["text_encoder"])
    host.put_model("text_encoders", "tokenizer", paths["tokenizer"])
    host.put_model("vae", "ae_tiny.safetensors", paths["vae"])
    return host


def with_defaults(graph, object_info):
    """Fill required widget inputs the graph lacks with their /object_info defaults (the nodes gain inputs
    over time; the graph below names only the ones the tests care about)."""
    for node in graph.values():
        info = object_info.get(node["class_type"]) or {}
        for name, spec in ((info.get("input") or {}).get("required") or {}).items():
            if name in node["inputs"] or not isinstance(spec, (list, tuple)) or not spec:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts:
                node["inputs"][name] = opts["default"]
            elif isinstance(spec[0], list) and spec[0]:
                node["inputs"][name] = spec[0][0]
    return graph


_REAL_INFO = {}


def real_graph(comfyui):
    if not _REAL_INFO:
        _REAL_INFO.update(comfyui.object_info())
    return with_defaults(_real_graph(), _REAL_INFO)


def _real_graph():
    return {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": "z_image_tiny.safetensors", "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": "qwen_3_4b_tiny.safetensors", "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": "placeholder"},
              "_meta": {"title": "Prompt"}},
        "5": {"class_type": "ZImageEmptyLatent",
              "inputs": {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}},
        "6": {"class_type": "ZImageSampler",
              "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": 0, "steps": 8,
                         "cfg": 1.0, "shift": 3.0, "denoise": 1.0}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "api_client"}},
    }


@pytest.fixture
def real_wf(comfyui, tmp_path):
    p = tmp_path / "real.json"
    p.write_text(json.dumps(real_graph(comfyui)))
    return p


SMALL = ["--set", "5.width=64", "--set", "5.height=48", "--set", f"Prompt.text={PROMPT}",
         "--set", "ZImageSampler.steps=2"]


def test_real_comfyui_run_saves_images(comfyui, real_wf, tmp_path, capsys):
    from PIL import Image

    out_dir = tmp_path / "out"
    rc, out, err, dt = run_main(capsys, real_wf, "--server", f"127.0.0.1:{comfyui.port}", "--out", out_dir,
                                *SMALL, "--seed", "5", "--timeout", "300")
    assert rc == 0, err + "\n" + comfyui.log_tail()
    (path,) = out.split()
    assert Path(path).parent == out_dir and Path(path).name.startswith("api_client")
    assert Image.open(path).size == (64, 48)
    assert "ZImageSampler (node 6)" in err and "2/2" in err and "finished in" in err
    # the server wrote the same bytes it served
    pid = re.search(r"queued prompt (\S+)", err).group(1)
    (server_file,) = comfyui.output_files(comfyui.history(pid))
    assert Path(server_file).read_bytes() == Path(path).read_bytes()

    # the same prompt again: everything cached, the image is still listed and downloaded beside the first
    rc, out2, err, dt = run_main(capsys, real_wf, "--server", f"127.0.0.1:{comfyui.port}", "--out", out_dir,
                                 *SMALL, "--seed", "5", "--timeout", "300")
    assert rc == 0, err
    (path2,) = out2.split()
    assert path2 != path and Path(path2).read_bytes() == Path(path).read_bytes()
    assert "cached" in err


def test_real_comfyui_python_api_events(comfyui, tmp_path):
    g = ac.apply_overrides(real_graph(comfyui), ["5.width=64", "5.height=48", "4.text=" + PROMPT, "6.steps=3",
                                          "6.seed=11"])
    events = []
    res = ac.Client(f"127.0.0.1:{comfyui.port}", timeout=300).run(g, out_dir=tmp_path, on_event=events.append)
    assert len(res.images) == 1 and res.images[0].is_file() and "8" in res.outputs
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "6"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 3
    assert {"execution_start", "execution_success", "client_queued", "client_saved"} <= {e["type"] for e in events}


def test_real_comfyui_validation_error(comfyui, real_wf, capsys):
    rc, out, err, _ = run_main(capsys, real_wf, "--server", f"127.0.0.1:{comfyui.port}", *SMALL,
                               "--set", "ZImageVAELoader.vae_name=missing.safetensors")
    assert rc == 4, err
    assert "node 3 (ZImageVAELoader), input 'vae_name'" in err and "missing.safetensors" in err


def test_real_comfyui_execution_error(comfyui, real_wf, capsys):
    rc, out, err, _ = run_main(capsys, real_wf, "--server", f"127.0.0.1:{comfyui.port}", *SMALL,
                               "--set", "5.width=72", "--timeout", "300")
    assert rc == 5, err
    assert "node 5 (ZImageEmptyLatent)" in err and "16" in err and "Traceback" not in err
