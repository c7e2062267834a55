"""Integration tests against a real ComfyUI server (CPU).

Run:  COMFYUI_PATH=/work/comfyui /work/comfy-venv/bin/python -m pytest -q tests/test_comfyui_integration.py
The whole module is skipped when COMFYUI_PATH is unset. The pack (this repository) is
symlinked as custom_nodes/zimage_nodes into a temporary --base-directory; see comfyui_host.py.
"""
import os
import sys

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH not set: set it to a ComfyUI checkout (e.g. /work/comfyui) to run the "
                "real-ComfyUI integration tests", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfyui_host import REPO_ROOT, ComfyUIHost, PromptError  # noqa: E402


# COMFYUI_TEST_PACK_DIR: test the harness against another pack folder (default: this repository).
PACK_DIR = os.path.abspath(os.environ.get("COMFYUI_TEST_PACK_DIR") or REPO_ROOT)


@pytest.fixture(scope="session")
def comfyui():
    if not os.path.isfile(os.path.join(PACK_DIR, "__init__.py")):
        pytest.skip(f"the pack has no top-level __init__.py yet ({PACK_DIR}); ComfyUI cannot load it")
    host = ComfyUIHost(COMFYUI_PATH, pack_dir=PACK_DIR)
    host.start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="session")
def object_info(comfyui):
    return comfyui.object_info()


def _pack_nodes(comfyui, object_info):
    nodes = comfyui.pack_nodes(object_info)
    assert nodes, (f"no node of the pack is in /object_info (python_module custom_nodes.{comfyui.pack_name}*); "
                   f"the top-level __init__.py must export NODE_CLASS_MAPPINGS (or comfy_entrypoint).\n"
                   f"Log tail:\n{comfyui.log_tail()}")
    return nodes


def test_pack_imports_in_comfyui(comfyui, object_info):
    failures = comfyui.pack_import_failures()
    assert not failures, "pack failed to import in ComfyUI:\n" + "\n".join(failures) + \
        "\n\nLog tail:\n" + comfyui.log_tail()
    _pack_nodes(comfyui, object_info)


def _input_specs(info):
    """Yield (section, name, spec) for the visible inputs (required + optional; not hidden)."""
    inputs = info.get("input", {}) or {}
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            yield section, name, spec


def test_pack_nodes_have_description_and_tooltips(comfyui, object_info):
    problems = []
    for node, info in sorted(_pack_nodes(comfyui, object_info).items()):
        if not str(info.get("description") or "").strip():
            problems.append(f"{node}: empty description")
        for section, name, spec in _input_specs(info):
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            if not str(opts.get("tooltip") or "").strip():
                problems.append(f"{node}.{section}.{name}: no tooltip")
        if not info.get("category"):
            problems.append(f"{node}: no category")
    assert not problems, "nodes of the pack missing documentation:\n" + "\n".join(problems)


def test_harness_runs_a_core_graph(comfyui):
    """Checks the harness itself (queue, wait, outputs, validation errors) with core nodes only."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }
    entry = comfyui.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success"
    files = comfyui.output_files(entry, "2")
    assert files and all(os.path.isfile(f) for f in files)

    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}
    with pytest.raises(PromptError) as ei:
        comfyui.post_prompt(bad)
    assert ei.value.body.get("error")
