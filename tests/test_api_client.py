"""Tests of the headless client `python -m zimage_core.client` (zimage_core/client/).

Part 1 runs against a small fake ComfyUI written here (stdlib http.server on 127.0.0.1:0 in a thread:
POST /prompt, GET /history/<id>, GET /view, GET /queue, POST /interrupt and the websocket upgrade with
server frames written by hand, so the client's websocket library meets an independent peer). Fast, no
ComfyUI needed.

The same client against a real ComfyUI: tests/test_api_client_server.py.
    python -m pytest -q tests/test_api_client.py
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from zimage_core import client as ac
from zimage_core.client import transport

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ws_frames import read_client_frame, server_frame  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40   # content is only compared byte for byte


# ================================================================================== fake ComfyUI
GRAPH = {
    "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": "z.safetensors", "weight_dtype": "auto"},
          "_meta": {"title": "Load DiT"}},
    "2": {"class_type": "ZImageTextEncode", "inputs": {"text": "a fox", "text_encoder": ["1", 0]},
          "_meta": {"title": "Positive"}},
    "3": {"class_type": "ZImageTextEncode", "inputs": {"text": "", "text_encoder": ["1", 0]},
          "_meta": {"title": "Negative"}},
    "5": {"class_type": "ZImageSampler", "inputs": {"dit": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "seed": 1, "steps": 2, "cfg": 1.0}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "z"},
          "_meta": {"title": "Save v1.5"}},
}
OUTPUTS = {"9": {"images": [{"filename": "z_00001_.png", "subfolder": "", "type": "output"},
                            {"filename": "z_00002_.png", "subfolder": "sub", "type": "temp"}]}}


def success_script(pid, cid):
    return [
        ("json", {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": cid}}),
        ("json", {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": 1}}),
        ("json", {"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": pid}}),
        ("json", {"type": "executing", "data": {"node": "2", "display_node": "2", "prompt_id": pid}}),
        ("json", {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": pid}}),
        ("json", {"type": "executing", "data": {"node": "5", "display_node": "5", "prompt_id": pid}}),
        ("json", {"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": pid, "node": "5"}}),
        ("binary", struct.pack(">II", 1, 2) + os.urandom(100_000)),           # a preview, > 64 KiB
        ("json", {"type": "progress", "data": {"value": 2, "max": 2, "prompt_id": pid, "node": "5"}}),
        ("json", {"type": "executing", "data": {"node": "7", "prompt_id": "someone-else"}}),
        ("json", {"type": "execution_interrupted", "data": {"prompt_id": "someone-else", "node_id": "7"}}),
        ("json", {"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": pid}}),
        ("json", {"type": "executed", "data": {"node": "9", "output": OUTPUTS["9"], "prompt_id": pid}}),
        ("history", {"prompt": [], "outputs": OUTPUTS, "status": {"status_str": "success", "completed": True,
                                                                 "messages": []}}),
        ("json", {"type": "execution_success", "data": {"prompt_id": pid}}),
        ("json", {"type": "executing", "data": {"node": None, "prompt_id": pid}}),
    ]


class FakeComfy:
    def __init__(self):
        self.script = success_script          # (prompt_id, client_id) -> items for the websocket
        self.prompt_reply = None              # (status, body) instead of queuing
        self.files = {("z_00001_.png", "", "output"): PNG, ("z_00002_.png", "sub", "temp"): PNG[::-1]}
        self.history, self.running = {}, set()
        self.prompts, self.requests, self.interrupts, self.deleted = [], [], [], []
        self.ws_queues, self.ws_clients, self.client_frames = {}, [], []
        self.pending_mode = False             # /queue lists running prompts as pending
        self.no_ws = False                    # answer /ws with 404 (the client then polls /history)
        self.bad_accept = False
        self.history_delay = None             # no_ws mode: seconds until the history entry appears
        self.stopping = False
        self.counter = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                fake.requests.append(("GET", self.path))
                if u.path == "/ws":
                    if fake.no_ws:
                        return self._reply(404, b"404: Not Found", "text/plain")
                    return self._websocket(q.get("clientId", ""))
                if u.path.startswith("/history/"):
                    pid = u.path[len("/history/"):]
                    return self._reply(200, {pid: fake.history[pid]} if pid in fake.history else {})
                if u.path == "/view":
                    key = (q.get("filename"), q.get("subfolder", ""), q.get("type", "output"))
                    if key in fake.files:
                        return self._reply(200, fake.files[key], "image/png")
                    return self._reply(404, b"", "text/plain")
                if u.path == "/queue":
                    items = [[0, p, {}, {}, []] for p in fake.running]
                    return self._reply(200, {"queue_running": [] if fake.pending_mode else items,
                                             "queue_pending": items if fake.pending_mode else []})
                return self._reply(404, b"404: Not Found", "text/plain")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                fake.requests.append(("POST", self.path))
                if self.path == "/interrupt":
                    fake.interrupts.append(body)
                    return self._reply(200, b"", "text/plain")
                if self.path == "/queue":
                    fake.deleted.append(body)
                    return self._reply(200, b"", "text/plain")
                if self.path != "/prompt":
                    return self._reply(404, b"", "text/plain")
                fake.prompts.append(body)
                if fake.prompt_reply is not None:
                    status, reply = fake.prompt_reply
                    return self._reply(status, reply, "application/json" if isinstance(reply, dict) else "text/plain")
                fake.counter += 1
                pid = f"prompt-{fake.counter}"
                fake.running.add(pid)
                cid = body.get("client_id")
                self._reply(200, {"prompt_id": pid, "number": fake.counter, "node_errors": {}})
                if fake.no_ws:
                    entry = {"outputs": OUTPUTS, "status": {"status_str": "success", "messages": []}}
                    threading.Timer(fake.history_delay or 0.2, fake._finish, (pid, entry)).start()
                elif cid in fake.ws_queues:
                    for item in fake.script(pid, cid):
                        fake.ws_queues[cid].put(item if item[0] != "history" else ("history", pid, item[1]))

            def _websocket(self, cid):
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
                if fake.bad_accept:
                    accept = base64.b64encode(b"x" * 20).decode()
                q = fake.ws_queues[cid] = queue.Queue()
                fake.ws_clients.append((cid, dict(self.headers)))
                self.close_connection = True
                self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
                self.wfile.flush()
                conn, rbuf = self.connection, bytearray()
                try:
                    self._ws_loop(conn, q, rbuf)
                except OSError:
                    pass

            def _ws_loop(self, conn, q, rbuf):
                while not fake.stopping:
                    try:
                        item = q.get(timeout=0.01)
                    except queue.Empty:
                        item = None
                    if item is not None:
                        kind = item[0]
                        if kind == "json":
                            conn.sendall(server_frame(1, json.dumps(item[1]).encode()))
                        elif kind == "binary":
                            conn.sendall(server_frame(2, item[1]))
                        elif kind == "raw":
                            conn.sendall(item[1])
                        elif kind == "history":
                            fake._finish(item[1], item[2])
                        elif kind == "sleep":
                            time.sleep(item[1])
                        elif kind == "drop":
                            conn.shutdown(socket.SHUT_RDWR)
                            return
                    if select.select([conn], [], [], 0)[0]:
                        data = conn.recv(65536)
                        if not data:
                            return
                        rbuf += data
                        while (f := read_client_frame(rbuf)) is not None:
                            fake.client_frames.append(f)
                            if f[1] == 8:
                                conn.sendall(server_frame(8, f[3][:2]))
                                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def _finish(self, pid, entry):
        self.history[pid] = entry
        self.running.discard(pid)

    def close(self):
        self.stopping = True
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    f = FakeComfy()
    yield f
    f.close()


@pytest.fixture
def wf(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(GRAPH))
    return p


def run_main(capsys, *argv):
    t = time.monotonic()
    rc = ac.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err, time.monotonic() - t


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ======================================================================================= success
def test_success_path_via_main(fake, wf, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "z_00001_.png").write_bytes(b"older file, must survive")
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", out_dir,
                               "--set", "5.seed=7", "--set", "Positive.text=a red fox")
    assert rc == 0, err
    paths = out.split()
    assert paths == [str(out_dir / "z_00001__1.png"), str(out_dir / "z_00002_.png")]
    assert Path(paths[0]).read_bytes() == PNG and Path(paths[1]).read_bytes() == PNG[::-1]
    assert (out_dir / "z_00001_.png").read_bytes() == b"older file, must survive"
    # the queued graph carries the overrides, and the prompt's client_id is the websocket's
    (body,) = fake.prompts
    assert body["prompt"]["5"]["inputs"]["seed"] == 7 and body["prompt"]["2"]["inputs"]["text"] == "a red fox"
    assert [cid for cid, _ in fake.ws_clients] == [body["client_id"]]
    # progress on stderr: cached notice, [k/N] per node, sampler steps; the other prompt's messages ignored
    assert "queued prompt prompt-1" in err
    assert "cached (not re-run): ZImageDiTLoader (node 1 'Load DiT')" in err
    assert "[1/4] ZImageTextEncode (node 2 'Positive')" in err
    assert "[3/4] ZImageSampler (node 5)" in err
    assert "[4/4] SaveImage (node 9 'Save v1.5')" in err
    assert "2/2" in err and "node 7" not in err and "finished in" in err
    # client frames are masked; the client said goodbye with a close frame
    assert fake.client_frames and all(f[2] for f in fake.client_frames)
    assert fake.client_frames[-1][1] == 8


def test_client_api_run_result_and_events(fake, tmp_path):
    events = []
    client = ac.Client(fake.address, timeout=30)
    res = client.run(GRAPH, out_dir=tmp_path / "new" / "dir", on_event=events.append)
    assert isinstance(res, ac.RunResult) and res.prompt_id == "prompt-1"
    assert res.images == [tmp_path / "new" / "dir" / "z_00001_.png", tmp_path / "new" / "dir" / "z_00002_.png"]
    assert all(isinstance(p, Path) for p in res.images) and res.images[0].read_bytes() == PNG
    assert res.outputs == OUTPUTS and res.status["status_str"] == "success"
    types = [e["type"] for e in events]
    assert types[0] == "client_queued" and "execution_start" in types and types.count("client_saved") == 2
    assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2]
    assert all(e["data"].get("prompt_id") in (None, "prompt-1") for e in events)
    # out_dir=None: nothing downloaded, outputs still reported
    res = client.run(GRAPH)
    assert res.images == [] and res.outputs == OUTPUTS and res.prompt_id == "prompt-2"


def test_polls_history_without_websocket(fake, wf, tmp_path, capsys):
    fake.no_ws = True
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path)
    assert rc == 0, err
    assert "no websocket" in err and len(out.split()) == 2


def test_websocket_lost_mid_run_falls_back_to_polling(fake, tmp_path):
    def script(pid, cid):
        return success_script(pid, cid)[:5] + [("drop",), ("sleep", 0.3)]

    fake.script = script
    threading.Timer(0.6, fake._finish, ("prompt-1", {"outputs": OUTPUTS, "status": {"status_str": "success"}})).start()
    warnings_seen = []
    res = ac.Client(fake.address, timeout=20).run(
        GRAPH, out_dir=tmp_path, on_event=lambda e: e["type"] == "client_warning" and warnings_seen.append(e))
    assert len(res.images) == 2
    assert warnings_seen and "websocket lost" in warnings_seen[0]["data"]["message"]


# ======================================================================================= failures
NODE_ERRORS_400 = {
    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
              "details": "", "extra_info": {}},
    "node_errors": {"5": {"errors": [{"type": "value_bigger_than_max", "message": "Value 20000 bigger than max of 10000",
                                      "details": "steps", "extra_info": {"input_name": "steps", "received_value": 20000}}],
                          "dependent_outputs": ["9"], "class_type": "ZImageSampler"}},
}


def test_validation_error(fake, wf, tmp_path, capsys):
    fake.prompt_reply = (400, NODE_ERRORS_400)
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path)
    assert rc == ac.EXIT_VALIDATION == 4 and out == ""
    assert "refused the workflow (Prompt outputs failed validation)" in err
    assert "node 5 (ZImageSampler), input 'steps': Value 20000 bigger than max of 10000\n" in err
    with pytest.raises(ac.PromptValidationError) as ei:
        ac.Client(fake.address).run(GRAPH)
    e = ei.value
    assert (e.node_id, e.node_type, e.input_name, e.exit_code) == ("5", "ZImageSampler", "steps", 4)
    assert e.errors[0]["message"].startswith("Value 20000")

    # a missing node type: no node_errors, the node is in error.extra_info
    fake.prompt_reply = (400, {"error": {"type": "missing_node_type", "message": "Node 'Foo' not found. The custom "
                                         "node may not be installed.", "details": "Node ID '#9'",
                                         "extra_info": {"node_id": "9", "class_type": "Foo", "node_title": "Foo"}},
                               "node_errors": {}})
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address)
    assert rc == 4 and "node 9 (SaveImage" in err and "may not be installed" in err


def exec_error_script(pid, cid):
    data = {"prompt_id": pid, "node_id": "5", "node_type": "ZImageSampler", "executed": ["2", "3"],
            "exception_message": "width and height must be multiples of 16, got 72x48",
            "exception_type": "zimage_core.errors.ZImageError",
            "traceback": ["  File \"execution.py\", line 1, in execute\n", "    raise ZImageError(...)\n"],
            "current_inputs": {}, "current_outputs": []}
    return success_script(pid, cid)[:6] + [
        ("json", {"type": "execution_error", "data": data}),
        ("history", {"outputs": {}, "status": {"status_str": "error", "messages": [["execution_error", data]]}}),
        ("json", {"type": "executing", "data": {"node": None, "prompt_id": pid}})]


def test_execution_error(fake, wf, tmp_path, capsys):
    fake.script = exec_error_script
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path)
    assert rc == ac.EXIT_EXECUTION == 5 and out == ""
    assert "node 5 (ZImageSampler): ZImageError: width and height must be multiples of 16, got 72x48" in err
    assert "raise ZImageError" not in err and "--verbose" in err
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path, "--verbose")
    assert rc == 5 and "Server traceback:" in err and "raise ZImageError(...)" in err
    with pytest.raises(ac.PromptExecutionError) as ei:
        ac.Client(fake.address).run(GRAPH)
    e = ei.value
    assert (e.node_id, e.node_type, e.exit_code) == ("5", "ZImageSampler", 5)
    assert "multiples of 16" in e.exception_message and e.prompt_id == "prompt-3"


def test_execution_error_found_in_history_when_polling(fake, wf, tmp_path, capsys):
    fake.no_ws = True
    data = {"node_id": "5", "node_type": "ZImageSampler", "exception_message": "boom", "exception_type": "RuntimeError"}
    orig = fake._finish
    fake._finish = lambda pid, entry: orig(pid, {"outputs": {}, "status": {"status_str": "error",
                                                                           "messages": [["execution_error", data]]}})
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path)
    assert rc == 5 and "node 5 (ZImageSampler): RuntimeError: boom" in err


def test_interrupted_on_server(fake, wf, capsys):
    fake.script = lambda pid, cid: success_script(pid, cid)[:6] + [
        ("json", {"type": "execution_interrupted", "data": {"prompt_id": pid, "node_id": "5",
                                                            "node_type": "ZImageSampler", "executed": []}})]
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address)
    assert rc == ac.EXIT_INTERRUPTED == 6 and "interrupted on the server at node 5 (ZImageSampler)" in err


def test_timeout_cancels_the_prompt(fake, wf, capsys):
    fake.script = lambda pid, cid: success_script(pid, cid)[:3]   # starts, never ends
    rc, out, err, dt = run_main(capsys, wf, "--server", fake.address, "--timeout", "1")
    assert rc == ac.EXIT_TIMEOUT == 7 and dt < 8
    assert "within 1 s (--timeout)" in err and "prompt-1 was interrupted on the server" in err
    assert fake.interrupts == [{"prompt_id": "prompt-1"}]
    fake.interrupts.clear()
    rc, out, err, dt = run_main(capsys, wf, "--server", fake.address, "--timeout", "1", "--keep-running")
    assert rc == 7 and "still queued or running" in err and fake.interrupts == []


def test_ctrl_c_cancels_the_prompt(fake, tmp_path):
    def on_event(e):
        if e["type"] == "progress":
            raise KeyboardInterrupt

    fake.script = lambda pid, cid: success_script(pid, cid)[:7]    # up to the sampler's first progress
    with pytest.raises(ac.PromptInterrupted) as ei:
        ac.Client(fake.address).run(GRAPH, on_event=on_event)
    assert ei.value.exit_code == 6 and "Ctrl-C" in ei.value.message and ei.value.prompt_id == "prompt-1"
    assert fake.interrupts == [{"prompt_id": "prompt-1"}]
    # still waiting in the queue: removed from it instead of interrupting whatever runs
    fake.pending_mode = True
    fake.script = lambda pid, cid: success_script(pid, cid)[:1]
    with pytest.raises(ac.ClientTimeout) as ei:
        ac.Client(fake.address, timeout=0.5).run(GRAPH)
    assert "removed from the server's queue" in ei.value.message and ei.value.prompt_id == "prompt-2"
    assert fake.deleted == [{"delete": ["prompt-2"]}] and len(fake.interrupts) == 1
    with pytest.raises(ac.UsageError, match="not a folder"):
        ac.Client(fake.address).run(GRAPH, out_dir=tmp_path / "wf.json" if (tmp_path / "wf.json").write_text("x")
                                    else None)


def test_unreachable_server_is_fast_and_names_the_address(wf, capsys):
    port = closed_port()
    rc, out, err, dt = run_main(capsys, wf, "--server", f"127.0.0.1:{port}")
    assert rc == ac.EXIT_UNREACHABLE == 3 and dt < 5, (rc, dt)
    assert f"http://127.0.0.1:{port}" in err and "--server" in err and "Start ComfyUI" in err
    with pytest.raises(ac.ServerUnreachable) as ei:
        ac.Client(f"http://127.0.0.1:{port}").run(GRAPH)
    assert ei.value.exit_code == 3 and ei.value.address == f"http://127.0.0.1:{port}"


def test_not_comfyui_and_failed_download(fake, wf, tmp_path, capsys):
    fake.prompt_reply = (404, b"404: Not Found")
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address)
    assert rc == ac.EXIT_SERVER == 8 and "HTTP 404" in err and "ComfyUI server?" in err
    fake.prompt_reply = None
    del fake.files[("z_00002_.png", "sub", "temp")]
    rc, out, err, _ = run_main(capsys, wf, "--server", fake.address, "--out", tmp_path / "o")
    assert rc == 8 and "z_00002_.png" in err and "HTTP 404" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["z_00001_.png"]   # no partial file left


# ============================================================================ workflow files, --set
def test_ui_format_and_bad_files_are_refused(tmp_path, capsys):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 9, "nodes": [{"id": 1, "type": "SaveImage"}], "links": [],
                              "version": 0.4}))
    rc, out, err, _ = run_main(capsys, ui, "--server", f"127.0.0.1:{closed_port()}")
    assert rc == 2 and "editor (UI) workflow" in err and "Export (API)" in err
    with pytest.raises(ac.WorkflowError):
        ac.load_workflow(ui)
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "X", "inputs": {}},\n oops}')
    rc, out, err, _ = run_main(capsys, bad)
    assert rc == 2 and "not valid JSON (line 2" in err
    rc, out, err, _ = run_main(capsys, tmp_path / "missing.json")
    assert rc == 2 and "no such workflow file" in err
    notnode = tmp_path / "notnode.json"
    notnode.write_text(json.dumps({"1": {"inputs": {}}}))
    rc, out, err, _ = run_main(capsys, notnode)
    assert rc == 2 and "node '1' is not an API-format node" in err
    # a saved /prompt request body is accepted
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": GRAPH, "client_id": "x"}))
    assert ac.load_workflow(wrapped) == GRAPH
    # bad usage
    assert ac.main(["run"]) == 2
    assert ac.main([]) == 2
    rc, out, err, _ = run_main(capsys, wrapped, "--server", "host:notaport")
    assert rc == 2 and "--server" in err
    capsys.readouterr()
    assert ac.main(["--help"]) == 0 and "exit codes" in capsys.readouterr().out


def test_set_values_and_node_references():
    g = ac.apply_overrides(GRAPH, ["5.seed=42", "ZImageSampler.cfg=2.5", "Positive.text=a red fox, 8k",
                                   "Negative.text=\"42\"", "Save v1.5.filename_prefix=run/one",
                                   "ZImageDiTLoader.weight_dtype=bf16", "5.steps=8", "1.enabled=true",
                                   "1.extra=null", "1.list_text=[1, 2"], warn=lambda m: None)
    assert GRAPH["5"]["inputs"]["seed"] == 1, "the input graph must not change"
    s = g["5"]["inputs"]
    assert (s["seed"], s["cfg"], s["steps"]) == (42, 2.5, 8) and isinstance(s["steps"], int)
    assert g["2"]["inputs"]["text"] == "a red fox, 8k" and g["3"]["inputs"]["text"] == "42"
    assert g["9"]["inputs"]["filename_prefix"] == "run/one" and g["1"]["inputs"]["weight_dtype"] == "bf16"
    assert g["1"]["inputs"]["enabled"] is True and g["1"]["inputs"]["extra"] is None
    assert g["1"]["inputs"]["list_text"] == "[1, 2"
    assert ac.parse_override("a.b=c=d") == ("a", "b", "c=d")
    assert ac.parse_override("5.text=") == ("5", "text", "")
    # rewiring a link with a link is allowed (ids normalised to strings)
    g = ac.apply_overrides(GRAPH, ["5.negative=[2, 0]"])
    assert g["5"]["inputs"]["negative"] == ["2", 0]


def test_set_errors_and_warnings():
    with pytest.raises(ac.OverrideError) as ei:
        ac.apply_overrides(GRAPH, ["ZImageTextEncode.text=x"])
    assert ei.value.exit_code == 2 and ei.value.candidates == ["2", "3"]
    assert "ambiguous" in ei.value.message and "2 (ZImageTextEncode, 'Positive')" in ei.value.message \
        and "3 (ZImageTextEncode, 'Negative')" in ei.value.message
    with pytest.raises(ac.OverrideError) as ei:
        ac.apply_overrides(GRAPH, ["ZImageSampelr.seed=1"])
    assert "no node 'ZImageSampelr'" in ei.value.message and "Did you mean 'ZImageSampler'" in ei.value.message
    assert ei.value.candidates[0] == "5"
    with pytest.raises(ac.OverrideError, match="connected to node 2"):
        ac.apply_overrides(GRAPH, ["5.positive=hello"])
    with pytest.raises(ac.OverrideError, match="NODE.INPUT=VALUE"):
        ac.apply_overrides(GRAPH, ["5seed=1"])
    with pytest.raises(ac.OverrideError, match="NODE.INPUT=VALUE"):
        ac.apply_overrides(GRAPH, ["5.seed"])
    with pytest.raises(ac.OverrideError, match="must be"):
        ac.apply_overrides(GRAPH, ["5.seed=[1, 2, 3]"])
    with pytest.raises(ac.OverrideError, match="not in the"):
        ac.apply_overrides(GRAPH, ["5.negative=[\"77\", 0]"])
    with pytest.warns(ac.OverrideWarning, match="no input 'sigmas'"):
        g = ac.apply_overrides(GRAPH, ["5.sigmas=1,0.5,0"])
    assert g["5"]["inputs"]["sigmas"] == "1,0.5,0"
    seen = []
    ac.apply_overrides(GRAPH, ["5.new=1"], warn=seen.append)
    assert len(seen) == 1


def test_set_and_seed_on_the_command_line(wf, capsys):
    rc, out, err, _ = run_main(capsys, wf, "--set", "ZImageTextEncode.text=x")
    assert rc == 2 and "ambiguous" in err and "'Positive'" in err and "'Negative'" in err
    rc, out, err, _ = run_main(capsys, wf, "--seed", "123", "--set", "5.new_input=1", "--dry-run")
    assert rc == 0
    g = json.loads(out)
    assert g["5"]["inputs"]["seed"] == 123 and g["5"]["inputs"]["new_input"] == 1
    assert "warning: node 5 (ZImageSampler) has no input 'new_input'" in err
    g2 = ac.set_seed({"1": {"class_type": "KSampler", "inputs": {"seed": 1}},
                      "2": {"class_type": "SamplerCustom", "inputs": {"noise_seed": ["3", 0]}},
                      "3": {"class_type": "X", "inputs": {"noise_seed": 5}}}, 9)
    assert g2["1"]["inputs"]["seed"] == 9 and g2["2"]["inputs"]["noise_seed"] == ["3", 0] \
        and g2["3"]["inputs"]["noise_seed"] == 9


def test_module_starts_without_heavy_imports():
    code = "import sys, zimage_core.client; print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


# ======================================================================== websocket (websocket-client)
def test_websocket_handshake_reaches_comfyui_as_this_client(fake, tmp_path):
    client = ac.Client(fake.address, client_id="abc", timeout=20)
    client.run(GRAPH, out_dir=tmp_path)
    cid, headers = fake.ws_clients[-1]
    assert cid == "abc" and headers["Sec-WebSocket-Version"] == "13" and headers["Upgrade"].lower() == "websocket"


def test_bad_websocket_handshake_falls_back_to_polling(fake, tmp_path):
    fake.bad_accept = True
    threading.Timer(0.5, fake._finish, ("prompt-1", {"outputs": OUTPUTS, "status": {"status_str": "success"}})).start()
    warnings_seen = []
    res = ac.Client(fake.address, timeout=20).run(
        GRAPH, out_dir=tmp_path, on_event=lambda e: e["type"] == "client_warning" and warnings_seen.append(e))
    assert len(res.images) == 2
    assert warnings_seen and "websocket failed" in warnings_seen[0]["data"]["message"]


def test_without_websocket_client_the_run_polls_and_says_why(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(transport, "websocket", None)
    fake.no_ws = True  # the prompt finishes by itself; the client must not even try /ws
    warnings_seen = []
    res = ac.Client(fake.address, timeout=20).run(
        GRAPH, out_dir=tmp_path, on_event=lambda e: e["type"] == "client_warning" and warnings_seen.append(e))
    assert len(res.images) == 2
    assert not any(path.startswith("/ws") for method, path in fake.requests)
    assert "pip install websocket-client" in warnings_seen[0]["data"]["message"]


def test_proxy_variables_are_ignored(fake, tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    warnings_seen = []
    res = ac.Client(fake.address, timeout=20).run(
        GRAPH, out_dir=tmp_path, on_event=lambda e: e["type"] == "client_warning" and warnings_seen.append(e))
    assert len(res.images) == 2 and fake.ws_clients and not warnings_seen


def test_server_address_forms():
    assert ac.parse_server("127.0.0.1:8188") == ("http", "127.0.0.1", 8188, "")
    assert ac.parse_server("localhost") == ("http", "localhost", 8188, "")
    assert ac.parse_server("http://example.org/comfy/") == ("http", "example.org", 80, "/comfy")
    assert ac.parse_server("https://example.org:8443") == ("https", "example.org", 8443, "")
    assert ac.parse_server("[::1]:9000") == ("http", "::1", 9000, "")
    c = ac.Client("https://example.org/comfy", client_id="c1")
    assert c.ws_url == "wss://example.org:443/comfy/ws?clientId=c1"
    with pytest.raises(ac.UsageError):
        ac.parse_server("ftp://x")
