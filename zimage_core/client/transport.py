"""Talking to one ComfyUI server: HTTP requests (standard library), the websocket for live events
(``websocket-client`` when installed, else polling ``/history``), downloads, and the server's errors
turned into the client's."""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
import uuid
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


from .errors import (
    ClientError,
    ClientTimeout,
    PromptExecutionError,
    PromptInterrupted,
    PromptValidationError,
    ServerError,
    ServerUnreachable,
    UsageError,
)
from .workflow import _describe, check_graph


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
        of the graph are left out and every worker whose images are missing is named (zimage_core.client.distributed)."""
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
                from . import distributed as api_distributed

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

