"""Shared fixtures for the node tests.

How the pack is imported: ComfyUI imports the repository folder as a package under a path-derived name and
the pack uses relative imports only, so the tests do the same without ComfyUI: `load_pack()` loads the
repository's top-level `__init__.py` as the package `zimage_nodes_pack` (importlib spec with
submodule_search_locations = [repo root]). Its submodules are then `zimage_nodes_pack.nodes.sampler`,
`zimage_nodes_pack.zimage_core.errors`, ... (note: a second copy of zimage_core, distinct from the installed
top-level `zimage_core`, so compare error classes through `pack.zimage_core`).

The real host: `tests/setup-host.sh` puts ComfyUI, ComfyUI-GGUF, ComfyUI-Distributed and the browser driver into $ZIMAGE_TEST_HOST
(default /tmp/zimage-host); COMFYUI_PATH defaults to what is there (tests/frontend.py finds the browser driver there too). One ComfyUI server
(`comfyui_host`, session scope) serves every test that needs one. In CI (CI=true) or with
ZIMAGE_REQUIRE_HOST=1 the host is required: a missing host stops the run, and a test that needs the host and
skips anyway fails instead.
"""
from __future__ import annotations

import importlib
import os

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


# ------------------------------------------------------------------------------------------- the real host

HOST_DIR = os.environ.get("ZIMAGE_TEST_HOST") or "/tmp/zimage-host"
DEFAULT_COMFYUI = os.path.join(HOST_DIR, "ComfyUI-0.18.1")
if not os.environ.get("COMFYUI_PATH") and os.path.isfile(os.path.join(DEFAULT_COMFYUI, "main.py")):
    os.environ["COMFYUI_PATH"] = DEFAULT_COMFYUI  # before the test modules read it at import
GGUF_PACK = os.path.join(HOST_DIR, "ComfyUI-GGUF")
REQUIRE_HOST = os.environ.get("ZIMAGE_REQUIRE_HOST", "") not in ("", "0") \
    or os.environ.get("CI", "").lower() in ("1", "true", "yes")
HOST_FIXTURES = ("comfyui_host",)


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs the real ComfyUI host (COMFYUI_PATH); never skipped in CI")
    config.addinivalue_line("markers", "soak: long mixed queue on one server (bounded in CI; ZIMAGE_SOAK_PROMPTS)")
    if not REQUIRE_HOST:
        return
    from frontend import missing_tools

    missing = []
    if not os.environ.get("COMFYUI_PATH"):
        missing.append(f"ComfyUI (COMFYUI_PATH unset and nothing at {DEFAULT_COMFYUI})")
    reason = missing_tools()
    if reason:
        missing.append(reason)
    if missing:
        raise pytest.UsageError("the real-host tests must run here (CI / ZIMAGE_REQUIRE_HOST) but "
                                + "; ".join(missing) + ". Run `bash tests/setup-host.sh` first.")


def _needs_host(item):
    return item.get_closest_marker("comfyui") is not None \
        or any(f in getattr(item, "fixturenames", ()) for f in HOST_FIXTURES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_HOST and report.skipped and _needs_host(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"a real-host test skipped where the host is required (CI): {reason}"


@pytest.fixture(scope="session")
def artifacts_dir():
    """Where tests leave files for people to look at (screenshots, soak figures): test-artifacts/ at the
    repository root, or ZIMAGE_TEST_ARTIFACTS. CI uploads it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.abspath(os.environ.get("ZIMAGE_TEST_ARTIFACTS") or os.path.join(root, "test-artifacts"))
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def comfyui_host():
    """One real ComfyUI server (our pack + ComfyUI-GGUF when set up) for the whole session. Modules add the
    models they need with `put_model`; the server is stopped at the end of the session."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH not set and no host in $ZIMAGE_TEST_HOST: run `bash tests/setup-host.sh` "
                    "(or point COMFYUI_PATH at a ComfyUI checkout) for the real-ComfyUI tests")
    from comfyui_host import REPO_ROOT, ComfyUIHost

    pack_dir = os.path.abspath(os.environ.get("COMFYUI_TEST_PACK_DIR") or REPO_ROOT)
    extra = [GGUF_PACK] if os.path.isfile(os.path.join(GGUF_PACK, "__init__.py")) else []
    dist_parent = _distributed_copy()  # ComfyUI-Distributed's nodes (the distributed workflows), no workers
    if dist_parent:
        extra.append(os.path.join(dist_parent, "ComfyUI-Distributed"))
    host = ComfyUIHost(path, pack_dir=pack_dir, extra_custom_nodes=extra)
    host.start()
    try:
        yield host
    finally:
        host.stop()
        if dist_parent:
            import shutil

            shutil.rmtree(dist_parent, ignore_errors=True)


def _distributed_copy():
    """A private copy of $ZIMAGE_TEST_HOST/ComfyUI-Distributed (it writes gpu_config.json into its own folder),
    or None when setup-host has not put it there."""
    import tempfile

    from distributed_cluster import HOST_DIR as _host_dir, copy_pack, distributed_pack

    src = distributed_pack(_host_dir)
    if not src:
        return None
    parent = tempfile.mkdtemp(prefix="zimage-dist-pack-")
    copy_pack(src, parent)
    return parent
