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

import pytest

from workflow_support import PACK_NAME, load_pack  # noqa: F401  (load_pack is imported by tests from here)


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
