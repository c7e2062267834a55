"""The headless client's side of ComfyUI-Distributed: one graph on a master and its workers.

``Client(master).run(graph, workers="all")`` (``--workers all`` on the command line) submits to the master's
``POST /distributed/queue`` instead of ``/prompt``. ComfyUI-Distributed (v1.4.4) then sends the graph to each
worker, and answers:

- a worker that cannot run the graph (a model file missing from its folders, a node missing because its copy of
  a pack is older): HTTP 500 for the whole job, nothing runs on the master, the other workers' images are lost,
  and the message does not say which worker;
- a worker that stops in the middle of the job: the master waits ``settings.worker_timeout_seconds`` (60 s by
  default) without news, then returns its own and the other workers' images; only its console says which worker.

So before submitting, the client asks every chosen worker (``GET /object_info/<class>``) whether it has each
node of the graph and each chosen file / option, and leaves out the workers that do not, with a warning that
names the worker and the cause; the master and the healthy workers still make their images. After the run it
asks each worker what became of its part (``/history``, ``/queue``) and warns, naming the worker, when its images
are missing (it stopped answering, failed at a node, or was still running when the master stopped waiting).

Talks to the master given and to the workers listed in the master's ``/distributed/config`` only.
"""
from __future__ import annotations

import time
import urllib.parse

from .errors import ClientError, PromptValidationError, ServerError, UsageError

DISTRIBUTED_NODES = ("DistributedCollector", "UltimateSDUpscaleDistributed")
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0")
CHECK_TIMEOUT = 15.0    # per worker, for the checks before the run and the report after it
REPORT_WAIT = 10.0      # how long a worker may take to file its finished prompt in /history


def worker_nodes(graph: dict) -> list[str]:
    """Ids of the nodes ComfyUI-Distributed sends to a worker: the distributed nodes and all they depend on."""
    todo = [nid for nid, n in graph.items() if n.get("class_type") in DISTRIBUTED_NODES]
    seen = set()
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        for v in (graph[nid].get("inputs") or {}).values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                todo.append(v[0])
    return sorted(seen)


def _choices(spec):
    """The options of a COMBO input spec (old list form or ("COMBO", {"options": [...]})), else None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options") or [])
    return None


class Worker:
    """One worker of the master's config and the client that reaches it."""

    def __init__(self, master, record: dict):
        self.id = str(record.get("id"))
        self.name = str(record.get("name") or self.id)
        host = str(record.get("host") or "").strip()
        if host.startswith(("http://", "https://")):
            address = host
        else:
            if host in LOCAL_HOSTS:  # "on the master's machine"
                host = master.host
            address = f"{host}:{int(record.get('port') or 8188)}"
        self.client = type(master)(address, timeout=CHECK_TIMEOUT, connect_timeout=min(5.0, master.connect_timeout))
        self.address = self.client.address
        self.history_before = set()

    def label(self):
        return f"worker {self.id} ({self.name}, {self.address})"

    def problem(self, graph: dict, nodes: list[str]) -> str | None:
        """Why this worker cannot run its part of ``graph`` (None when it can)."""
        infos = {}
        try:
            for cls in sorted({graph[n]["class_type"] for n in nodes}):
                status, body, _ = self.client._json("GET", "/object_info/" + urllib.parse.quote(cls))
                if status != 200 or not isinstance(body, dict):
                    return f"GET /object_info/{cls} answered HTTP {status} (is it a ComfyUI?)"
                if cls not in body:
                    return (f"it has no node {cls}: the pack that provides it is missing there or older than the "
                            f"master's (install the same version of every pack on every machine)")
                infos[cls] = body[cls]
            self.history_before = set(self._history())
        except ClientError as e:
            return f"it cannot be reached ({e.message})"
        for nid in nodes:
            node = graph[nid]
            spec = infos[node["class_type"]].get("input") or {}
            for name, value in (node.get("inputs") or {}).items():
                if not isinstance(value, str):
                    continue
                choices = _choices((spec.get("required") or {}).get(name) or (spec.get("optional") or {}).get(name))
                if choices is not None and value not in choices:
                    return (f"node {nid} ({node['class_type']}) input '{name}': '{value}' is not among its choices "
                            f"there (a model or input file missing from that machine's folders?)")
        return None

    def _history(self):
        status, body, _ = self.client._json("GET", "/history?max_items=64")
        return body if status == 200 and isinstance(body, dict) else {}

    def outcome(self) -> str | None:
        """After the master finished: None when this worker's part ran to the end, else what became of it."""
        deadline = time.monotonic() + REPORT_WAIT
        while True:
            try:
                history = self._history()
                new = {k: v for k, v in history.items() if k not in self.history_before}
                for entry in new.values():
                    for name, data in (entry.get("status") or {}).get("messages") or []:
                        if name == "execution_error" and isinstance(data, dict):
                            return (f"it failed at node {data.get('node_id')} ({data.get('node_type')}): "
                                    f"{data.get('exception_message', '').strip()}")
                        if name == "execution_interrupted":
                            return "its part was interrupted there"
                if new:
                    return None
                status, q, _ = self.client._json("GET", "/queue")
                busy = status == 200 and isinstance(q, dict) and (q.get("queue_running") or q.get("queue_pending"))
            except ClientError:
                return "it stopped answering during the job (the process ended or the machine is unreachable)"
            if time.monotonic() > deadline:
                if busy:
                    return ("it had not finished when the master stopped waiting for it (ComfyUI-Distributed's "
                            "settings.worker_timeout_seconds)")
                return "it ran nothing for this job"
            time.sleep(0.25)


def config_workers(master) -> list[dict]:
    status, body, _ = master._json("GET", "/distributed/config")
    if status == 404:
        raise UsageError(f"{master.address} has no ComfyUI-Distributed (GET /distributed/config: HTTP 404); "
                         f"install it on the master and on every worker, or run without --workers.")
    if status != 200 or not isinstance(body, dict):
        raise ServerError(f"GET /distributed/config on {master.address} answered HTTP {status}.", status=status)
    return [w for w in body.get("workers") or [] if isinstance(w, dict) and str(w.get("id") or "").strip()]


def select_workers(master, wanted) -> list[Worker]:
    """``wanted``: "all" (the workers enabled in the master's config) or a list of worker ids."""
    records = config_workers(master)
    if wanted == "all":
        chosen = [w for w in records if w.get("enabled", False)]
    else:
        ids = [str(i).strip() for i in wanted]
        known = {str(w["id"]): w for w in records}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UsageError(f"--workers: no worker {', '.join(unknown)} in the master's config (its workers: "
                             f"{', '.join(sorted(known)) or 'none'}; see GET /distributed/config).")
        chosen = [known[i] for i in ids]
    return [Worker(master, w) for w in chosen]


def queue(master, graph: dict, wanted, emit) -> tuple[dict, list[Worker]]:
    """Check the workers, submit to /distributed/queue with the healthy ones; (response, their Workers)."""
    def warn(message):
        emit({"type": "client_warning", "data": {"message": message}})

    nodes = worker_nodes(graph)
    if not nodes:
        warn("the workflow has no DistributedCollector or UltimateSDUpscaleDistributed node: it runs on the "
             "master only.")
    healthy = []
    chosen = select_workers(master, wanted)
    if not chosen:
        warn(f"no worker is enabled in the master's config ({master.address}/distributed/config): the master "
             f"renders alone.")
    for w in chosen:
        why = w.problem(graph, nodes) if nodes else None
        if why:
            warn(f"{w.label()} left out of this job: {why}.")
        else:
            healthy.append(w)
    status, body, raw = master._json("POST", "/distributed/queue", {
        "prompt": graph, "client_id": master.client_id, "enabled_worker_ids": [w.id for w in healthy]})
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        text = body.get("error") if isinstance(body, dict) else raw[:600].decode("utf-8", "replace")
        if status in (400, 500) and "validation" in str(text):
            raise PromptValidationError(f"ComfyUI-Distributed on {master.address} refused the job: {text}",
                                        response=body)
        raise ServerError(f"POST /distributed/queue on {master.address} answered HTTP {status}: {text}",
                          status=status)
    if int(body.get("worker_count") or 0) < len(healthy):
        warn(f"only {body.get('worker_count')} of the {len(healthy)} checked workers took the job (one went "
             f"offline in between; the master's console names it).")
    return body, healthy


def report(workers: list[Worker], emit) -> list[str]:
    """Warnings for the workers whose part of the job did not arrive."""
    out = []
    for w in workers:
        why = w.outcome()
        if why:
            message = f"{w.label()}: {why}; its images are missing from the result."
            out.append(message)
            emit({"type": "client_warning", "data": {"message": message}})
    return out
