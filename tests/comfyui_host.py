"""Start a real ComfyUI server for integration tests (standard library only).

ComfyUI itself is never part of this repository: point ``COMFYUI_PATH`` at a
checkout (e.g. ``/work/comfyui``) and, optionally, ``COMFYUI_PYTHON`` at the
interpreter of its virtual environment (default: ``<COMFYUI_PATH>/../comfy-venv/bin/python``
when that exists, else ``sys.executable``).

The server runs with ``--cpu`` on 127.0.0.1 and a free port, with
``--base-directory`` set to a fresh temporary folder, so nothing is written
into the ComfyUI checkout:

    <base>/custom_nodes/<pack_name>   -> symlink to this repository (the pack)
    <base>/models/{diffusion_models,text_encoders,vae,loras,diffusers,...}
    <base>/input  <base>/output  <base>/temp  <base>/user
    <base>/comfyui.log                (stdout + stderr of the server)

The sqlite database of the assets system is kept in memory
(``--database-url sqlite:///:memory:``) for the same reason.

Usage::

    with ComfyUIHost.from_env() as host:          # or host.start() / host.stop()
        host.put_model("vae", "tiny.safetensors", src_path)   # before the graph runs
        info = host.object_info()
        r = host.post_prompt(graph)                # API-format graph
        entry = host.wait_for(r["prompt_id"])      # /history entry
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PACK_NAME = "zimage_nodes"
MODEL_KINDS = (
    "diffusion_models", "text_encoders", "vae", "loras", "diffusers",
    "checkpoints", "vae_approx", "clip_vision", "upscale_models",
)

try:  # optional: used for live progress / execution messages
    import websocket  # type: ignore  # websocket-client
except Exception:  # pragma: no cover - optional dependency
    websocket = None


class ComfyUIError(RuntimeError):
    """Server failed to start, or a request failed."""


class PromptError(ComfyUIError):
    """POST /prompt was rejected (HTTP 400); ``.body`` holds ``error`` and ``node_errors``."""

    def __init__(self, message, body):
        super().__init__(message)
        self.body = body


class ExecutionError(ComfyUIError):
    """The prompt ran and failed; ``.entry`` is the /history entry."""

    def __init__(self, message, entry):
        super().__init__(message)
        self.entry = entry


def find_free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_python(comfyui_path):
    env = os.environ.get("COMFYUI_PYTHON")
    if env:
        return env
    cand = os.path.join(os.path.dirname(os.path.abspath(comfyui_path)), "comfy-venv", "bin", "python")
    if os.path.exists(cand):
        return cand
    return sys.executable


class ComfyUIHost:
    def __init__(self, comfyui_path, python=None, pack_dir=REPO_ROOT, pack_name=DEFAULT_PACK_NAME,
                 port=None, extra_args=(), startup_timeout=240.0, keep_base_dir=False, env=None,
                 extra_custom_nodes=None):
        self.comfyui_path = os.path.abspath(comfyui_path)
        if not os.path.isfile(os.path.join(self.comfyui_path, "main.py")):
            raise ComfyUIError(f"no main.py in COMFYUI_PATH={self.comfyui_path}")
        self.python = python or default_python(self.comfyui_path)
        self.pack_dir = os.path.abspath(pack_dir) if pack_dir else None
        self.pack_name = pack_name
        self.port = port
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.keep_base_dir = keep_base_dir
        self.extra_env = dict(env or {})
        # {folder name: path} of other custom node packs symlinked into <base>/custom_nodes (e.g. ComfyUI-GGUF)
        self.extra_custom_nodes = dict(extra_custom_nodes or {})
        self.host = "127.0.0.1"
        self.base_dir = None
        self.log_path = None
        self.proc = None
        self.client_id = uuid.uuid4().hex
        self._log_file = None

    @classmethod
    def from_env(cls, **kw):
        path = os.environ.get("COMFYUI_PATH")
        if not path:
            raise ComfyUIError("COMFYUI_PATH is not set")
        return cls(path, **kw)

    # ------------------------------------------------------------------ paths
    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def models_dir(self):
        return os.path.join(self.base_dir, "models")

    @property
    def output_dir(self):
        return os.path.join(self.base_dir, "output")

    @property
    def input_dir(self):
        return os.path.join(self.base_dir, "input")

    def model_dir(self, kind):
        """Folder that ComfyUI scans for ``folder_paths.get_filename_list(kind)``."""
        d = os.path.join(self.models_dir, kind)
        os.makedirs(d, exist_ok=True)
        return d

    def put_model(self, kind, name, src=None, data=None, link=True):
        """Place a model file (or, for ``diffusers``, a folder) where ComfyUI finds it.

        ``src``: an existing file/folder (symlinked when ``link``, else copied); ``data``: bytes.
        Returns the path. ComfyUI re-scans model folders on the next /object_info or prompt.
        """
        dst = os.path.join(self.model_dir(kind), name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if data is not None:
            with open(dst, "wb") as f:
                f.write(data)
        elif src is not None:
            if link:
                os.symlink(os.path.abspath(src), dst)
            elif os.path.isdir(src):
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
        else:
            raise ValueError("give src or data")
        return dst

    # -------------------------------------------------------------- lifecycle
    def _prepare_base_dir(self):
        self.base_dir = tempfile.mkdtemp(prefix="comfyui-host-")
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        for kind in MODEL_KINDS:
            self.model_dir(kind)
        if self.pack_dir:
            os.symlink(self.pack_dir, os.path.join(self.base_dir, "custom_nodes", self.pack_name),
                       target_is_directory=True)
        for name, path in self.extra_custom_nodes.items():
            os.symlink(os.path.abspath(path), os.path.join(self.base_dir, "custom_nodes", name), target_is_directory=True)
        self.log_path = os.path.join(self.base_dir, "comfyui.log")

    def command(self):
        return [
            self.python, "-u", os.path.join(self.comfyui_path, "main.py"),
            "--cpu", "--listen", self.host, "--port", str(self.port),
            "--base-directory", self.base_dir,
            "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch",
            *self.extra_args,
        ]

    def start(self):
        if self.proc is not None:
            raise ComfyUIError("already started")
        self._prepare_base_dir()
        if self.port is None:
            self.port = find_free_port(self.host)
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "DO_NOT_TRACK": "1"})
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=self.comfyui_path, env=env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyUIError(f"ComfyUI exited with code {self.proc.returncode} during startup; "
                                   f"log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=10) as r:
                    if r.status == 200:
                        self._object_info = json.loads(r.read())
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            time.sleep(0.5)
        raise ComfyUIError(f"ComfyUI did not answer /object_info within {self.startup_timeout}s; "
                           f"log tail:\n{self.log_tail()}")

    def stop(self, timeout=30.0):
        """Stop the server by its PID (SIGTERM, then SIGKILL) and remove the temp base dir."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=timeout)
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.base_dir and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------------- log
    def log_text(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=80):
        return "\n".join(self.log_text().splitlines()[-n:])

    def pack_import_failures(self):
        """Log lines saying that our pack failed to import (empty list when it imported)."""
        bad = []
        for line in self.log_text().splitlines():
            if self.pack_name not in line:
                continue
            if "(IMPORT FAILED)" in line or "Cannot import" in line or "Skip " in line \
                    or "Error while calling comfy_entrypoint" in line:
                bad.append(line.strip())
        return bad

    # ------------------------------------------------------------------- HTTP
    def request(self, method, path, body=None, timeout=60.0):
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return status, parsed

    def get(self, path, timeout=60.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyUIError(f"GET {path} -> HTTP {status}: {body}")
        return body

    def post(self, path, body=None, timeout=60.0):
        status, resp = self.request("POST", path, body if body is not None else {}, timeout=timeout)
        if status != 200:
            raise ComfyUIError(f"POST {path} -> HTTP {status}: {resp}")
        return resp

    def object_info(self, node_class=None):
        if node_class:
            return self.get("/object_info/" + urllib.parse.quote(node_class))[node_class]
        return self.get("/object_info")

    def pack_nodes(self, info=None):
        """{node_name: info} for nodes registered by our pack (python_module custom_nodes.<pack>)."""
        info = info if info is not None else self.object_info()
        prefix = "custom_nodes." + self.pack_name
        return {k: v for k, v in info.items()
                if str(v.get("python_module", "")).split(".", 2)[:2] == prefix.split(".")}

    def post_prompt(self, graph, client_id=None):
        """Queue an API-format graph. Returns {"prompt_id", "number", "node_errors"}.
        Raises PromptError (with ``.body``: ``error`` + ``node_errors``) on HTTP 400."""
        status, body = self.request("POST", "/prompt",
                                    {"prompt": graph, "client_id": client_id or self.client_id})
        if status != 200:
            raise PromptError(f"prompt rejected (HTTP {status}): {json.dumps(body)[:4000]}", body)
        return body

    def history(self, prompt_id=None):
        if prompt_id is None:
            return self.get("/history")
        return self.get("/history/" + prompt_id).get(prompt_id)

    def queue(self):
        return self.get("/queue")

    def wait_for(self, prompt_id, timeout=600.0, poll=0.25, raise_on_error=True):
        """Poll /history until the prompt finished; return its history entry
        (``outputs``, ``status`` with ``status_str`` 'success'|'error' and ``messages``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry:  # a prompt enters /history only once it has finished (ok, failed or interrupted)
                if raise_on_error and (entry.get("status") or {}).get("status_str") == "error":
                    raise ExecutionError(f"prompt {prompt_id} failed: {self.execution_error(entry)}", entry)
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyUIError(f"ComfyUI died (code {self.proc.returncode}); log tail:\n{self.log_tail()}")
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s")

    @staticmethod
    def execution_error(entry):
        """The ``execution_error`` / ``execution_interrupted`` message data of a history entry, or None."""
        for name, data in (entry.get("status") or {}).get("messages", []):
            if name in ("execution_error", "execution_interrupted"):
                return dict(data, message_type=name)
        return None

    def run(self, graph, timeout=600.0, raise_on_error=True):
        """post_prompt + wait_for; returns the history entry."""
        r = self.post_prompt(graph)
        return self.wait_for(r["prompt_id"], timeout=timeout, raise_on_error=raise_on_error)

    def interrupt(self):
        self.post("/interrupt")

    def free(self, unload_models=True, free_memory=True):
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def output_files(self, entry, node_id=None):
        """Paths of files listed under ``images`` (etc.) in a history entry's outputs."""
        out = []
        for nid, o in entry.get("outputs", {}).items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for key in ("images", "gifs", "videos", "audio"):
                for item in o.get(key, []) or []:
                    root = {"output": self.output_dir, "input": self.input_dir,
                            "temp": os.path.join(self.base_dir, "temp")}[item.get("type", "output")]
                    out.append(os.path.join(root, item.get("subfolder", ""), item["filename"]))
        return out

    # -------------------------------------------------------------- websocket
    def websocket(self, timeout=600.0):
        """A WebSocketListener on /ws for this client_id (needs the websocket-client package).
        Open it BEFORE post_prompt so no message is missed."""
        if websocket is None:
            raise ComfyUIError("websocket-client is not installed")
        return WebSocketListener(f"ws://{self.host}:{self.port}/ws?clientId={self.client_id}", timeout)


class WebSocketListener:
    """Collects ComfyUI's JSON messages (``progress``, ``executing``, ``executed``,
    ``execution_error``, ...) and counts binary preview frames."""

    def __init__(self, url, timeout):
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.messages = []
        self.binary_frames = 0

    def wait_for(self, prompt_id, timeout=600.0, on_message=None):
        """Read until ``executing`` with ``node: None`` for ``prompt_id`` (done, failed or
        interrupted). ``on_message(msg)`` is called for every JSON message. Returns the
        messages seen for that prompt."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            raw = self.ws.recv()
            if isinstance(raw, bytes):
                self.binary_frames += 1
                continue
            msg = json.loads(raw)
            self.messages.append(msg)
            data = msg.get("data", {}) or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            seen.append(msg)
            if on_message is not None:
                on_message(msg)
            if msg.get("type") == "executing" and data.get("node") is None \
                    and data.get("prompt_id") == prompt_id:
                return seen
        raise TimeoutError(f"no end-of-execution message for {prompt_id} after {timeout}s")

    def close(self):
        self.ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
