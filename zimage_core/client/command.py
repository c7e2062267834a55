"""The command line: ``python -m zimage_core.client run WORKFLOW [--set ...] [--seed] [--out] [--workers]``."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ClientError,
    PromptExecutionError,
    UsageError,
)
from .progress import ProgressPrinter
from .transport import DEFAULT_SERVER, DEFAULT_TIMEOUT, Client
from .workflow import apply_overrides, load_workflow, set_seed


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m zimage_core.client"
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

