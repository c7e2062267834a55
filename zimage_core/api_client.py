"""Headless ComfyUI client: queue an API-format workflow, follow it, download the images.

    python -m zimage_core.api_client run workflows/api/turbo_t2i.json --server 127.0.0.1:8188 \\
        --set 6.text="a red fox in the snow" --set ZImageSampler.seed=42 --out renders/

HTTP with the standard library (``http.client``); live progress over ComfyUI's websocket with the
``websocket-client`` package (``pip install "zimage-nodes[client]"``; every ComfyUI environment can have it).
Without it the client still works and polls ``/history``. It runs from any Python 3.10+ without torch or
ComfyUI, and talks only to the server it is given (never a proxy).

On a ComfyUI-Distributed master, ``--workers all`` (or ``--workers 1,2``) submits to ``/distributed/queue`` so
that the master and its workers each render the graph (see zimage_core/api_distributed.py).

Python use::

    from zimage_core.api_client import Client, load_workflow, apply_overrides
    graph = apply_overrides(load_workflow("turbo_t2i.json"), ["ZImageSampler.seed=7"])
    result = Client("127.0.0.1:8188").run(graph, out_dir="renders")   # RunResult
    result.images                                                     # [Path, ...]

Errors raise a :class:`ClientError` subclass whose ``exit_code`` is what the command line returns.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:  # optional: live progress, previews and errors as they happen
    import websocket  # websocket-client
except ImportError:  # pragma: no cover - exercised by a subprocess test
    websocket = None

DEFAULT_SERVER = "127.0.0.1:8188"
DEFAULT_PORT = 8188
DEFAULT_TIMEOUT = 3600.0
DEFAULT_CONNECT_TIMEOUT = 10.0
POLL_INTERVAL = 0.5      # /history polling when the websocket is unavailable
SILENCE_CHECK = 15.0     # seconds without a websocket message before /history is checked anyway

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_VALIDATION = 4
EXIT_EXECUTION = 5
EXIT_INTERRUPTED = 6
EXIT_TIMEOUT = 7
EXIT_SERVER = 8

EXIT_CODES_HELP = """\
exit codes:
  0  success: every output image was saved, their paths are printed on stdout
  2  bad usage or workflow file (unreadable, not JSON, editor/UI format, bad --set)
  3  the server cannot be reached (or the connection was lost)
  4  ComfyUI refused the workflow (validation error: node, input and reason are printed)
  5  a node failed while running (node id, type and exception message are printed)
  6  interrupted (cancelled on the server, or Ctrl-C here, which cancels the prompt)
  7  timeout (--timeout seconds for the whole run)
  8  unexpected answer from the server (not ComfyUI? download failed)"""


# ====================================================================== errors
class ClientError(Exception):
    """Base of the client's errors; ``exit_code`` is the command line's exit status."""

    exit_code = 1

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.node_id = details.pop("node_id", None)
        self.node_type = details.pop("node_type", None)
        for k, v in details.items():
            setattr(self, k, v)


class UsageError(ClientError):
    """Bad command line / arguments (exit 2)."""

    exit_code = EXIT_USAGE


class WorkflowError(UsageError):
    """The workflow file cannot be used: unreadable, not JSON, UI (editor) format, malformed (exit 2)."""


class OverrideError(UsageError):
    """A ``--set`` that cannot be applied: malformed, unknown or ambiguous node, link input (exit 2).
    ``candidates``: the node ids that matched (ambiguous) or were close (unknown)."""


class ServerUnreachable(ClientError):
    """No connection to the server, or it was lost (exit 3). ``address``: what was tried."""

    exit_code = EXIT_UNREACHABLE


class PromptValidationError(ClientError):
    """HTTP 400 from POST /prompt (exit 4). ``errors``: list of dicts with node_id, node_type, input_name,
    message; ``node_id`` / ``node_type`` are those of the first; ``response``: the server's JSON."""

    exit_code = EXIT_VALIDATION


class PromptExecutionError(ClientError):
    """A node raised while the prompt ran (exit 5). ``node_id``, ``node_type``, ``exception_type``,
    ``exception_message``, ``traceback`` (list of str, from the server), ``prompt_id``."""

    exit_code = EXIT_EXECUTION


class PromptInterrupted(ClientError):
    """The prompt was interrupted (exit 6): on the server, or by Ctrl-C here. ``prompt_id``, ``node_id``."""

    exit_code = EXIT_INTERRUPTED


class ClientTimeout(ClientError):
    """The run took longer than the timeout (exit 7). ``prompt_id`` (None if not queued yet)."""

    exit_code = EXIT_TIMEOUT


class ServerError(ClientError):
    """An answer the client cannot use: unexpected HTTP status, not JSON, failed download (exit 8)."""

    exit_code = EXIT_SERVER


class OverrideWarning(UserWarning):
    """A ``--set`` of an input the node does not have yet (added; ComfyUI may ignore or reject it)."""


# ==================================================================== workflow
def _is_link(value) -> bool:
    """A link in the API format: ``[source_node_id, output_index]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


UI_FORMAT_HELP = ("This is an editor (UI) workflow, the format ComfyUI's Save writes; the API needs the API "
                  "format. In ComfyUI open the workflow and use Workflow > Export (API) (older versions: enable "
                  "'Dev mode' in the settings, then 'Save (API Format)'), and pass that file instead.")


def check_graph(data, source: str = "workflow") -> dict:
    """Check that ``data`` is an API-format graph ``{node_id: {"class_type", "inputs"}}`` and return it.
    Accepts a ``{"prompt": graph, ...}`` wrapper (a saved /prompt request). Raises WorkflowError."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and ("links" in data or "version" in data):
        raise WorkflowError(f"{source}: {UI_FORMAT_HELP}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    if not isinstance(data, dict):
        raise WorkflowError(f"{source}: an API-format workflow is a JSON object mapping node ids to "
                            f"{{'class_type': ..., 'inputs': {{...}}}}, not a {type(data).__name__}.")
    if not data:
        raise WorkflowError(f"{source}: the workflow has no nodes.")
    for nid, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            hint = (f" {UI_FORMAT_HELP}" if isinstance(node, (list, dict)) and nid in ("nodes", "links",
                                                                                      "groups", "extra") else "")
            raise WorkflowError(f"{source}: node '{nid}' is not an API-format node (an object with a "
                                f"'class_type' string and an 'inputs' object).{hint}")
        if not isinstance(node.get("inputs", None), dict):
            raise WorkflowError(f"{source}: node '{nid}' ({node['class_type']}) has no 'inputs' object.")
    return data


def load_workflow(path) -> dict:
    """Read an API-format workflow (JSON file; ``"-"`` = stdin). Raises WorkflowError with the reason."""
    path = str(path)
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WorkflowError(f"{name}: no such workflow file.") from None
    except IsADirectoryError:
        raise WorkflowError(f"{name}: is a folder, not a workflow file.") from None
    except UnicodeDecodeError:
        raise WorkflowError(f"{name}: not a text (UTF-8) file; give the workflow's .json file.") from None
    except OSError as e:
        raise WorkflowError(f"{name}: cannot read ({e.strerror or e}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    return check_graph(data, name)


def _describe(graph: dict, nid: str) -> str:
    node = graph.get(nid) or {}
    title = (node.get("_meta") or {}).get("title")
    ct = node.get("class_type", "?")
    return f"{nid} ({ct}{', ' + repr(title) if title and title != ct else ''})"


def resolve_node(graph: dict, ref: str) -> str:
    """Node id for ``ref``: an id, else a title (``_meta.title``), else a class_type; each must be unique.
    Raises OverrideError naming the candidates."""
    ref = str(ref)
    if ref in graph:
        return ref
    for what, key in (("title", lambda n: (n.get("_meta") or {}).get("title")),
                      ("class_type", lambda n: n.get("class_type"))):
        hits = [nid for nid, n in graph.items() if key(n) == ref]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise OverrideError(f"'{ref}' is ambiguous: {len(hits)} nodes have this {what}: "
                                f"{', '.join(_describe(graph, h) for h in hits)}. Use the node id instead.",
                                candidates=hits)
    names = {}
    for nid, n in graph.items():
        for nm in (nid, (n.get("_meta") or {}).get("title"), n.get("class_type")):
            if nm:
                names.setdefault(str(nm), []).append(nid)
    close = difflib.get_close_matches(ref, list(names), n=3, cutoff=0.6)
    close_ids = list(dict.fromkeys(nid for nm in close for nid in names[nm]))
    listing = ", ".join(_describe(graph, nid) for nid in graph)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise OverrideError(f"no node '{ref}' in the workflow (give a node id, a title or a unique class_type).{hint} "
                        f"Nodes: {listing}.", candidates=close_ids)


def parse_value(text: str):
    """``--set`` value: JSON when it parses (numbers, true/false/null, "quoted", [links]), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_override(item: str):
    """``"node.input=value"`` -> ``(node_ref, input_name, value)``. The node part may contain dots
    (titles); the input is what follows the last dot before the first '='."""
    key, eq, raw = str(item).partition("=")
    node_ref, dot, input_name = key.rpartition(".")
    if not eq or not dot or not node_ref.strip() or not input_name.strip():
        raise OverrideError(f"--set '{item}': expected NODE.INPUT=VALUE, e.g. 5.seed=42, "
                            f"ZImageSampler.steps=8 or \"Positive prompt.text=a red fox\".")
    return node_ref.strip(), input_name.strip(), parse_value(raw)


def _set_input(graph, nid, input_name, value, item, warn):
    inputs = graph[nid].setdefault("inputs", {})
    if isinstance(value, list):
        if not _is_link(value):
            raise OverrideError(f"--set '{item}': a list value is a link in the API format and must be "
                                f"[node_id, output_index], e.g. [\"4\", 0].")
        value = [str(value[0]), value[1]]
        if value[0] not in graph:
            raise OverrideError(f"--set '{item}': the link points to node '{value[0]}', which is not in the "
                                f"workflow.")
    if input_name in inputs:
        if _is_link(inputs[input_name]) and not _is_link(value):
            src = inputs[input_name]
            raise OverrideError(f"--set '{item}': input '{input_name}' of node {_describe(graph, nid)} is "
                                f"connected to node {_describe(graph, str(src[0]))} (output {src[1]}); a "
                                f"value cannot replace a link. Give a link [\"node_id\", output_index] to "
                                f"rewire it, or set the input on the source node.")
    else:
        warn(f"node {_describe(graph, nid)} has no input '{input_name}' in the workflow; adding it "
             f"(fine for an optional input, ComfyUI ignores or rejects unknown ones).")
    inputs[input_name] = value


def _default_warn(message):
    warnings.warn(message, OverrideWarning, stacklevel=3)


def apply_overrides(graph: dict, overrides, warn: Callable[[str], None] | None = None) -> dict:
    """A copy of ``graph`` with each ``"node.input=value"`` applied (see :func:`resolve_node`,
    :func:`parse_value`). Replacing a link with a plain value is refused; setting an input the node does not
    have yet is allowed with a warning (``warn(message)``, default: an :class:`OverrideWarning`)."""
    warn = warn or _default_warn
    out = copy.deepcopy(graph)
    for item in overrides or ():
        node_ref, input_name, value = parse_override(item)
        _set_input(out, resolve_node(out, node_ref), input_name, value, item, warn)
    return out


SEED_INPUTS = ("seed", "noise_seed")


def set_seed(graph: dict, seed: int, warn: Callable[[str], None] | None = None) -> dict:
    """A copy of ``graph`` with every (unlinked) ``seed`` / ``noise_seed`` input set to ``seed``."""
    warn = warn or _default_warn
    out = copy.deepcopy(graph)
    n = 0
    for node in out.values():
        inputs = node.get("inputs") or {}
        for k in SEED_INPUTS:
            if k in inputs and not _is_link(inputs[k]):
                inputs[k] = int(seed)
                n += 1
    if not n:
        warn("--seed: the workflow has no seed input to set.")
    return out


# ====================================================================== client
@dataclass
class RunResult:
    prompt_id: str
    images: list = field(default_factory=list)   # list[Path]: the downloaded files, in output order
    outputs: dict = field(default_factory=dict)  # /history outputs: {node_id: {"images": [...], ...}}
    status: dict = field(default_factory=dict)   # /history status (status_str, messages)
    elapsed: float = 0.0
    warnings: list = field(default_factory=list)  # list[str]: every client_warning of the run (e.g. a worker left out)


def parse_server(server: str):
    """``"host:port"``, ``"host"``, ``"http(s)://host[:port][/base]"`` -> (scheme, host, port, base_path)."""
    s = str(server or DEFAULT_SERVER).strip()
    if "://" not in s:
        s = "http://" + s
        default_port = DEFAULT_PORT
    else:
        default_port = None
    u = urllib.parse.urlsplit(s)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--server '{server}': give host:port (e.g. 127.0.0.1:8188) or an http(s):// URL.")
    try:
        port = u.port
    except ValueError:
        raise UsageError(f"--server '{server}': the port is not a number between 0 and 65535.") from None
    if port is None:
        port = default_port or (443 if u.scheme == "https" else 80)
    return u.scheme, u.hostname, port, u.path.rstrip("/")


def _safe_filename(name: str) -> str:
    name = os.path.basename(str(name).replace("\\", "/"))
    if name in ("", ".", ".."):
        name = "output"
    return name


def _unique_open(out_dir: Path, name: str):
    """Open a new file named ``name`` in ``out_dir`` (``stem_1.ext``, ``stem_2.ext``... when taken)."""
    stem, ext = os.path.splitext(name)
    for i in range(100000):
        p = out_dir / (name if i == 0 else f"{stem}_{i}{ext}")
        try:
            return p, open(p, "xb")
        except FileExistsError:
            continue
    raise ServerError(f"cannot find a free file name for {name} in {out_dir}")


class Client:
    """One ComfyUI server. ``timeout``: seconds for a whole :meth:`run` (queue, wait, download);
    ``cancel_on_abort``: on Ctrl-C or timeout, remove the prompt from the queue / interrupt it."""

    def __init__(self, server: str = DEFAULT_SERVER, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, client_id: str | None = None,
                 cancel_on_abort: bool = True, ssl_context: ssl.SSLContext | None = None):
        self.scheme, self.host, self.port, self.base_path = parse_server(server)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.client_id = client_id or uuid.uuid4().hex
        self.cancel_on_abort = cancel_on_abort
        self.ssl_context = ssl_context
        self._deadline = None

    # ----------------------------------------------------------- addresses
    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    @property
    def ws_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self.scheme == "https" else "ws"
        return f"{scheme}://{host}:{self.port}{self.base_path}/ws?clientId={urllib.parse.quote(self.client_id)}"

    def _remaining(self, cap: float | None = None) -> float:
        if self._deadline is None:
            rem = self.timeout
        else:
            rem = self._deadline - time.monotonic()
        return rem if cap is None else min(rem, cap)

    def _unreachable(self, err, lost=False) -> ServerUnreachable:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        if isinstance(err, socket.gaierror):
            reason = f"cannot resolve host name '{self.host}'"
        elif isinstance(err, (socket.timeout, TimeoutError)):
            reason = f"no answer within {self.connect_timeout:g} s"
        if lost:
            msg = (f"Lost the connection to ComfyUI at {self.address} ({reason}). The server may have stopped "
                   f"or restarted; check its console.")
        else:
            msg = (f"Cannot reach ComfyUI at {self.address} ({reason}). Start ComfyUI (e.g. `python main.py "
                   f"--listen 127.0.0.1 --port {self.port}`) or check --server (host:port of a running server).")
        return ServerUnreachable(msg, address=self.address, reason=reason)

    # ---------------------------------------------------------------- HTTP
    def _connection(self, timeout):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.ssl_context or ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _request(self, method: str, path: str, body=None, timeout: float | None = None, stream_to=None):
        """(status, bytes) of one request. Connect failures raise ServerUnreachable."""
        rem = self._remaining()
        if rem <= 0:
            raise ClientTimeout(f"no result from ComfyUI at {self.address} within {self.timeout:g} s (--timeout).")
        conn = self._connection(min(self.connect_timeout, rem))
        try:
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as e:
                raise self._unreachable(e) from None
            conn.sock.settimeout(min(timeout or 300.0, max(rem, 0.1)))
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, self.base_path + path, body=data, headers=headers)
                resp = conn.getresponse()
                if stream_to is not None and resp.status == 200:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        stream_to.write(chunk)
                    return resp.status, b""
                return resp.status, resp.read()
            except (socket.timeout, TimeoutError):
                if self._remaining() <= 0:
                    raise ClientTimeout(f"no result from ComfyUI at {self.address} within {self.timeout:g} s "
                                        f"(--timeout).") from None
                raise ServerError(f"ComfyUI at {self.address} did not answer {method} {path} in time.") from None
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                raise self._unreachable(e, lost=True) from None
        finally:
            conn.close()

    def _json(self, method, path, body=None):
        status, raw = self._request(method, path, body)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed, raw

    def queue_prompt(self, graph: dict) -> dict:
        """POST /prompt. Returns ``{"prompt_id", "number", "node_errors"}``; HTTP 400 raises
        PromptValidationError."""
        status, body, raw = self._json("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status == 400 and isinstance(body, dict) and ("error" in body or "node_errors" in body):
            raise _validation_error(body, graph)
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            snippet = raw[:300].decode("utf-8", "replace").strip()
            raise ServerError(f"POST /prompt to {self.address} answered HTTP {status}: {snippet or '(empty)'}. "
                              f"Is this a ComfyUI server?", status=status)
        return body

    def history(self, prompt_id: str):
        """The /history entry of ``prompt_id`` (None while it is queued or running)."""
        status, body, raw = self._json("GET", "/history/" + urllib.parse.quote(prompt_id))
        if status != 200 or not isinstance(body, dict):
            raise ServerError(f"GET /history/{prompt_id} from {self.address} answered HTTP {status}.", status=status)
        return body.get(prompt_id)

    def queue(self) -> dict:
        status, body, _ = self._json("GET", "/queue")
        return body if status == 200 and isinstance(body, dict) else {}

    def cancel(self, prompt_id: str) -> str:
        """Remove ``prompt_id`` from the queue, or interrupt it if it is running (only then: an interrupt
        stops whatever runs). Returns 'removed', 'interrupted' or 'not queued'."""
        q = self.queue()
        if any(len(item) > 1 and item[1] == prompt_id for item in q.get("queue_pending", [])):
            self._request("POST", "/queue", {"delete": [prompt_id]})
            return "removed"
        if any(len(item) > 1 and item[1] == prompt_id for item in q.get("queue_running", [])):
            self._request("POST", "/interrupt", {"prompt_id": prompt_id})
            return "interrupted"
        return "not queued"

    def download(self, item: dict, out_dir) -> Path:
        """GET /view for one output entry ``{filename, subfolder, type}`` into ``out_dir``; keeps the
        server's file name, adding ``_1``, ``_2``... rather than overwriting. Returns the path."""
        out_dir = Path(out_dir)
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        path, f = _unique_open(out_dir, _safe_filename(item["filename"]))
        ok = False
        try:
            with f:
                status, raw = self._request("GET", "/view?" + query, stream_to=f)
            if status != 200:
                raise ServerError(f"could not download {item.get('subfolder') or ''}"
                                  f"{'/' if item.get('subfolder') else ''}{item['filename']} "
                                  f"({item.get('type', 'output')}) from {self.address}: HTTP {status}.",
                                  status=status)
            ok = True
        finally:
            if not ok:
                try:
                    path.unlink()
                except OSError:
                    pass
        return path

    # ----------------------------------------------------------------- run
    def run(self, graph: dict, out_dir=None, on_event: Callable[[dict], None] | None = None,
            workers=None) -> RunResult:
        """Queue ``graph``, wait for it, download its output files into ``out_dir`` (not downloaded when
        None; ``outputs`` still lists them). ``on_event(message)`` gets every websocket JSON message about
        this prompt (``{"type", "data"}``) plus the client's own ``client_queued`` / ``client_saved`` /
        ``client_warning`` events.

        ``workers``: run on a ComfyUI-Distributed master and its workers ("all": the workers enabled in its
        config, or a list of worker ids) through ``POST /distributed/queue``; workers that lack a node or file
        of the graph are left out and every worker whose images are missing is named (zimage_core.api_distributed)."""
        graph = check_graph(graph)
        warnings_seen = []

        def emit(msg):
            if msg.get("type") == "client_warning":
                warnings_seen.append(msg["data"]["message"])
            if on_event is not None:
                on_event(msg)

        dist_workers = None
        if out_dir is not None:
            out_dir = Path(out_dir)
            if out_dir.exists() and not out_dir.is_dir():
                raise UsageError(f"--out {out_dir}: exists and is not a folder.")
        start = time.monotonic()
        self._deadline = start + self.timeout
        ws = None
        prompt_id = None
        try:
            ws = self._open_ws(emit)
            if workers is None:
                queued = self.queue_prompt(graph)
            else:
                from . import api_distributed

                queued, dist_workers = api_distributed.queue(self, graph, workers, emit)
            prompt_id = queued["prompt_id"]
            emit({"type": "client_queued", "data": {"prompt_id": prompt_id, "number": queued.get("number"),
                                                    "node_errors": queued.get("node_errors") or {},
                                                    "server": self.address}})
            if queued.get("node_errors"):
                bad = ", ".join(_describe(graph, str(n)) for n in queued["node_errors"])
                emit({"type": "client_warning", "data": {
                    "message": f"some outputs failed validation and will not run: {bad}"}})
            entry = self._wait(ws, prompt_id, graph, emit)
            if dist_workers:
                api_distributed.report(dist_workers, emit)
            outputs = entry.get("outputs") or {}
            images = []
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                for nid, item in _output_files(outputs):
                    p = self.download(item, out_dir)
                    images.append(p)
                    emit({"type": "client_saved", "data": {"path": str(p), "node": nid, **item}})
            return RunResult(prompt_id, images, outputs, entry.get("status") or {}, time.monotonic() - start,
                             warnings_seen)
        except KeyboardInterrupt:
            note = self._abort(prompt_id)
            raise PromptInterrupted(f"Stopped by Ctrl-C{note}", prompt_id=prompt_id) from None
        except ClientTimeout as e:
            if prompt_id is not None:
                e.prompt_id = prompt_id
                e.message = e.args[0] + self._abort(prompt_id)
                e.args = (e.message,)
            raise
        finally:
            if ws is not None:
                ws.close(timeout=0.5)
            self._deadline = None

    def _abort(self, prompt_id) -> str:
        if prompt_id is None:
            return "."
        if not self.cancel_on_abort:
            return f"; prompt {prompt_id} is still queued or running on the server."
        saved = self._deadline
        self._deadline = time.monotonic() + min(self.connect_timeout, 10.0)
        try:
            what = self.cancel(prompt_id)
        except ClientError:
            return f"; could not cancel prompt {prompt_id} on the server."
        finally:
            self._deadline = saved
        return {"removed": f"; prompt {prompt_id} was removed from the server's queue.",
                "interrupted": f"; prompt {prompt_id} was interrupted on the server.",
                }.get(what, f"; prompt {prompt_id} is no longer queued on the server.")

    def _open_ws(self, emit):
        if websocket is None:
            emit({"type": "client_warning", "data": {
                "message": "live progress needs the websocket-client package (pip install websocket-client); "
                           "polling /history."}})
            return None
        timeout = self._remaining(self.connect_timeout)
        try:
            # our own connection to the server given (websocket-client would take a proxy from the environment)
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            if self.scheme == "https":
                sock = (self.ssl_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as e:
            raise self._unreachable(e) from None
        try:
            ws = websocket.create_connection(self.ws_url, timeout=timeout, socket=sock)
        except websocket.WebSocketBadStatusException as e:
            sock.close()
            emit({"type": "client_warning", "data": {
                "message": f"no websocket at {self.ws_url} (HTTP {e.status_code}); progress is not shown, "
                           "polling /history."}})
            return None
        except (websocket.WebSocketException, OSError) as e:
            sock.close()
            emit({"type": "client_warning", "data": {"message": f"websocket failed ({e}); polling /history."}})
            return None
        return ws

    def _wait(self, ws, prompt_id, graph, emit) -> dict:
        """Follow the prompt until it ends; return its /history entry or raise the matching error."""
        if ws is not None:
            try:
                finished = self._follow(ws, prompt_id, emit)
            except (websocket.WebSocketException, OSError) as e:
                emit({"type": "client_warning", "data": {
                    "message": f"websocket lost ({e}); polling /history for the result."}})
                finished = None
            if finished is not None:
                return self._final(prompt_id, finished, graph)
        return self._final(prompt_id, self._poll(prompt_id), graph)

    def _follow(self, ws, prompt_id, emit):
        """Read websocket messages until this prompt's ``executing`` with ``node: null``. Returns the
        /history entry when it is already known (checked after long silences), else True."""
        started = False
        while True:
            rem = self._remaining()
            if rem <= 0:
                raise ClientTimeout(f"ComfyUI at {self.address} did not finish prompt {prompt_id} within "
                                    f"{self.timeout:g} s (--timeout)")
            ws.settimeout(min(rem, SILENCE_CHECK))
            try:
                raw = ws.recv()
            except (websocket.WebSocketTimeoutException, socket.timeout, TimeoutError):
                entry = self.history(prompt_id)  # quiet for a while: did we miss the end?
                if entry:
                    return entry
                continue
            if not isinstance(raw, str) or not raw:
                continue  # binary preview frame, or the server's close (the next recv raises)
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            mtype = msg.get("type")
            data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
            pid = data.get("prompt_id")
            if pid is not None and pid != prompt_id:
                continue  # another prompt (broadcast messages)
            if pid is None and mtype not in ("status", "progress", "executing", "executed"):
                continue
            if pid is None and mtype != "status" and not started:
                continue
            if mtype == "execution_start":
                started = True
            emit(msg)
            if mtype == "execution_error":
                raise _execution_error(data, prompt_id)
            if mtype == "execution_interrupted":
                raise _interrupted_error(data, prompt_id)
            if mtype == "executing" and data.get("node") is None and pid == prompt_id:
                return True

    def _poll(self, prompt_id):
        while True:
            entry = self.history(prompt_id)
            if entry:
                return entry
            rem = self._remaining()
            if rem <= 0:
                raise ClientTimeout(f"ComfyUI at {self.address} did not finish prompt {prompt_id} within "
                                    f"{self.timeout:g} s (--timeout)")
            time.sleep(min(POLL_INTERVAL, rem))

    def _final(self, prompt_id, finished, graph) -> dict:
        entry = finished if isinstance(finished, dict) else None
        for _ in range(20):  # the entry is written just before the final message; allow for a slow store
            if entry:
                break
            entry = self.history(prompt_id)
            if not entry:
                time.sleep(0.1)
        if not entry:
            raise ServerError(f"prompt {prompt_id} finished but /history on {self.address} has no entry for it.")
        status = entry.get("status") or {}
        for name, data in status.get("messages") or []:
            if name == "execution_error" and isinstance(data, dict):
                raise _execution_error(data, prompt_id)
            if name == "execution_interrupted" and isinstance(data, dict):
                raise _interrupted_error(data, prompt_id)
        if status.get("status_str") == "error":
            raise PromptExecutionError(f"Prompt {prompt_id} failed on the server (no details in /history).",
                                       prompt_id=prompt_id)
        return entry


def _output_files(outputs: dict):
    """(node_id, {filename, subfolder, type}) for every file listed in /history outputs."""
    for nid, out in (outputs or {}).items():
        if not isinstance(out, dict):
            continue
        for key, items in out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]:
                    yield str(nid), item


def _validation_error(body: dict, graph: dict) -> PromptValidationError:
    err = body.get("error") if isinstance(body.get("error"), dict) else {"message": str(body.get("error") or "")}
    errors = []
    for nid, ne in (body.get("node_errors") or {}).items():
        ne = ne if isinstance(ne, dict) else {}
        node_type = ne.get("class_type") or (graph.get(str(nid)) or {}).get("class_type")
        for e in ne.get("errors") or [{}]:
            extra = e.get("extra_info") or {}
            message = e.get("message") or "invalid"
            details = e.get("details")
            if details and details not in message and details != extra.get("input_name"):
                message = f"{message}: {details}"
            errors.append({"node_id": str(nid), "node_type": node_type, "input_name": extra.get("input_name"),
                           "message": message, "type": e.get("type")})
    if not errors:
        extra = err.get("extra_info") or {}
        nid = extra.get("node_id")
        message = err.get("message") or "the workflow was refused"
        if err.get("type") == "prompt_no_outputs":
            message += " (the graph needs an output node, e.g. SaveImage)"
        errors.append({"node_id": str(nid) if nid is not None else None,
                       "node_type": extra.get("class_type") or (graph.get(str(nid)) or {}).get("class_type"),
                       "input_name": None, "message": message, "type": err.get("type")})
    lines = []
    for e in errors:
        where = "workflow" if e["node_id"] is None else _describe(graph, e["node_id"]) if e["node_id"] in graph \
            else f"{e['node_id']} ({e['node_type']})"
        prefix = f"node {where}" if e["node_id"] is not None else where
        if e["input_name"]:
            prefix += f", input '{e['input_name']}'"
        lines.append(f"  {prefix}: {e['message']}")
    headline = err.get("message") or "validation failed"
    first = errors[0]
    return PromptValidationError(f"ComfyUI refused the workflow ({headline}):\n" + "\n".join(lines),
                                 node_id=first["node_id"], node_type=first["node_type"],
                                 input_name=first["input_name"], errors=errors, response=body)


def _execution_error(data: dict, prompt_id) -> PromptExecutionError:
    nid, ntype = data.get("node_id"), data.get("node_type")
    etype = data.get("exception_type") or "error"
    emsg = str(data.get("exception_message") or "").strip()
    short_type = etype.rsplit(".", 1)[-1]
    return PromptExecutionError(
        f"ComfyUI failed while running node {nid} ({ntype}): {short_type}: {emsg}",
        node_id=None if nid is None else str(nid), node_type=ntype, exception_type=etype,
        exception_message=emsg, traceback=list(data.get("traceback") or []), prompt_id=prompt_id)


def _interrupted_error(data: dict, prompt_id) -> PromptInterrupted:
    nid, ntype = data.get("node_id"), data.get("node_type")
    at = f" at node {nid} ({ntype})" if nid is not None else ""
    return PromptInterrupted(f"Prompt {prompt_id} was interrupted on the server{at} (Cancel in the UI or "
                             f"POST /interrupt).", node_id=None if nid is None else str(nid), node_type=ntype,
                             prompt_id=prompt_id)


# ================================================================ command line
class ProgressPrinter:
    """Turns run events into short lines on ``stream`` (stderr)."""

    def __init__(self, graph: dict, stream=None, min_interval: float = 1.0):
        self.graph = graph
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.total = len(graph)
        self.seen: list[str] = []
        self.last_progress = {}
        self.queue_remaining = None
        self.started = None

    def _print(self, text):
        print(text, file=self.stream, flush=True)

    def _name(self, nid) -> str:
        node = self.graph.get(str(nid))
        if node is None:
            return f"node {nid}"
        title = (node.get("_meta") or {}).get("title")
        t = f" {title!r}" if title and title != node["class_type"] else ""
        return f"{node['class_type']} (node {nid}{t})"

    def __call__(self, msg: dict):
        mtype, data = msg.get("type"), msg.get("data") or {}
        if mtype == "client_queued":
            self._print(f"queued prompt {data['prompt_id']} on {data['server']}")
        elif mtype == "client_warning":
            self._print(f"warning: {data['message']}")
        elif mtype == "status" and self.started is None:
            rem = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            if isinstance(rem, int) and rem > 1 and rem != self.queue_remaining:
                self._print(f"waiting: {rem} prompts in the server's queue")
            self.queue_remaining = rem
        elif mtype == "execution_start":
            self.started = time.monotonic()
        elif mtype == "execution_cached":
            cached = [str(n) for n in data.get("nodes") or []]
            self.total = max(len([n for n in self.graph if n not in cached]), 0)
            if cached:
                self._print(f"cached (not re-run): {', '.join(self._name(n) for n in cached)}")
        elif mtype == "executing" and data.get("node") is not None:
            nid = str(data["node"])
            if nid in self.graph and nid not in self.seen:
                self.seen.append(nid)
                self.total = max(self.total, len(self.seen))
                self._print(f"[{len(self.seen)}/{self.total}] {self._name(nid)}")
        elif mtype == "progress":
            nid, value, mx = data.get("node"), data.get("value"), data.get("max")
            now = time.monotonic()
            last = self.last_progress.get(nid)
            if value == mx or last is None or now - last >= self.min_interval:
                self.last_progress[nid] = now
                self._print(f"      {value}/{mx}")
        elif mtype == "execution_success" and self.started is not None:
            self._print(f"finished in {time.monotonic() - self.started:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m zimage_core.api_client"
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP,
        description="Run an API-format ComfyUI workflow on a running ComfyUI server and save its images.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser(
        "run", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="queue a workflow, show progress, download the output images",
        description="Queue an API-format workflow (Workflow > Export (API) in ComfyUI) on a running ComfyUI, "
                    "follow its progress (stderr), download every output image into --out and print the "
                    "saved paths (stdout).",
        epilog=("--set examples:\n"
                "  --set 5.seed=42                 node id 5, input seed (JSON number)\n"
                "  --set ZImageSampler.steps=8     a class_type that is unique in the workflow\n"
                "  --set \"Positive.text=a red fox\" a node title (_meta.title); non-JSON = plain string\n"
                "  --set 7.denoise=0.6 --set 9.enabled=true --set 6.latent='[\"12\", 0]'  (a link)\n\n"
                + EXIT_CODES_HELP))
    run.add_argument("workflow", help="API-format workflow JSON file ('-' reads stdin)")
    run.add_argument("--server", default=os.environ.get("COMFYUI_SERVER", DEFAULT_SERVER),
                     help=f"ComfyUI address, host:port or http(s)://host:port (default: $COMFYUI_SERVER or "
                          f"{DEFAULT_SERVER})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is an id, a title or a unique class_type; VALUE is JSON "
                          "when it parses, else a string (repeatable)")
    run.add_argument("--seed", type=int, help="set every seed / noise_seed input (before --set)")
    run.add_argument("--out", default=".", metavar="DIR",
                     help="folder for the images (created; existing files are kept, new ones get _1, _2...; "
                          "default: current folder)")
    run.add_argument("--workers", metavar="IDS",
                     help="run on a ComfyUI-Distributed master (--server) and its workers through "
                          "/distributed/queue: 'all' (the workers enabled in its config) or ids, e.g. 1,2; "
                          "workers lacking a node or file are left out with a warning")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help="limit for the whole run (default %(default)g)")
    run.add_argument("--keep-running", action="store_true",
                     help="on Ctrl-C or timeout leave the prompt on the server (default: cancel it)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the workflow after --seed/--set on stdout and exit (no server contact)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    run.add_argument("-v", "--verbose", action="store_true", help="the server's traceback on execution errors")
    return parser


def _wrap(text: str) -> str:
    return text if text.endswith((".", "?", ")")) or "\n" in text else text + "."


def main(argv=None) -> int:
    """Command line entry point; returns the exit status (see ``--help``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    err = sys.stderr

    def warn(message):
        if not args.quiet:
            print(f"warning: {message}", file=err, flush=True)

    try:
        graph = load_workflow(args.workflow)
        if args.seed is not None:
            graph = set_seed(graph, args.seed, warn=warn)
        graph = apply_overrides(graph, args.overrides, warn=warn)
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive.")
        if args.dry_run:
            json.dump(graph, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return EXIT_OK
        client = Client(args.server, timeout=args.timeout, cancel_on_abort=not args.keep_running)
        printer = None if args.quiet else ProgressPrinter(graph, err)

        def on_event(msg):
            if msg.get("type") == "client_saved":
                print(msg["data"]["path"], flush=True)
            elif msg.get("type") == "client_warning":
                warn(msg["data"]["message"])
            elif printer is not None:
                printer(msg)

        workers = None
        if args.workers is not None:
            workers = "all" if args.workers.strip() == "all" else [i for i in args.workers.split(",") if i.strip()]
        result = client.run(graph, out_dir=args.out, on_event=on_event, workers=workers)
        if not result.images and not args.quiet:
            print(f"warning: prompt {result.prompt_id} finished without output images (no SaveImage / "
                  f"PreviewImage node ran).", file=err, flush=True)
        return EXIT_OK
    except KeyboardInterrupt:
        print("error: stopped by Ctrl-C.", file=err, flush=True)
        return EXIT_INTERRUPTED
    except ClientError as e:
        text = "error: " + _wrap(e.message)
        if isinstance(e, PromptExecutionError):
            if args.verbose and e.traceback:
                text += "\nServer traceback:\n" + "".join(e.traceback).rstrip()
            elif e.traceback:
                text += " (--verbose shows the server's traceback)"
        print(text, file=err, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
