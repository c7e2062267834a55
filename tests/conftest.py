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


WIDE_DIT, WIDE_VAE, TINY_TE = "z_image_wide.safetensors", "ae_full.safetensors", "qwen_3_4b_tiny.safetensors"


@pytest.fixture(scope="session")
def wide_models(comfyui_host, tiny, tmp_path_factory):
    """Files that ComfyUI's own loaders take, on the session's server, written once per session (~2.3 GB): a
    full-width random DiT (dim 3840, the only width from which ComfyUI builds a Z-Image model; 1 main layer,
    2 refiner blocks, bf16, ~2 GB) in diffusion_models as WIDE_DIT, a full-size random Flux VAE (native VAELoader
    needs the real shapes) in vae as WIDE_VAE, and the tiny single-file text encoder in text_encoders as TINY_TE
    (with its tokenizer). Yields the host; the server frees its models after each module that loads them."""
    import torch
    from safetensors.torch import save_file

    from zimage_core.tiny.dit import random_dit_state
    from zimage_core.tiny.vae import random_vae
    from zimage_core.model.transformer import DiTConfig
    from zimage_core.model.vae import VAEConfig

    host = comfyui_host
    d = tmp_path_factory.mktemp("wide_models")
    cfg = DiTConfig(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, ffn_dim=10240, cap_feat_dim=64)
    save_file(random_dit_state(cfg, seed=1, dtype=torch.bfloat16), str(d / WIDE_DIT))
    ae = random_vae(VAEConfig(channels=(128, 256, 512, 512), num_res_blocks=2, z_channels=16), seed=1)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(d / WIDE_VAE))
    del ae
    host.put_model("diffusion_models", WIDE_DIT, d / WIDE_DIT)
    host.put_model("vae", WIDE_VAE, d / WIDE_VAE)
    host.put_model("text_encoders", TINY_TE, tiny["text_encoder"])
    host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
    try:
        yield host
    finally:
        for folder, name in (("diffusion_models", WIDE_DIT), ("vae", WIDE_VAE)):
            host.remove_model(folder, name)
        for path in (d / WIDE_DIT, d / WIDE_VAE):  # 2.3 GB: not left for pytest's tmp retention
            path.unlink(missing_ok=True)
