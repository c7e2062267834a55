#!/usr/bin/env bash
# Sets up, outside this repository, what the real-host tests need: ComfyUI v0.18.1 (native Z-Image) with its
# requirements in the Python on PATH (the one that runs pytest: a pack runs inside ComfyUI's own
# environment), city96's ComfyUI-GGUF and robertvoy's ComfyUI-Distributed beside it, Debian's Chromium and the npm driver library playwright-core.
#
#   bash tests/setup-host.sh            # the README's test command runs this before pytest
#
# Everything lands in $ZIMAGE_TEST_HOST (default /tmp/zimage-host), where tests/conftest.py looks for it:
#   ComfyUI-0.18.1/   ComfyUI-GGUF/   ComfyUI-Distributed/   frontend-tools/node_modules/playwright-core
# The sources come from ../shared/comfyui (override: ZIMAGE_SHARED=<folder holding comfyui/>); nothing is
# downloaded but registry packages (PyPI, Debian, npm). Safe to re-run: what is there is reused.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${ZIMAGE_TEST_HOST:-/tmp/zimage-host}
SHARED=${ZIMAGE_SHARED:-$REPO/../shared}
PLAYWRIGHT_CORE_VERSION=1.65.2

if [[ ! -x "$SHARED/comfyui/setup.sh" ]]; then
  echo "setup-host: $SHARED/comfyui/setup.sh not found; set ZIMAGE_SHARED to the folder that holds comfyui/" >&2
  exit 2
fi
mkdir -p "$DEST"

# 1. ComfyUI and its requirements (CPU torch 2.13.0 pinned by setup.sh).
COMFY=$("$SHARED/comfyui/setup.sh" "$DEST" | tail -n 1)
[[ -f "$COMFY/main.py" ]] || { echo "setup-host: ComfyUI setup failed (no $COMFY/main.py)" >&2; exit 1; }

# 2. ComfyUI-GGUF, the GGUF loader users have, loaded beside our pack in the test server.
if [[ ! -f "$DEST/ComfyUI-GGUF/__init__.py" ]]; then
  tar -xzf "$SHARED/comfyui/ComfyUI-GGUF.tar.gz" -C "$DEST"
fi
python3 -m pip install -q --disable-pip-version-check -r "$DEST/ComfyUI-GGUF/requirements.txt" 2>&1 \
  | grep -v "^WARNING" || true

# 2b. ComfyUI-Distributed (robertvoy), the scale-out pack: master + workers in tests/test_distributed.py, and
#     its nodes in the frontend test's server. No Python dependencies beyond ComfyUI's own.
if [[ ! -f "$DEST/ComfyUI-Distributed/__init__.py" ]]; then
  tar -xzf "$SHARED/comfyui/ComfyUI-Distributed.tar.gz" -C "$DEST"
fi

# 3. Chromium from Debian (never a browser download of a test tool).
if [[ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host: Chromium is missing; install Debian's package as root: apt-get install chromium" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# 4. playwright-core: the driver library only (it downloads no browser).
TOOLS="$DEST/frontend-tools"
if [[ ! -f "$TOOLS/node_modules/playwright-core/package.json" ]]; then
  mkdir -p "$TOOLS"
  (cd "$TOOLS" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
     && npm install --no-audit --no-fund --loglevel=error "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null)
fi

echo "setup-host: ComfyUI at $COMFY, ComfyUI-GGUF at $DEST/ComfyUI-GGUF, ComfyUI-Distributed at $DEST/ComfyUI-Distributed, $(${CHROMIUM_PATH:-/usr/bin/chromium} --version 2>/dev/null), playwright-core $PLAYWRIGHT_CORE_VERSION"
