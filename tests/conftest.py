"""Shared fixtures for the node tests.

How the pack is imported: ComfyUI imports the repository folder as a package under a path-derived name and
the pack uses relative imports only, so the tests do the same without ComfyUI: `load_pack()` loads the
repository's top-level `__init__.py` as the package `zimage_nodes_pack` (importlib spec with
submodule_search_locations = [repo root]). Its submodules are then `zimage_nodes_pack.nodes.sampler`,
`zimage_nodes_pack.zimage_core.errors`, ... (note: a second copy of zimage_core, distinct from the installed
top-level `zimage_core`, so compare error classes through `pack.zimage_core`).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "zimage_nodes_pack"


def load_pack(name: str = PACK_NAME):
    """Import the repository as a package (like ComfyUI does) and return it."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def pack():
    """The pack package; e.g. `pack.nodes.sampler.ZImageSampler`, `pack.NODE_CLASS_MAPPINGS`."""
    p = load_pack()
    for sub in ("nodes", "nodes.host", "zimage_core.errors"):
        importlib.import_module(f"{PACK_NAME}.{sub}")
    return p


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random Z-Image model set in the real file formats (see zimage_core.tiny.make_tiny)."""
    from zimage_core.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))
