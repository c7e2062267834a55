"""zimage_core.client.distributed without ComfyUI: which nodes a worker gets, how a worker's address is found, and the
checks against a small fake worker (stdlib HTTP server on 127.0.0.1). The real master + workers:
tests/test_distributed.py."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zimage_core.client import distributed as ad
from zimage_core.client import Client, UsageError

GRAPH = {
    "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": "z.safetensors", "weight_dtype": "auto"}},
    "2": {"class_type": "DistributedSeed", "inputs": {"seed": 5}},
    "3": {"class_type": "ZImageSampler", "inputs": {"dit": ["1", 0], "seed": ["2", 0], "steps": 8}},
    "4": {"class_type": "DistributedCollector", "inputs": {"images": ["3", 0], "load_balance": False}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
}


def test_a_worker_gets_the_distributed_nodes_and_what_they_depend_on():
    assert ad.worker_nodes(GRAPH) == ["1", "2", "3", "4"]
    assert ad.worker_nodes({"1": {"class_type": "SaveImage", "inputs": {}}}) == []


def test_combo_choices_in_both_spec_forms():
    assert ad._choices([["a", "b"], {}]) == ["a", "b"]
    assert ad._choices(["COMBO", {"options": ["x"]}]) == ["x"]
    assert ad._choices(["INT", {"default": 1}]) is None


def test_a_local_worker_is_reached_on_the_masters_host():
    master = Client("10.0.0.5:8188")
    assert ad.Worker(master, {"id": "1", "host": "127.0.0.1", "port": 8189, "type": "local"}).address == \
        "http://10.0.0.5:8189"
    assert ad.Worker(master, {"id": "2", "host": "10.0.0.9", "port": 8190, "type": "remote"}).address == \
        "http://10.0.0.9:8190"


class FakeWorker(BaseHTTPRequestHandler):
    nodes = {}

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        if path.startswith("/object_info/"):
            cls = path[len("/object_info/"):]
            body = {cls: self.nodes[cls]} if cls in self.nodes else {}
        elif path == "/history":
            body = {}
        elif path == "/distributed/config":
            self.send_response(404)
            self.end_headers()
            return
        else:
            body = {}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_worker():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorker)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    FakeWorker.nodes = {
        "ZImageDiTLoader": {"input": {"required": {"dit_name": [["other.safetensors"], {}],
                                                   "weight_dtype": [["auto"], {}]}}},
        "DistributedSeed": {"input": {"required": {"seed": ["INT", {}]}}},
        "DistributedCollector": {"input": {"required": {"images": ["IMAGE"], "load_balance": ["BOOLEAN", {}]}}},
    }
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_checks_name_a_missing_node_then_a_missing_file(fake_worker):
    w = ad.Worker(Client("127.0.0.1:1"), {"id": "7", "name": "box", "host": "127.0.0.1", "port": fake_worker})
    nodes = ad.worker_nodes(GRAPH)
    assert "it has no node ZImageSampler" in w.problem(GRAPH, nodes)
    FakeWorker.nodes["ZImageSampler"] = {"input": {"required": {"steps": ["INT", {}]}}}
    why = w.problem(GRAPH, nodes)
    assert "node 1 (ZImageDiTLoader) input 'dit_name': 'z.safetensors' is not among its choices" in why
    FakeWorker.nodes["ZImageDiTLoader"]["input"]["required"]["dit_name"][0].append("z.safetensors")
    assert w.problem(GRAPH, nodes) is None
    assert w.label() == f"worker 7 (box, http://127.0.0.1:{fake_worker})"


def test_an_unreachable_worker_and_a_master_without_the_pack(fake_worker):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    w = ad.Worker(Client("127.0.0.1:1"), {"id": "1", "host": "127.0.0.1", "port": closed})
    assert w.problem(GRAPH, ad.worker_nodes(GRAPH)).startswith("it cannot be reached")
    with pytest.raises(UsageError, match="has no ComfyUI-Distributed"):
        ad.config_workers(Client(f"127.0.0.1:{fake_worker}"))
