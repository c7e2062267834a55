"""A ComfyUI-Distributed cluster on loopback for tests and the benchmark: one master and N workers, each a real
ComfyUI process (tests/comfyui_host.py) with our pack and its own copy of ComfyUI-Distributed.

Why a copy per process: ComfyUI-Distributed keeps its settings in ``gpu_config.json`` inside its own folder,
so one extracted folder shared by three processes would share (and race on) one file. Each process gets
``<base>/custom_nodes/ComfyUI-Distributed`` copied from $ZIMAGE_TEST_HOST/ComfyUI-Distributed (1.3 MB); the
master's copy holds the workers (``type`` "local", host 127.0.0.1, their ports) and short timeouts.

Every process has its own --base-directory (so its own models/, input/, output/, temp/, user/ folders), its own
in-memory database and port, listens on 127.0.0.1 only, and is started and stopped by its pid (ComfyUIHost).
Workers run with COMFYUI_IS_WORKER=1, as ComfyUI-Distributed's own launcher sets it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

from comfyui_host import ComfyUIHost, find_free_port

DIST_NAME = "ComfyUI-Distributed"
HOST_DIR = os.environ.get("ZIMAGE_TEST_HOST") or "/tmp/zimage-host"  # as in tests/conftest.py


def distributed_pack(host_dir):
    path = os.path.join(host_dir, DIST_NAME)
    return path if os.path.isfile(os.path.join(path, "__init__.py")) else None


def copy_pack(src, dst_parent):
    dst = os.path.join(dst_parent, DIST_NAME)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tests", "gpu_config.json", "*.log", "__pycache__",
                                                            "node_modules", ".git"))
    return dst


def older_pack_copy(pack_dir, dst, missing=("ZImageDiTToModel",)):
    """A copy of our pack as an older release would be: the same code without the nodes ``missing`` (added
    later). Only the pack's runtime files (no tests, no .git)."""
    shutil.copytree(pack_dir, dst, ignore=shutil.ignore_patterns(".git", "tests", "test-artifacts", "workflows",
                                                                 "__pycache__", ".pytest_cache", ".benchmarks"))
    init = os.path.join(dst, "__init__.py")
    with open(init, "a") as f:
        f.write(f"\n# older copy for tests/test_distributed.py: nodes added after this release\n"
                f"for _name in {tuple(missing)!r}:\n"
                f"    NODE_CLASS_MAPPINGS.pop(_name, None)\n    NODE_DISPLAY_NAME_MAPPINGS.pop(_name, None)\n")
    return dst


class Cluster:
    """``master`` and ``workers`` are ComfyUIHost objects; worker ids are "1", "2", ... in order.

    ``worker_timeout``: ComfyUI-Distributed's ``settings.worker_timeout_seconds`` on the master (how long the
    collector waits without news from a worker before it probes it and gives up on it)."""

    def __init__(self, comfyui_path, dist_src, pack_dir, n_workers=2, worker_timeout=6, extra_custom_nodes=(),
                 worker_pack_dirs=None, extra_args=()):
        self.comfyui_path = comfyui_path
        self.dist_src = dist_src
        self.pack_dir = pack_dir
        self.n_workers = n_workers
        self.worker_timeout = worker_timeout
        self.extra = list(extra_custom_nodes)
        self.worker_pack_dirs = dict(worker_pack_dirs or {})  # worker id -> another copy of our pack
        self.extra_args = list(extra_args)  # more ComfyUI arguments for every process
        self.tmp = tempfile.mkdtemp(prefix="zimage-dist-")
        self.master = None
        self.workers = {}

    # ------------------------------------------------------------------ set-up
    def _host(self, role, port, pack_dir, env=None):
        d = os.path.join(self.tmp, role)
        os.makedirs(d, exist_ok=True)
        dist = copy_pack(self.dist_src, d)
        host = ComfyUIHost(self.comfyui_path, pack_dir=pack_dir, port=port, extra_custom_nodes=[dist, *self.extra],
                           env=env, extra_args=self.extra_args)
        return host, dist

    def config(self):
        return {
            "master": {"host": "127.0.0.1"},
            "workers": [{"id": wid, "name": f"worker {wid}", "host": "127.0.0.1", "port": w.port, "type": "local",
                         "enabled": True, "extra_args": ""} for wid, w in self.workers.items()],
            "settings": {"debug": True, "auto_launch_workers": False, "stop_workers_on_master_exit": False,
                         "master_delegate_only": False, "websocket_orchestration": True,
                         "worker_timeout_seconds": self.worker_timeout},
        }

    def start(self):
        master_port = find_free_port()
        ports = [find_free_port() for _ in range(self.n_workers)]
        self.master, master_dist = self._host("master", master_port, self.pack_dir)
        for i, port in enumerate(ports, start=1):
            wid = str(i)
            self.workers[wid], dist = self._host(f"worker{wid}", port, self.worker_pack_dirs.get(wid, self.pack_dir),
                                                 env={"COMFYUI_IS_WORKER": "1"})
            with open(os.path.join(dist, "gpu_config.json"), "w") as f:  # debug: the workers log each tile taken
                json.dump({"settings": {"debug": True}}, f)
        with open(os.path.join(master_dist, "gpu_config.json"), "w") as f:
            json.dump(self.config(), f, indent=1)
        hosts = [self.master, *self.workers.values()]
        with ThreadPoolExecutor(len(hosts)) as ex:  # they start in parallel
            futures = [ex.submit(h.start) for h in hosts]
            errors = [f.exception() for f in futures]
        if any(errors):
            self.stop()
            raise next(e for e in errors if e)
        return self

    def stop(self):
        for h in [self.master, *self.workers.values()]:
            if h is not None:
                h.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------- use
    @property
    def hosts(self):
        return [self.master, *self.workers.values()]

    def put_model(self, kind, name, src, on=None):
        """The same file in every process's own model folder (``on``: only these hosts)."""
        for h in (on or self.hosts):
            h.put_model(kind, name, src)

    def put_input(self, name, src):
        for h in self.hosts:
            shutil.copyfile(src, os.path.join(h.input_dir, name))

    def queue(self, graph, worker_ids, client_id="zimage-tests"):
        """POST /distributed/queue on the master: (HTTP status, body)."""
        ids = list(worker_ids)
        return self.master.request("POST", "/distributed/queue",
                                   {"prompt": graph, "client_id": client_id, "enabled_worker_ids": ids},
                                   timeout=120)
