"""Drive ComfyUI's web frontend in headless Chromium for the editor-extension tests (standard library only).

Needs, outside this repository: Node.js (``node`` on PATH, or ``NODE``), Chromium (``CHROMIUM_PATH``, default
``/usr/bin/chromium``) and the npm package ``playwright-core`` (``PLAYWRIGHT_CORE_DIR``: the ``node_modules``
folder it was installed into, default ``$ZIMAGE_TEST_HOST/frontend-tools/node_modules``, where
tests/setup-host.sh puts it). ``missing_tools()`` says what is absent, so tests can skip with that reason. See tests/README.md for the set-up.

The browser is driven by ``tests/frontend/driver.mjs``, a long-running Node process that takes one JSON
command per line (goto / eval / console / close). Usage with a running ComfyUIHost::

    with ComfyUIPage.open(host) as page:                 # settings set, editor loaded, node defs registered
        n = page.evaluate("return app.graph.nodes.length")
        page.evaluate("const n = LiteGraph.createNode(arg); app.graph.add(n); return n.id", "ZImageEmptyLatent")
        errors = page.console_errors()
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "frontend", "driver.mjs")
DEFAULT_PLAYWRIGHT_CORE_DIR = os.path.join(os.environ.get("ZIMAGE_TEST_HOST") or "/tmp/zimage-host",
                                           "frontend-tools", "node_modules")  # tests/setup-host.sh
DEFAULT_CHROMIUM = "/usr/bin/chromium"


class FrontendError(RuntimeError):
    """The driver failed, or JavaScript evaluated in the page threw."""


def node_executable():
    return os.environ.get("NODE") or shutil.which("node")


def chromium_executable():
    path = os.environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def playwright_core_dir():
    d = os.environ.get("PLAYWRIGHT_CORE_DIR") or DEFAULT_PLAYWRIGHT_CORE_DIR
    if os.path.isfile(os.path.join(d, "playwright-core", "package.json")):
        return d
    try:
        with open(os.path.join(d, "package.json"), encoding="utf-8") as f:
            if json.load(f).get("name") == "playwright-core":
                return d
    except (OSError, ValueError):
        pass
    return None


def missing_tools():
    """A sentence naming what is missing for the browser tests, or None when everything is there."""
    missing = []
    if not node_executable():
        missing.append("Node.js (`node` on PATH or NODE=...)")
    if not chromium_executable():
        missing.append(f"Chromium (CHROMIUM_PATH, default {DEFAULT_CHROMIUM}; `apt-get install chromium`)")
    if not playwright_core_dir():
        missing.append("the npm package playwright-core (PLAYWRIGHT_CORE_DIR = the node_modules folder it is "
                       f"in, default {DEFAULT_PLAYWRIGHT_CORE_DIR}; `npm install playwright-core` there)")
    if not missing:
        return None
    return "browser tests need " + ", ".join(missing) + " (see tests/README.md)"


class Browser:
    """A headless Chromium page behind tests/frontend/driver.mjs."""

    def __init__(self, startup_timeout=120.0):
        reason = missing_tools()
        if reason:
            raise FrontendError(reason)
        env = dict(os.environ)
        env["PLAYWRIGHT_CORE_DIR"] = playwright_core_dir()
        env["CHROMIUM_PATH"] = chromium_executable()
        env.setdefault("PLAYWRIGHT_BROWSERS_PATH", "0")  # never look for / download playwright's own browsers
        self.proc = subprocess.Popen([node_executable(), DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True, encoding="utf-8", bufsize=1)
        self._lines = queue.Queue()
        self._stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self._next_id = 0
        first = self._read(startup_timeout)
        if not first.get("ready"):
            self.close()
            raise FrontendError(f"the browser did not start: {first.get('error')}")
        self.version = first.get("version")

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line)
        q.put(None)

    def _pump_err(self):
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-200]

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(f"no answer from the browser driver within {timeout:.0f}s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise FrontendError("the browser driver exited; stderr:\n" + "".join(self._stderr[-40:]))
            line = line.strip()
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError:  # stray output of playwright; keep it for the error message
                self._stderr.append(line + "\n")

    def command(self, op, wait=60.0, **fields):
        """Send one command to the driver and return its ``value``; ``wait``: seconds to wait for the answer."""
        if self.proc is None or self.proc.poll() is not None:
            raise FrontendError("the browser driver is not running")
        self._next_id += 1
        cid = self._next_id
        self.proc.stdin.write(json.dumps({"id": cid, "op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        while True:
            ans = self._read(wait + 10.0)
            if ans.get("id") == cid:
                break
        if not ans.get("ok"):
            raise FrontendError(f"{op} failed: {ans.get('error')}")
        return ans.get("value")

    def goto(self, url, timeout=60.0):
        return self.command("goto", wait=timeout, url=url, timeout=int(timeout * 1000))

    def evaluate(self, src, arg=None, timeout=30.0):
        """Run ``src`` as the body of an async function of ``arg`` in the page; returns its JSON-able result.
        Raises FrontendError when it throws (the message carries the JavaScript stack)."""
        return self.command("eval", wait=timeout, src=src, arg=arg, timeout=int(timeout * 1000))

    def wait_for(self, src, arg=None, timeout=60.0, poll=0.25):
        """Evaluate ``src`` until it returns something truthy; returns that value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(src, arg, timeout=max(1.0, deadline - time.monotonic()))
            except FrontendError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(poll)
        raise FrontendError(f"condition not met within {timeout:.0f}s: {src!r} (last: {last})")

    def console(self, clear=False):
        """Console messages, page errors, failed requests and HTTP >= 400 responses seen so far:
        ``[{"kind", "type", "text", "url"}]``."""
        return self.command("console", clear=clear)

    def act(self, selector, action="click", value=None, timeout=30.0, position=None, button=None):
        """A user action on the first element matching a Playwright ``selector`` (CSS, ``text=...``,
        ``role=button[name="..."]``): ``click``, ``hover``, ``fill`` (``value``: the text) or ``press``
        (``value``: a key such as "Enter"). Waits until the element is visible and enabled. ``position``:
        {"x", "y"} inside the element (a point on the canvas); ``button``: "right" opens a context menu."""
        extra = {k: v for k, v in (("position", position), ("button", button)) if v is not None}
        self.command("act", wait=timeout, selector=selector, action=action, value=value,
                     timeout=int(timeout * 1000), **extra)

    def screenshot(self, path):
        self.command("screenshot", path=os.path.abspath(path))

    def close(self, timeout=20.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"id": -1, "op": "close"}) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Editor ready: the app exists, node definitions are registered and a graph is attached.
READY_JS = """
if (!app || !app.graph || !window.LiteGraph) return false;
return Object.keys(LiteGraph.registered_node_types).length > 50;
"""


class ComfyUIPage(Browser):
    """A Browser with ComfyUI's editor loaded from a running ComfyUIHost."""

    @classmethod
    def open(cls, host, startup_timeout=120.0, ready_timeout=120.0, settings=None):
        # Skip the first-run template browser; settings are stored server-side per user.
        for key, value in {"Comfy.TutorialCompleted": True, **(settings or {})}.items():
            host.post("/api/settings/" + key, value)
        page = cls(startup_timeout=startup_timeout)
        try:
            page.host = host
            page.goto(host.url + "/", timeout=ready_timeout)
            page.wait_for(READY_JS, timeout=ready_timeout)
        except BaseException:
            page.close()
            raise
        return page

    def console_errors(self, clear=False, ignore=()):
        """Errors only: console.error, uncaught page errors, failed requests, HTTP errors; minus any whose
        text or URL contains one of the ``ignore`` substrings."""
        out = []
        for m in self.console(clear=clear):
            if m["type"] not in ("error", "assert") and m["kind"] == "console":
                continue
            if any(s in m["text"] or s in m["url"] for s in ignore):
                continue
            out.append(m)
        return out


def pack_categories(repo_root: Path = Path(__file__).resolve().parents[1]) -> dict[str, str]:
    """{node id: category} of the pack, read from nodes/*.py without importing them."""
    out = {}
    for py in sorted((repo_root / "nodes").glob("*.py")):
        src = py.read_text(encoding="utf-8")
        for m in re.finditer(r"^class (ZImage\w+):.*?^    CATEGORY = \"([^\"]+)\"", src, re.S | re.M):
            out[m.group(1)] = m.group(2)
    return out
