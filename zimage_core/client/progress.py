"""Run events as short progress lines on stderr (what ``run`` prints while it waits)."""
from __future__ import annotations

import sys
import time


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

