"""Headless ComfyUI client: queue an API-format workflow, follow it, download the images.

    python -m zimage_core.client run workflows/api/turbo_t2i.json --server 127.0.0.1:8188 \\
        --set 6.text="a red fox in the snow" --set ZImageSampler.seed=42 --out renders/

HTTP with the standard library (``http.client``); live progress over ComfyUI's websocket with the
``websocket-client`` package (``pip install "zimage-nodes[client]"``; every ComfyUI environment can have it).
Without it the client still works and polls ``/history``. It runs from any Python 3.10+ without torch or
ComfyUI, and talks only to the server it is given (never a proxy).

On a ComfyUI-Distributed master, ``--workers all`` (or ``--workers 1,2``) submits to ``/distributed/queue`` so
that the master and its workers each render the graph (see zimage_core/client/distributed.py).

Python use::

    from zimage_core.client import Client, load_workflow, apply_overrides
    graph = apply_overrides(load_workflow("turbo_t2i.json"), ["ZImageSampler.seed=7"])
    result = Client("127.0.0.1:8188").run(graph, out_dir="renders")   # RunResult
    result.images                                                     # [Path, ...]

Errors raise a :class:`ClientError` subclass whose ``exit_code`` is what the command line returns.
"""

from .command import build_parser, main
from .errors import (
                     EXIT_EXECUTION,
                     EXIT_INTERRUPTED,
                     EXIT_OK,
                     EXIT_SERVER,
                     EXIT_TIMEOUT,
                     EXIT_UNREACHABLE,
                     EXIT_USAGE,
                     EXIT_VALIDATION,
                     ClientError,
                     ClientTimeout,
                     OverrideError,
                     OverrideWarning,
                     PromptExecutionError,
                     PromptInterrupted,
                     PromptValidationError,
                     ServerError,
                     ServerUnreachable,
                     UsageError,
                     WorkflowError,
)
from .progress import ProgressPrinter
from .transport import DEFAULT_SERVER, Client, RunResult, parse_server
from .workflow import (
                     apply_overrides,
                     check_graph,
                     load_workflow,
                     parse_override,
                     resolve_node,
                     set_seed,
)

__all__ = [
    "EXIT_EXECUTION", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SERVER", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "EXIT_USAGE",
    "EXIT_VALIDATION", "ClientError", "ClientTimeout", "OverrideError", "OverrideWarning", "PromptExecutionError",
    "PromptInterrupted", "PromptValidationError", "ServerError", "ServerUnreachable", "UsageError", "WorkflowError",
    "ProgressPrinter", "DEFAULT_SERVER", "Client", "RunResult", "parse_server", "apply_overrides", "check_graph",
    "load_workflow", "parse_override", "resolve_node", "set_seed", "build_parser", "main",
]
