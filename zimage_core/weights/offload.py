"""Block offloading: keep some transformer blocks on the compute device and stream the rest.

The 6B DiT is 34 transformer blocks (2 context refiner, 2 noise refiner, 30 main layers) of ~181M
parameters each, plus small embedders. With block offloading the embedders and the first `keep` blocks
stay on the device; every other block's weights live in (pinned) CPU memory and are copied into one of
two device "slots" just before the block runs. The copy of the next block runs on a side CUDA stream
while the current block computes, so the transfer overlaps with the compute.

The module tree is never changed: a streamed block's parameters point at its CPU copy between runs and
at a slot during its own forward (forward pre/post hooks swap `param.data`). LoRA patches, adaLN hooks
and everything else that looks at the modules keep working unchanged.

Which blocks stay: the noise refiner and the first main layers (they run every step), the context
refiner last (it runs once per prompt).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn

from ..errors import InputError

GiB = 1 << 30
# Memory presets of the DiT loader: a GPU memory budget in GiB, or None ("auto": the device's total
# memory; "high": no offloading at all).
MEMORY_PRESETS: dict[str, float | None] = {"auto": None, "high": None, "12GB": 12, "8GB": 8, "6GB": 6}
# Kept free for activations (a 1024x1024 batch-1 step with flash attention needs well under 1 GiB at
# bf16), the CUDA context and allocator fragmentation.
RESERVE_BYTES = 2 * GiB
_ALIGN = 256  # byte alignment of each tensor inside a slot


def free_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on a device (a GPU: free + cached by torch; the CPU: the kernel's
    MemAvailable), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def blocks_by_priority(model) -> list[nn.Module]:
    """The transformer blocks, most worth keeping on the device first."""
    return [*model.noise_refiner, *model.layers, *model.context_refiner]


def check_memory_preset(preset: str) -> str:
    if preset not in MEMORY_PRESETS:
        raise InputError(f"memory preset '{preset}' is not one of {', '.join(MEMORY_PRESETS)}.")
    return preset


def blocks_to_keep(model, preset: str, total_memory: int | None) -> int | None:
    """How many blocks stay on the device for a memory preset; None = all (no offloading).

    total_memory: the device's memory in bytes (used by "auto"), or None when unknown / not a GPU.
    """
    check_memory_preset(preset)
    if preset == "high":
        return None
    budget = total_memory if preset == "auto" else MEMORY_PRESETS[preset] * GiB
    if budget is None:
        return None
    blocks = blocks_by_priority(model)
    block = max(module_bytes(b) for b in blocks)
    rest = module_bytes(model) - sum(module_bytes(b) for b in blocks)
    if rest + len(blocks) * block + RESERVE_BYTES <= budget:
        return None
    # the streamed blocks need two slots of their own
    return max(0, min(len(blocks), math.floor((budget - RESERVE_BYTES - rest - 2 * block) / block)))


class BlockStreamer:
    """Streams the blocks that are not kept on `device` (see the module docstring)."""

    def __init__(self, model, keep: int, device: torch.device | str):
        self.model = model
        self.device = torch.device(device)
        order = blocks_by_priority(model)
        self.kept = order[:keep]
        streamed = set(map(id, order[keep:]))
        # execution order: the context refiner (once per prompt), then noise refiner + layers every step
        self.sequence = [b for b in [*model.context_refiner, *model.noise_refiner, *model.layers] if id(b) in streamed]
        self._modules = {id(m) for b in self.sequence for m in b.modules()}  # the streamed blocks and their layers
        self.cuda = self.device.type == "cuda"
        pin = self.cuda and torch.cuda.is_available()
        self._host: dict[int, list[tuple[nn.Parameter, torch.Tensor]]] = {}
        self._layout: dict[int, list[int]] = {}  # byte offset of each parameter inside a slot
        slot_bytes = 0
        for b in self.sequence:
            pairs, offsets, off = [], [], 0
            for p in b.parameters():
                data = p.data.contiguous()
                p.data = data.pin_memory() if pin else data
                pairs.append((p, p.data))
                offsets.append(off)
                off += -(-p.numel() * p.element_size() // _ALIGN) * _ALIGN
            self._host[id(b)], self._layout[id(b)] = pairs, offsets
            slot_bytes = max(slot_bytes, off)
        self.slot_bytes = slot_bytes
        self._slots: list[torch.Tensor] | None = None
        self._owner: list[int | None] = [None, None]  # id of the block whose weights a slot holds
        self._active: int | None = None  # the slot in use by the running block
        self._next = {id(a): b for a, b in zip(self.sequence, self.sequence[1:])}
        if self.sequence:  # after the last layer comes the first streamed block of the next step
            first = next((b for b in self.sequence if b not in model.context_refiner), None)
            if first is not None:
                self._next[id(self.sequence[-1])] = first
        self._ready = self._free = None
        self._copy_stream = None
        if self.cuda:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._ready = [torch.cuda.Event(), torch.cuda.Event()]
            self._free = [torch.cuda.Event(), torch.cuda.Event()]
        self._handles = []
        for b in self.sequence:
            self._handles.append(b.register_forward_pre_hook(self._before))
            self._handles.append(b.register_forward_hook(self._after))
        self.fetches = 0  # transfers made (a test and benchmark counter)

    # -- the parts ComfyUI should manage (everything but the streamed blocks) ---------------------------
    def resident(self) -> nn.Module:
        """A module holding the embedders, final layer, pad tokens and kept blocks (shared parameters), for
        ComfyUI's ModelPatcher: moving it moves exactly what stays on the device."""
        m = self.model
        holder = nn.Module()
        holder.parts = nn.ModuleList([m.x_embedder, m.t_embedder, m.cap_embedder, m.final_layer, *self.kept])
        holder.tokens = nn.ParameterList([m.x_pad_token, m.cap_pad_token])
        return holder

    def streams(self, module: nn.Module) -> bool:
        """Whether `module` is (inside) a streamed block: its weights are copied to the device per forward."""
        return id(module) in self._modules

    def streamed_bytes(self) -> int:
        return sum(module_bytes(b) for b in self.sequence)

    # -- streaming ----------------------------------------------------------------------------------------
    def _views(self, slot: int, block: nn.Module) -> Iterator[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]:
        buf = self._slots[slot]
        for (p, host), off in zip(self._host[id(block)], self._layout[id(block)]):
            n = host.numel() * host.element_size()
            yield p, host, buf[off: off + n].view(host.dtype).view(host.shape)

    def _fetch(self, block: nn.Module) -> int:
        """Start copying `block` into the slot that is not in use; returns the slot."""
        if self._slots is None:
            self._slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)]
        slot = 1 - self._active if self._active is not None else (0 if self._owner[0] is None else 1)
        self._owner[slot] = id(block)
        self.fetches += 1
        if self.cuda:
            with torch.cuda.stream(self._copy_stream):
                self._copy_stream.wait_event(self._free[slot])  # the slot's previous block has finished
                for _, host, view in self._views(slot, block):
                    view.copy_(host, non_blocking=True)
                self._ready[slot].record(self._copy_stream)
        else:
            for _, host, view in self._views(slot, block):
                view.copy_(host)
        return slot

    def _before(self, block: nn.Module, args):
        slot = next((s for s in (0, 1) if self._owner[s] == id(block) and s != self._active), None)
        if slot is None:
            slot = self._fetch(block)
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self._ready[slot])
        for p, _, view in self._views(slot, block):
            p.data = view
        self._active = slot
        nxt = self._next.get(id(block))
        if nxt is not None and nxt is not block and self._owner[1 - slot] != id(nxt):
            self._fetch(nxt)

    def _after(self, block: nn.Module, args, output):
        for p, host in self._host[id(block)]:
            p.data = host
        if self.cuda:
            self._free[self._active].record(torch.cuda.current_stream(self.device))
        self._active = None

    def release(self) -> None:
        """Free the device slots (they are allocated again on the next run). Also after a run that failed
        inside a block: every streamed parameter points at its CPU copy again."""
        if self.cuda and self._slots is not None:
            self._copy_stream.synchronize()  # no prefetch may still be writing into a slot we give back
            torch.cuda.current_stream(self.device).synchronize()
        for pairs in self._host.values():
            for p, host in pairs:
                p.data = host
        self._slots, self._owner, self._active = None, [None, None], None

    def remove(self) -> None:
        """Stop streaming: hooks removed, slots freed (the weights stay in CPU memory)."""
        self.release()
        for h in self._handles:
            h.remove()
        self._handles = []


def enable_block_offload(model, keep: int, device: torch.device | str) -> BlockStreamer:
    """Keep `keep` blocks (and the small parts) on `device`, stream the others; returns the streamer,
    also stored as `model.block_streamer`."""
    old = getattr(model, "block_streamer", None)
    if old is not None:
        old.remove()
    n = len(blocks_by_priority(model))
    if not 0 <= keep <= n:
        raise InputError(f"blocks to keep on the device must be between 0 and {n} (got {keep}).")
    streamer = BlockStreamer(model, keep, device)
    model.block_streamer = streamer
    return streamer
