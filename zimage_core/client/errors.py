"""The client's errors and the command line's exit codes (one per error kind)."""
from __future__ import annotations

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

