"""Full-size benchmark: native ComfyUI against our nodes on random weights in the released sizes and layouts.

    python -m zimage_core bench --full-size [--contenders ours,native-bf16,native-default] [--out FILE]
    python -m zimage_core bench --tiny ...          # the same machinery on tiny random models (seconds)

Files (written once, cached in ~/.cache/zimage-fullsize/<size>/, or --cache): the 6.15B DiT in ComfyUI's
names (bf16, ~12 GB; scaled fp8; GGUF Q8_0 / Q4_K), Qwen3-4B with 36 layers and a 151936 vocabulary (bf16
~8 GB, scaled fp8, GGUF Q8_0 / Q4_K with llama.cpp names) and the full-size Flux AE (ae.safetensors). Every
file is streamed to disk tensor by tensor (safetensors) or through a spilled temporary file (GGUF), so
writing them needs about 2 GB of memory, whatever the model size. Random weights: the pictures are noise,
but every contender computes the same noise from the same files.

Contenders, each a fresh ComfyUI server process (`main.py --cpu`, its own base directory, one graph):
  native-default  UNETLoader (weight_dtype default) + CLIPLoader (lumina2, ComfyUI's own Qwen tokenizer) +
                  VAELoader, ModelSamplingAuraFlow (shift 3), KSampler (res_multistep / simple, cfg 1),
                  VAEDecode
  native-bf16     the same with ComfyUI started with --bf16-unet
  ours[-FORMAT][@PRESET]  ZImageDiTLoader (memory preset PRESET, default auto) + ZImageTextEncoderLoader +
                  ZImageVAELoader, ZImageTextEncode, ZImageSampler (res_multistep / simple, shift 3),
                  ZImageVAEDecode; FORMAT: bf16 (default), fp8 (scaled fp8 DiT and TE), q8_0 / q4_k (GGUF DiT
                  and GGUF TE of that type)
Measured: wall time of the graph (queued to done) and of the whole process (start to done), per node and
per sampling step (websocket progress), peak RSS (the kernel's VmHWM) and peak anonymous RSS (RssAnon
sampled every 50 ms from /proc/<pid>/status; what cannot be dropped: file-backed pages of memory-mapped
weights can), with the largest anonymous RSS during each node, and the largest pixel difference of the
saved PNG to the reference contender (native-bf16 when it runs, else the first), and the major page
faults (weight pages read from disk again because the kernel had dropped them: memory pressure). `--max-anon-gb` kills a
contender whose anonymous memory passes the limit (on a shared machine). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .fullsize_files import (
    FILES,
    FORMATS,
    GIB,
    SAME_VALUES,
    SIZES,
    default_cache,
    ensure_files,
)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the pack (a checkout: __init__.py, nodes/, zimage_core/)
PACK_NAME = "zimage_nodes"
PROMPT = "a red fox sitting in the snow at sunrise, soft golden light, a wooden cabin in the background"

# ---------------------------------------------------------------------------------------------- contenders

@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "native" | "ours"
    fmt: str = "bf16"
    preset: str = "auto"
    flags: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return (f"dit_{self.fmt}", f"te_{self.fmt}", "vae")


def parse_contenders(text: str) -> list[Contender]:
    """'ours,ours-q8_0,ours@8GB,native-bf16,native-default' -> contenders (clear error for a wrong name)."""
    from ..errors import InputError
    from ..weights.offload import MEMORY_PRESETS

    out = []
    for raw in [c.strip() for c in text.split(",") if c.strip()]:
        name, _, preset = raw.partition("@")
        if name == "native-default":
            c = Contender(raw, "native")
        elif name == "native-bf16":
            c = Contender(raw, "native", flags=("--bf16-unet",))
        elif name == "ours" or (name.startswith("ours-") and name[5:] in FORMATS):
            c = Contender(raw, "ours", name[5:] or "bf16", preset or "auto")
        else:
            raise InputError(f"--contenders: '{raw}' is not a contender; expected native-default, native-bf16, "
                             f"ours or ours-<{'|'.join(FORMATS)}>, ours optionally with @<preset> "
                             f"({', '.join(MEMORY_PRESETS)}).")
        if preset and (c.kind == "native" or preset not in MEMORY_PRESETS):
            raise InputError(f"--contenders: '{raw}': a memory preset (one of {', '.join(MEMORY_PRESETS)}) applies "
                             "to ours only.")
        out.append(c)
    if not out:
        raise InputError("--contenders: no contender given.")
    return out


def graph(c: Contender, size: int, steps: int, seed: int = 42) -> dict:
    """The API-format graph of a contender (file names as in FILES)."""
    dit, te, vae = (FILES[k][1] for k in c.files)
    save = {"class_type": "SaveImage", "inputs": {"filename_prefix": c.name.replace("@", "_"), "images": ["8", 0]}}
    if c.kind == "native":
        return {
            "1": {"class_type": "UNETLoader", "inputs": {"unet_name": dit, "weight_dtype": "default"}},
            "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": te, "type": "lumina2", "device": "default"}},
            "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}},
            "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
            "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "10": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
            "7": {"class_type": "KSampler", "inputs": {
                "model": ["10", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
                "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple",
                "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
            "9": save,
        }
    return {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": dit, "weight_dtype": "auto", "memory": c.preset}},
        "2": {"class_type": "ZImageTextEncoderLoader", "inputs": {"text_encoder_name": te, "dtype": "auto",
                                                                  "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": vae}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "6": {"class_type": "ZImageEmptyLatent", "inputs": {"resolution": "custom", "width": size, "height": size,
                                                            "batch_size": 1}},
        "7": {"class_type": "ZImageSampler", "inputs": {
            "dit": ["1", 0], "positive": ["4", 0], "latent": ["6", 0], "seed": seed, "steps": steps, "cfg": 1.0,
            "shift": 3.0, "denoise": 1.0, "cfg_truncation": 1.0, "cfg_normalization": 0.0,
            "sampler_name": "res_multistep", "scheduler": "simple"}},
        "8": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["7", 0], "tiled": False}},
        "9": save,
    }


# ------------------------------------------------------------------------------------------------ memory

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes and its major page faults so far (pages read
    from disk: memory-mapped weights the kernel had dropped and had to read again), from Linux /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        out["majflt"] = int(f.read().rpartition(")")[2].split()[9])
    return out


class MemorySampler(threading.Thread):
    """Samples a process's /proc status every `interval` s; kills it (SIGKILL) once RssAnon passes `limit`
    bytes, recording that it did."""

    def __init__(self, pid: int, limit: int | None = None, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.limit, self.interval = pid, limit, interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RssAnon)
        self.peak = {"VmHWM": 0, "RssAnon": 0, "VmRSS": 0, "RssFile": 0, "majflt": 0}
        self.killed = False
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                s = proc_status(self.pid)
            except (OSError, ValueError):
                return  # the process is gone
            for k, v in s.items():
                self.peak[k] = max(self.peak[k], v)
            self.samples.append((time.monotonic(), s.get("RssAnon", 0)))
            if self.limit is not None and s.get("RssAnon", 0) > self.limit:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)

    def peak_between(self, t0: float, t1: float) -> int:
        return max((a for t, a in self.samples if t0 <= t <= t1), default=0)


class VramSampler(threading.Thread):
    """Samples a process's GPU memory (nvidia-smi --query-compute-apps, the CUDA context included) every
    `interval` s; `peak` in bytes, None when nvidia-smi is not there."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, None
        self._halt = threading.Event()

    def run(self):
        import shutil

        smi = shutil.which("nvidia-smi")
        if smi is None:
            return
        while not self._halt.is_set():
            try:
                out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            used = [int(m) * 2**20 for p, m in (ln.split(",") for ln in out.splitlines() if "," in ln)
                    if p.strip() == str(self.pid) and m.strip().isdigit()]
            if used:
                self.peak = max(self.peak or 0, *used)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=15)


# ------------------------------------------------------------------------------------------------ running

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_contender(c: Contender, files: dict[str, Path], comfyui: Path, size: int, steps: int, workdir: Path,
                  python: str = sys.executable, limit: int | None = None, timeout: float = 3600.0,
                  device: str = "cpu") -> dict:
    """One contender in a fresh ComfyUI process (`--cpu`, or ComfyUI's GPU for device "cuda"); the
    measurements (or {"error": ...})."""
    from ..client import Client, ClientError

    base = Path(tempfile.mkdtemp(prefix=f"{c.name.replace('@', '_')}-", dir=workdir))
    for sub in ("custom_nodes", "input", "output", "temp", "user", *(f"models/{d}" for d, _ in FILES.values())):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for key in c.files:
        folder, name = FILES[key]
        (base / "models" / folder / name).symlink_to(files[key])
    flags = ["--disable-all-custom-nodes"]
    if c.kind == "ours":
        (base / "custom_nodes" / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        flags += ["--whitelist-custom-nodes", PACK_NAME]
    port = _free_port()
    cmd = [python, "-u", str(comfyui / "main.py"), *(["--cpu"] if device == "cpu" else []), "--listen", "127.0.0.1",
           "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
           *flags, *c.flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    log = open(base / "comfyui.log", "wb")  # noqa: SIM115  (closed below, after the process)
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=comfyui, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    mem = MemorySampler(proc.pid, limit)
    mem.start()
    vram = VramSampler(proc.pid) if device != "cpu" else None
    if vram is not None:
        vram.start()
    events: list[tuple[float, dict]] = []
    client = Client(f"127.0.0.1:{port}", timeout=timeout)
    result: dict = {"contender": c.name, "command": " ".join(cmd[3:]), "log": str(base / "comfyui.log")}
    try:
        while True:  # server up?
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {proc.returncode} during start-up")
            try:
                client.queue()
                break
            except ClientError:
                time.sleep(0.5)
        t_ready = time.monotonic()
        run = client.run(graph(c, size, steps), out_dir=base / "images",
                         on_event=lambda m: events.append((time.monotonic(), m)))
        t_done = time.monotonic()
        result.update(startup_s=t_ready - t_start, graph_s=t_done - t_ready, process_s=t_done - t_start,
                      image=str(run.images[0]) if run.images else None)
        result.update(_timeline(events, graph(c, size, steps), mem, t_done))
    except Exception as e:  # a failed or killed contender is a row of the table, not the end of the run
        killed = mem.killed
        result["error"] = (f"killed: anonymous memory above the limit of {limit / GIB:.1f} GiB" if killed
                           else f"{type(e).__name__}: {e}")
        result["log_tail"] = (base / "comfyui.log").read_text(errors="replace")[-2000:]
    finally:
        mem.stop()
        if vram is not None:
            vram.stop()
        _stop(proc)
        log.close()
    result.update(peak_rss_gb=mem.peak["VmHWM"] / GIB, peak_anon_gb=mem.peak["RssAnon"] / GIB,
                  peak_file_gb=mem.peak["RssFile"] / GIB, major_faults=mem.peak["majflt"], device=device)
    if vram is not None:
        result["peak_vram_gb"] = vram.peak / GIB if vram.peak is not None else None
    return result


def _timeline(events: list[tuple[float, dict]], g: dict, mem: MemorySampler, t_done: float) -> dict:
    """Per-node seconds and peak anonymous GiB, the sampler's step times, from the websocket messages."""
    starts = [(t, m["data"]["node"]) for t, m in events if m.get("type") == "executing" and m["data"].get("node")]
    nodes = {}
    for i, (t, nid) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else t_done
        name = g.get(str(nid), {}).get("class_type", str(nid))
        nodes[name] = {"s": end - t, "peak_anon_gb": mem.peak_between(t, end) / GIB}
    sampler = next((nid for nid, n in g.items() if n["class_type"] in ("KSampler", "ZImageSampler")), None)
    t_sampler = next((t for t, nid in starts if str(nid) == sampler), None)
    ticks = [t for t, m in events if m.get("type") == "progress" and str(m["data"].get("node")) == sampler]
    out = {"nodes": nodes}
    if t_sampler is not None and ticks:
        steps = [b - a for a, b in zip([t_sampler, *ticks], ticks)]
        out.update(step_s=steps, first_step_s=steps[0],
                   later_step_s=statistics.median(steps[1:]) if len(steps) > 1 else None)
    return out


def max_pixel_difference(a: str, b: str) -> int:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"{a} is {x.shape}, {b} is {y.shape}")
    return int(np.abs(x - y).max())


def summarize(results: list[dict], files: dict[str, Path]) -> dict:
    """Ratios to the reference (native-bf16 if it ran, else the first that did) and the pixel differences."""
    ok = [r for r in results if "error" not in r and r.get("image")]
    ref = next((r for r in ok if r["contender"] == "native-bf16"), ok[0] if ok else None)
    for r in results:
        weights = sum(files[k].stat().st_size for k in r["files"]) / GIB
        r["weights_gb"] = weights
        r["peak_anon_over_weights"] = r["peak_anon_gb"] / weights
        if ref is None or r not in ok:
            continue
        r["reference"] = ref["contender"]
        if SAME_VALUES.get(r["fmt"], True) and SAME_VALUES.get(ref["fmt"], True):
            r["max_pixel_diff_255"] = max_pixel_difference(r["image"], ref["image"])
        r["peak_anon_vs_ref"] = r["peak_anon_gb"] / ref["peak_anon_gb"]
        r["peak_rss_vs_ref"] = r["peak_rss_gb"] / ref["peak_rss_gb"]
        r["graph_s_vs_ref"] = r["graph_s"] / ref["graph_s"]
        if r.get("later_step_s") and ref.get("later_step_s"):
            r["step_vs_ref"] = r["later_step_s"] / ref["later_step_s"]
    return {"reference": ref["contender"] if ref else None}


def machine() -> dict:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gb": mem / GIB, "torch": torch.__version__, "python": platform.python_version()}


def print_table(res: dict, out=sys.stdout) -> None:
    ref = res["summary"]["reference"]
    print(f"{'contender':18s} {'weights GB':>10s} {'graph s':>8s} {'process s':>9s} {'s/step':>7s} "
          f"{'peak RSS GB':>11s} {'peak anon GB':>12s} {'anon/weights':>12s} {'anon/ref':>8s} {'graph/ref':>9s} "
          f"{'pixel diff':>10s} {'VRAM GB':>7s} {'maj faults':>10s}", file=out)
    for r in res["results"]:
        if "error" in r:
            print(f"{r['contender']:18s} {r['weights_gb']:10.2f} error: {r['error'][:60]} (peak anon "
                  f"{r['peak_anon_gb']:.1f} GB)", file=out)
            continue

        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "-"
        diff = f"{r['max_pixel_diff_255']}/255" if "max_pixel_diff_255" in r else "-"
        print(f"{r['contender']:18s} {r['weights_gb']:10.2f} {r['graph_s']:8.1f} {r['process_s']:9.1f} "
              f"{f('later_step_s', '7.2f'):>7s} {r['peak_rss_gb']:11.2f} {r['peak_anon_gb']:12.2f} "
              f"{r['peak_anon_over_weights']:12.2f} {f('peak_anon_vs_ref', '8.2f'):>8s} "
              f"{f('graph_s_vs_ref', '9.2f'):>9s} {diff:>10s} {f('peak_vram_gb', '7.2f'):>7s} "
              f"{f('major_faults', '10d'):>10s}", file=out)
    m = res["machine"]
    print(f"reference: {ref}; {res['config']['size']}x{res['config']['size']}, {res['config']['steps']} steps; "
          f"{m['date_utc']} UTC, {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']:.0f} GiB", file=out)


def run(contenders: list[Contender], sizes_name: str, size: int, steps: int, cache: Path, comfyui: Path,
        limit_gb: float | None = None, workdir: Path | None = None, log=print, device: str = "cpu") -> dict:
    from ..errors import InputError

    if not (comfyui / "main.py").is_file():
        raise InputError(f"--comfyui {comfyui}: no ComfyUI there (main.py); set COMFYUI_PATH or pass --comfyui.")
    if any(c.kind == "ours" for c in contenders) and not (REPO_ROOT / "nodes").is_dir():
        raise InputError(f"the 'ours' contenders run this pack from its checkout; {REPO_ROOT} has no nodes/.")
    sizes = SIZES[sizes_name]
    root = cache / sizes_name
    files = ensure_files({k for c in contenders for k in c.files}, root, sizes, log)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="zimage-bench-full-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for c in contenders:
        log(f"running {c.name} ...")
        r = run_contender(c, files, comfyui, size, steps, workdir,
                          limit=int(limit_gb * GIB) if limit_gb else None, device=device)
        r["files"], r["fmt"], r["preset"] = list(c.files), c.fmt, c.preset
        log("  " + ("error: " + r["error"] if "error" in r else
                    f"graph {r['graph_s']:.1f} s, peak anon {r['peak_anon_gb']:.2f} GB, peak RSS {r['peak_rss_gb']:.2f} GB"))
        results.append(r)
    res = {"config": {"sizes": sizes_name, "size": size, "steps": steps, "comfyui": str(comfyui), "device": device,
                      "files": {k: {"path": str(p), "gb": p.stat().st_size / GIB} for k, p in files.items()},
                      "max_anon_gb": limit_gb},
           "machine": machine(), "results": results}
    res["summary"] = summarize(results, files)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--full-size", action="store_true", help="the released sizes (6.15B DiT, Qwen3-4B, Flux AE)")
    which.add_argument("--tiny", action="store_true", help="tiny random models: the same machinery in seconds")
    p.add_argument("--contenders", default="ours,native-bf16,native-default",
                   help="comma-separated: native-default, native-bf16, ours, ours-fp8, ours-q8_0, ours-q4_k, each "
                        "ours optionally @PRESET (a ZImageDiTLoader memory preset, e.g. ours@8GB)")
    p.add_argument("--size", type=int, default=256, help="image width and height")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cache", default=str(default_cache()), help="where the random model files are kept")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI folder (main.py)")
    p.add_argument("--max-anon-gb", type=float, default=None,
                   help="kill a contender whose anonymous memory passes this (protects a shared machine)")
    p.add_argument("--workdir", default=None, help="ComfyUI base folders, logs and pictures (default: a temp folder)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: ComfyUI with --cpu; cuda: ComfyUI on its GPU (peak VRAM sampled with nvidia-smi)")
    p.add_argument("--out", default="bench_full.json")


def main_args(a) -> int:
    res = run(parse_contenders(a.contenders), "full" if a.full_size else "tiny", a.size, a.steps, Path(a.cache),
              Path(a.comfyui), a.max_anon_gb, Path(a.workdir) if a.workdir else None,
              log=lambda s: print(s, file=sys.stderr, flush=True), device=a.device)
    print_table(res)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0 if all("error" not in r for r in res["results"]) else 1
