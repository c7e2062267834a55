"""Our DiT as a ComfyUI MODEL (imported only by host.py, and only inside ComfyUI).

The MODEL is a `comfy.model_patcher.ModelPatcher` over a `comfy.model_base.Lumina2` built from ComfyUI's
Z-Image model config (Flux latent format, flow/CONST sampling with shift 3), whose `diffusion_model` is a
`NextDiTAdapter`: it takes NextDiT's forward signature and runs our `ZImageDiT`. The adapter registers
the DiT's own submodules and parameters under the same names, so the state-dict keys are NextDiT's
("diffusion_model.layers.0.attention.qkv.weight") and ComfyUI's LoRA key map, weight patches and device
moves act on the very tensors our DiT computes with.

There is one ModelPatcher per loaded DiT; every conversion returns a clone of it, so ComfyUI knows they
share weights (its own weight patches, e.g. from LoraLoaderModelOnly, are applied and restored per clone).
Our runtime patches travel in the clone's transformer_options (`PATCHED_KEY`). Per call the adapter
installs those patches (LoRA, adaLN, ...),
works out the step from ComfyUI's `transformer_options` (sample_sigmas, sigmas) for step-dependent
controls (a ControlNet attached by ZImageControlNetApply acts here as in our sampler), and forwards
ComfyUI's Lumina2 block patches ('noise_refiner', 'double_block') through the DiT's block hook with the
dictionary NextDiT passes: the same keys, NextDiT's rotary layout for 'pe' (`native_pe`) and its refined
caption as 'txt' at the noise_refiner (ComfyUI's ZImageFunControlnet patch runs its branch on these).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref

import comfy.model_base  # type: ignore
import comfy.model_management  # type: ignore
import comfy.model_patcher  # type: ignore
import comfy.patcher_extension  # type: ignore
import comfy.supported_models  # type: ignore
import comfy.utils  # type: ignore
import torch
import torch.nn as nn
from comfy.weight_adapter.lora import LoraDiff  # type: ignore

from ..zimage_core.adapters.nag import NAGGuidance
from ..zimage_core.adapters.patching import PatchedDiT
from ..zimage_core.errors import InputError
from ..zimage_core.model.rope import ImagePositions
from ..zimage_core.weights.ops import HostCast, cast_workspace

# Lumina2 block patch points our DiT honours (comfy/ldm/lumina/model.py calls them after each block).
SUPPORTED_PATCHES = ("noise_refiner", "double_block")
# Patch points that native NextDiT never calls (so on ComfyUI's own Z-Image they do nothing): the nodes of ComfyUI
# that set them, named in our refusal. 'attn1_output_patch' of NAGuidance is honoured through our NAG.
FOREIGN_PATCHES = {
    "attn1_patch": "HyperTile, TomePatchModel, HypernetworkLoader (UNet attention patches)",
    "attn1_output_patch": "HyperTile, TomePatchModel (UNet attention patches)",
    "attn2_patch": "HypernetworkLoader (UNet cross-attention patches)",
    "attn2_output_patch": "UNet cross-attention patches",
    "input_block_patch": "PatchModelAddDownscale (Kohya Deep Shrink; UNet only)",
    "input_block_patch_after_skip": "PatchModelAddDownscale (Kohya Deep Shrink; UNet only)",
    "output_block_patch": "FreeU, FreeU_V2, PatchModelAddDownscale (UNet only)",
    "middle_patch": "UNet middle-block patches",
    "post_input": "USOStyleReference and Flux input patches",
}
REPLACE_NODES = {
    "attn1": "SelfAttentionGuidance, PerturbedAttentionGuidance (UNet attention replacements)",
    "attn2": "UNet cross-attention replacements",
    "dit": "SkipLayerGuidanceDiT (its block replacements are for double/single-stream DiTs such as Flux and SD3)",
}
PATCHED_KEY = "zimage_patched_dit"  # transformer_options entry: the PatchedDiT whose runtime patches apply
NAG_NEGATIVE_KEY = "zimage_cfg_negative"  # transformer_options entry: the CFG negative's features, for NAGuidance
_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ZImageDiT -> its ModelPatcher
_warned: set = set()
_rank_checked: weakref.WeakSet = weakref.WeakSet()  # TrainLoraNode's LoRA adapters already looked at


def _step_of(transformer_options: dict) -> tuple[int, float | None, int]:
    """(step index, sigma, number of steps) of the current call, from ComfyUI's transformer_options."""
    sigma = transformer_options.get("sigmas")
    sigmas = transformer_options.get("sample_sigmas")
    if sigma is None:
        return 0, None, 1
    s = float(sigma.detach().reshape(-1)[0])  # detached: TrainLoraNode passes sigmas that require grad
    if sigmas is None or len(sigmas) < 2:
        return 0, s, 1
    grid = sigmas[:-1].float().cpu()
    return int((grid - s).abs().argmin()), s, len(grid)


def _cond_rows(cond_or_uncond, batch: int) -> list[int] | None:
    """The rows of ComfyUI's batch that belong to positive conditioning (chunks of equal size, in the order of
    transformer_options['cond_or_uncond'], 0 = positive), or None when all of them do."""
    if not cond_or_uncond or batch % len(cond_or_uncond):
        return None
    per = batch // len(cond_or_uncond)
    rows = [i * per + j for i, c in enumerate(cond_or_uncond) if c == 0 for j in range(per)]
    return None if len(rows) == batch else rows


def _positions(transformer_options: dict) -> ImagePositions:
    """ComfyUI's `rope_options` (ScaleROPE) as our image positions: native NextDiT reads scale/shift of x and y
    (pos_ids_x); like it, the t axis stays (an image is one frame), which we say in the log."""
    ro = transformer_options.get("rope_options")
    if not ro:
        return ImagePositions()
    if (ro.get("scale_t", 1.0), ro.get("shift_t", 0.0)) != (1.0, 0.0) and "rope_t" not in _warned:
        _warned.add("rope_t")
        logging.warning("Z-Image MODEL: ScaleROPE's scale_t / shift_t do not apply to Z-Image (one frame; ComfyUI's "
                        "own NextDiT ignores them too); scale/shift x and y do.")
    return ImagePositions(float(ro.get("scale_y", 1.0)), float(ro.get("shift_y", 0.0)),
                          float(ro.get("scale_x", 1.0)), float(ro.get("shift_x", 0.0)))


@contextlib.contextmanager
def _computing_in(dit, dtype: torch.dtype):
    """The DiT computes in `dtype` for the duration (its runtime patches are installed inside, so they follow)."""
    saved, dit.compute_dtype = dit.compute_dtype, dtype
    try:
        yield
    finally:
        dit.compute_dtype = saved


def _nag_guidance_params(fn) -> tuple[float, float, float] | None:
    """(nag_scale, nag_alpha, nag_tau) of ComfyUI's NAGuidance patch function (comfy_extras/nodes_nag.py), read from
    its closure, or None for any other attn1_output_patch."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_name != "nag_attention_output_patch" or not fn.__closure__:
        return None
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__)))
    try:
        return float(cells["nag_scale"]), float(cells["nag_alpha"]), float(cells["nag_tau"])
    except (KeyError, TypeError, ValueError):
        return None


def _nag_guidance_of(transformer_options: dict) -> tuple[float, float, float] | None:
    """NAGuidance's parameters when its patch (and no other attn1_output_patch) is set."""
    found = [_nag_guidance_params(p) for p in transformer_options.get("patches", {}).get("attn1_output_patch", [])]
    return found[0] if len(found) == 1 else None


def _cfg_negative_for_nag(executor, model, conds, x_in, timestep, model_options):
    """CALC_COND_BATCH wrapper on our MODEL: with NAGuidance set, the CFG negative's caption features go to the
    forward in transformer_options. ComfyUI's Lumina2 conditioning carries num_tokens as a constant, so a positive
    and a negative of different token counts never share a model call: the positive's call needs them from here."""
    to = model_options.get("transformer_options", {})
    if _nag_guidance_of(to) is not None and len(conds) > 1 and conds[1]:
        c = conds[1][0].get("model_conds", {}).get("c_crossattn")
        if c is not None:
            model_options = {**model_options, "transformer_options": {**to, NAG_NEGATIVE_KEY: c.cond}}
    return executor(model, conds, x_in, timestep, model_options)


def _training_lora(m: nn.Module):
    """The LoRA adapter TrainLoraNode trains on layer `m` (a weight wrapper, or in bypass mode the forward hook
    that replaced the layer's forward), or None."""
    for f in getattr(m, "weight_function", ()) or ():
        if isinstance(f, LoraDiff):
            return f
    adapter = getattr(getattr(m.__dict__.get("forward"), "__self__", None), "adapter", None)
    return adapter if isinstance(adapter, LoraDiff) else None


def _warn_rank_over_layer_size(model: nn.Module) -> None:
    """Once per training (the first forward that sees its adapters): one warning when TrainLoraNode's LoRA rank is
    larger than what some layers can use. A rank-r LoRA of a layer with n inputs and m outputs changes it in at
    most min(n, m) directions; native trains such a LoRA as it is and so do we (the same LoRA), but a user who
    picked the rank for capacity should know."""
    first = next((a for a in map(_training_lora, model.modules()) if a is not None), None)
    if first is None or first in _rank_checked:
        return
    small, total, rank = [], 0, first.rank
    for name, m in model.named_modules():
        adapter = _training_lora(m)
        if adapter is None:
            continue
        _rank_checked.add(adapter)
        total += 1
        out_dim, in_dim = adapter.lora_up.weight.shape[0], adapter.lora_down.weight.shape[1]
        if adapter.rank > min(out_dim, in_dim):
            small.append((min(out_dim, in_dim), name, in_dim, out_dim))
    if not small:
        return
    small.sort()
    shown = ", ".join(f"{name} ({i} -> {o})" for _, name, i, o in small[:4])
    more = f" and {len(small) - 4} more" if len(small) > 4 else ""
    logging.warning(
        "Z-Image MODEL: TrainLoraNode's LoRA rank %d is larger than %d of the %d layers it trains can use: %s%s. A "
        "LoRA of rank r on a layer with n inputs and m outputs changes it in at most min(n, m) directions, so the "
        "rank above that adds parameters, memory and time there but no capacity. Training goes on as on ComfyUI's "
        "own Z-Image model (the same LoRA); rank %d or less fits every layer.",
        rank, len(small), total, shown, more, small[0][0])


def _check_patches(transformer_options: dict):
    """The NAGuidance parameters when that node's patch is set, after refusing every patch our DiT cannot honour
    (native NextDiT would skip them without a word)."""
    patches = transformer_options.get("patches", {})
    nag = _nag_guidance_of(transformer_options)
    unknown = sorted(k for k, v in patches.items() if v and k not in SUPPORTED_PATCHES
                     and not (k == "attn1_output_patch" and nag is not None))
    replace = sorted(k for k, v in transformer_options.get("patches_replace", {}).items() if v)
    if unknown or replace:
        named = [f"'{k}' (set by {FOREIGN_PATCHES.get(k, 'another node or pack')})" for k in unknown]
        named += [f"patches_replace '{k}' (set by {REPLACE_NODES.get(k, 'another node or pack')})" for k in replace]
        raise InputError(
            f"Z-Image MODEL: model patches {', '.join(named)} cannot act on a Z-Image DiT (ComfyUI's own Z-Image "
            f"model skips them too, without a word). Supported: the block patches {', '.join(SUPPORTED_PATCHES)} "
            f"(e.g. ZImageFunControlnet), DIFFUSION_MODEL wrappers (EasyCache), rope_options (ScaleROPE), attention "
            f"overrides, NAGuidance (through ZImageNAGModel's guidance). Remove that node from the graph.")
    return nag


class NextDiTAdapter(nn.Module):
    """NextDiT's forward(x, timesteps, context, num_tokens, attention_mask, transformer_options) over our DiT,
    honouring what native NextDiT honours in `transformer_options`: DIFFUSION_MODEL wrappers around the forward
    (EasyCache and other packs' caches), `rope_options` (ScaleROPE), `optimized_attention_override` (attention
    patch nodes; with `block_index` / `block_type` / `total_blocks` set as native sets them), the Lumina2 block
    patches 'noise_refiner' / 'double_block'; plus NAGuidance's 'attn1_output_patch', which native skips."""

    def __init__(self, dit):
        super().__init__()
        for name, child in dit.named_children():
            self.add_module(name, child)
        for name, p in dit.named_parameters(recurse=False):
            self.register_parameter(name, p)
        object.__setattr__(self, "dit", dit)  # not a submodule: its children are ours already
        self.dtype = dit.compute_dtype

    def forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs):
        # as NextDiT.forward: the wrappers get (x, timesteps, context, num_tokens, attention_mask, **kwargs)
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            kwargs.get("transformer_options", {}))
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, context, num_tokens, attention_mask, **kwargs)

    def _forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, transformer_options={},
                 **kwargs):
        dit = self.dit
        patched = transformer_options.get(PATCHED_KEY) or PatchedDiT(dit)
        if getattr(comfy.model_management, "in_training", False) and torch.is_grad_enabled():
            _warn_rank_over_layer_size(self)
        for key in ("ref_latents", "siglip_feats"):
            if kwargs.get(key):
                raise InputError(f"Z-Image MODEL: '{key}' (Z-Image Omni / edit conditioning) is not supported by "
                                 f"this pack's DiT.")
        nag_guidance = _check_patches(transformer_options)
        patches = transformer_options.get("patches", {})
        step, sigma, n_steps = _step_of(transformer_options)
        attention = self._attention(transformer_options)
        # native: t = 1 - timesteps (timesteps = sigma for Z-Image's CONST sampling), output -(x0 - noise)
        t = 1.0 - timesteps.float()
        # ComfyUI hands x over in the model's inference dtype (ModelComputeDtype changes it): compute in it
        dtype = x.dtype if x.dtype.is_floating_point else dit.compute_dtype
        with _computing_in(dit, dtype), patched.applied(), cast_workspace():  # one cast buffer for the call
            controls = patched.step_controls(step, sigma if sigma is not None else float(timesteps[0]), n_steps)
            rows = _cond_rows(transformer_options.get("cond_or_uncond"), x.shape[0]) if "nag" in controls else None
            if rows is not None:  # NAG steers the positive prediction only (None: every row is positive)
                if rows:
                    controls["nag"] = controls["nag"].only(rows)
                else:  # a batch of CFG negatives only
                    del controls["nag"]
            # NextDiT uses every row of the context; computed where ComfyUI put the input (a partial load may
            # leave any layer on the offload device)
            ctx = dit.encode_context(list(context.unbind(0)), x.device, attention)
            if nag_guidance is not None:
                nag = self._nag_guidance(nag_guidance, transformer_options, x, attention)
                if nag is not None:
                    if "nag" in controls:
                        raise InputError("Z-Image MODEL: NAGuidance and ZImageNAGModel are both set on this MODEL; "
                                         "use one of them.")
                    controls["nag"] = nag
            transform = controls.pop("context", None)
            if transform is not None:
                ctx = transform(ctx)
            hook = self._block_hook(patches, x, transformer_options, ctx)
            out = dit(x, t, ctx, block_hook=hook, device=x.device, positions=_positions(transformer_options),
                      attention=attention, **controls)
        # what native's loop leaves behind, for wrappers that read it after the call
        transformer_options.update(total_blocks=len(self.layers), block_type="double", block_index=len(self.layers) - 1)
        return -out.to(x.dtype)

    def _attention(self, transformer_options: dict):
        """With an `optimized_attention_override` set: our blocks' attention goes through ComfyUI's
        optimized_attention_masked with the call native JointAttention makes, so the override sees the same
        arguments (q, k, v [B, H, S, Dh], heads, mask, skip_reshape=True, transformer_options). None otherwise."""
        if "optimized_attention_override" not in transformer_options:
            return None
        from comfy.ldm.modules.attention import optimized_attention_masked  # type: ignore

        heads, n_layers = self.dit.cfg.n_heads, len(self.layers)

        def attention_for(stage, index):
            def attention(q, k, v, mask):
                if stage == "layers":  # native sets these before each main layer only
                    transformer_options.update(total_blocks=n_layers, block_type="double", block_index=index)
                return optimized_attention_masked(q, k, v, heads, mask, skip_reshape=True,
                                                  transformer_options=transformer_options)
            return attention

        return attention_for

    def _nag_guidance(self, params, transformer_options: dict, x: torch.Tensor, attention):
        """ComfyUI's NAGuidance as our NAG: the positive rows of the call are guided away from the CFG negative
        (handed over by `_cfg_negative_for_nag`), with scale = nag_scale - 1 (NAGuidance writes the rule as
        nag_scale * Z+ - (nag_scale - 1) * Z-), tau and alpha as given: ZImageNAGModel with those settings and the
        sampler's negative. A call of CFG negatives only runs plain, as under NAGuidance."""
        nag_scale, nag_alpha, nag_tau = params
        if nag_scale == 1.0 or nag_alpha == 0.0:
            return None
        rows = _cond_rows(transformer_options.get("cond_or_uncond"), x.shape[0])
        if rows == []:
            return None
        negative = transformer_options.get(NAG_NEGATIVE_KEY)
        if negative is None:
            raise InputError("Z-Image MODEL: NAGuidance needs the sampler's negative conditioning (KSampler or a CFG "
                             "guider); this sampler gives none. Use ZImageNAGModel with its own negative instead.")
        neg = self.dit.encode_context([negative[0]], x.device, attention)
        return NAGGuidance(neg, nag_scale - 1.0, nag_tau, nag_alpha, rows=rows)

    def _block_hook(self, patches: dict, x: torch.Tensor, transformer_options: dict, ctx):
        refiner, double = patches.get("noise_refiner", []), patches.get("double_block", [])
        if not refiner and not double:
            return None
        n_layers = len(self.layers)
        pes = {}
        txts = []

        def txt(dtype):  # NextDiT passes its refined caption as txt at the noise_refiner (padded once per call)
            if not txts:
                txts.append(nn.utils.rnn.pad_sequence([t.to(dtype) for t in ctx.tokens], batch_first=True))
            return txts[0]

        def pe(rot, n):  # NextDiT's rotary table for the first n tokens, computed once per stage
            key = (id(rot), n)
            if key not in pes:
                pes.clear()
                pes[key] = native_pe(rot[:, :n])
            return pes[key]

        def hook(stage, index, u, x_input, n_img, vec, rot):
            if stage == "noise_refiner":
                for p in refiner:
                    out = p({"img": u, "img_input": x_input, "txt": txt(u.dtype), "pe": pe(rot, u.shape[1]), "vec": vec,
                             "x": x, "block_index": index, "transformer_options": transformer_options,
                             "block_type": "noise_refiner"})
                    if "img" in out:
                        u = out["img"]
                return u
            transformer_options["total_blocks"] = n_layers
            transformer_options["block_type"] = "double"
            transformer_options["block_index"] = index
            for p in double:
                out = p({"img": u[:, :n_img], "img_input": x_input[:, :n_img], "txt": u[:, n_img:],
                         "pe": pe(rot, n_img), "vec": vec, "x": x, "block_index": index,
                         "transformer_options": transformer_options})
                if "img" in out:
                    u[:, :n_img] = out["img"]
                if "txt" in out:
                    u[:, n_img:] = out["txt"]
            return u

        return hook


def native_pe(rot: torch.Tensor) -> torch.Tensor:
    """Our rotary table [B, L, D/2, 2] of (cos, sin) -> NextDiT's `freqs_cis` [B, L, 1, D/2, 2, 2]: per pair
    the rotation matrix [[cos, -sin], [sin, cos]] (comfy.ldm.flux.math.rope's layout), float32."""
    c, s = rot[..., 0].float(), rot[..., 1].float()
    return torch.stack((c, -s, s, c), dim=-1).unflatten(-1, (2, 2)).unsqueeze(2)


@functools.cache
def _keywords(func) -> frozenset | None:
    """The parameter names a function takes, or None when it takes any keyword (**kwargs)."""
    params = inspect.signature(func).parameters
    return None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else frozenset(params)


def _module_of(entry) -> nn.Module:
    """The module of one entry of ModelPatcher._load_list (a tuple whose layout differs between versions)."""
    return next(e for e in entry if isinstance(e, nn.Module))


def _one_per_key(functions) -> list:
    """Patch functions without a second one for the same weight key (functions without a key are kept)."""
    out, keys = [], set()
    for f in functions:
        key = getattr(f, "key", None)
        if key is None or key not in keys:
            out.append(f)
            keys.add(key)
    return out


class ZImageModelPatcher(comfy.model_patcher.ModelPatcher):
    """ComfyUI's ModelPatcher for this pack's DiT (clones keep the class). Two things differ from the base class:

    - A weight patch (LoraLoaderModelOnly, ...) on a layer whose stored tensor cannot take it in place is applied
      on the fly, the way ComfyUI applies patches to the layers its lowvram mode leaves on the CPU: through the
      layer's `weight_function` / `bias_function` (ops.HostCast). Such layers: GGUF blocks, scaled fp8 and
      comfy_quant weights (the patch belongs to the dequantized weight), and the blocks that block streaming
      copies in for each step.
    - With block streaming (a memory preset of ZImageDiTLoader), ComfyUI loads, moves and counts only the
      resident part (the ModelPatcher's size excludes the streamed blocks); the streamed blocks stay with the
      streamer, which brings them to the GPU one at a time during each forward.
    Layers of plain float weights outside streamed blocks are patched in place as ComfyUI does for its own.
    """

    def _streamer(self):
        return getattr(self.model.diffusion_model.dit, "block_streamer", None)

    def _streamed(self, m) -> bool:
        streamer = self._streamer()
        return streamer is not None and streamer.streams(m)

    def _layer(self, key: str):
        """(our layer, parameter name) of a state-dict key, or (None, name) for anything else."""
        path, _, name = key.rpartition(".")
        try:
            m = comfy.utils.get_attr(self.model, path)
        except AttributeError:
            return None, name
        return (m if isinstance(m, HostCast) and name in ("weight", "bias") else None), name

    def _on_the_fly(self, m) -> bool:
        return getattr(m, "quant", None) is not None or getattr(m, "scale_weight", None) is not None or self._streamed(m)

    def _super_call(self, name: str, *args, **kwargs):
        """The base class's method `name` with the keyword arguments it takes: our overrides accept the call forms
        of ComfyUI 0.18.1 up to 0.38.x (e.g. 0.38's `patch_weight_to_device(..., force_cast=True)`) and forward
        what the running host's ModelPatcher understands (a keyword it lacks is one it never passes itself)."""
        method = getattr(super(), name)
        accepted = _keywords(method.__func__)
        if accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        return method(*args, **kwargs)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False, **kwargs):
        m, name = self._layer(key)
        if key not in self.patches or m is None or not self._on_the_fly(m):
            return self._super_call("patch_weight_to_device", key, device_to=device_to, inplace_update=inplace_update,
                                    return_weight=return_weight, **kwargs)
        patch = comfy.model_patcher.LowVramPatch(key, self.patches)
        if return_weight:  # the patched weight itself, in the compute dtype (a packed form cannot hold it)
            w = m.compute_weight(torch.float32, device_to) if name == "weight" else m.bias.to(device_to, torch.float32)
            return patch(w.clone())
        attr = name + "_function"
        setattr(m, attr, [f for f in getattr(m, attr) if getattr(f, "key", None) != key] + [patch])
        return getattr(m, name)

    def memory_required(self, input_shape, **kwargs):
        """ComfyUI's estimate for the activations, plus the streamer's two device slots when blocks stream."""
        streamer = self._streamer()
        return self._super_call("memory_required", input_shape, **kwargs) + (
            2 * streamer.slot_bytes if streamer is not None else 0)

    def _load_list(self, *args, **kwargs):
        entries = self._super_call("_load_list", *args, **kwargs)
        return [e for e in entries if not self._streamed(_module_of(e))] if self._streamer() else entries

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kwargs):
        streaming = self._streamer() is not None
        if streaming and full_load:  # a full load moves the whole module tree: load every resident layer instead
            full_load, lowvram_model_memory = False, 1e32
        out = self._super_call("load", device_to, lowvram_model_memory=lowvram_model_memory,
                               force_patch_weights=force_patch_weights, full_load=full_load, **kwargs)
        if streaming:  # streamed layers are not in the load list: their patches go on here
            for key in self.patches:
                m, _ = self._layer(key)
                if m is not None and self._streamed(m):
                    self.patch_weight_to_device(key, device_to)
        return out

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False, **kwargs):
        freed = self._super_call("partially_unload", device_to, memory_to_free=memory_to_free,
                                 force_patch_weights=force_patch_weights, **kwargs)
        for m in self.model.modules():  # ComfyUI adds its own copy of a patch we apply on the fly already
            if isinstance(m, HostCast):
                m.weight_function, m.bias_function = _one_per_key(m.weight_function), _one_per_key(m.bias_function)
        return freed

    def unpatch_model(self, device_to=None, unpatch_weights=True, **kwargs):
        if unpatch_weights:
            for m in self.model.modules():
                if isinstance(m, HostCast) and (m.weight_function or m.bias_function):
                    m.weight_function, m.bias_function = [], []
        return self._super_call("unpatch_model", device_to=device_to, unpatch_weights=unpatch_weights, **kwargs)


def model_config(dit):
    """ComfyUI's Z-Image model config for this DiT (no NextDiT is built: the adapter is the diffusion model)."""
    cfg = dit.cfg
    unet_config = {"image_model": "lumina2", "dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                   "in_channels": cfg.in_channels, "cap_feat_dim": cfg.cap_feat_dim, "z_image_modulation": True,
                   "n_refiner_layers": cfg.n_refiner_layers,
                   "disable_unet_model_creation": True}
    mc = comfy.supported_models.ZImage(unet_config)
    mc.set_inference_dtype(dit.compute_dtype, None)
    return mc


def as_model(patched: PatchedDiT, load_device: torch.device, offload_device: torch.device):
    """A ComfyUI MODEL (a clone of the DiT's one ModelPatcher) running `patched`'s runtime patches."""
    dit = patched.dit
    root = _PATCHERS.get(dit)
    if root is None:
        base = comfy.model_base.Lumina2(model_config(dit), device=offload_device)
        base.diffusion_model = NextDiTAdapter(dit)
        base.eval()
        streamer = getattr(dit, "block_streamer", None)
        size = comfy.model_management.module_size(base) - (streamer.streamed_bytes() if streamer else 0)
        root = ZImageModelPatcher(base, load_device=load_device, offload_device=offload_device, size=size)
        root.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "zimage_nag_guidance",
                                  _cfg_negative_for_nag)
        _PATCHERS[dit] = root
    model = root.clone()
    model.model_options = dict(model.model_options)
    model.model_options["transformer_options"] = {**model.model_options.get("transformer_options", {}),
                                                  PATCHED_KEY: patched}
    # models our patches bring (a ControlNet's ModelPatcher): ComfyUI loads them with this MODEL for sampling
    extra = [h for h in patched.hosts() if h is not patched.host and isinstance(h, comfy.model_patcher.ModelPatcher)]
    if extra:
        model.set_additional_models("zimage_patches", extra)
    return model


def release(dit) -> None:
    """Unload ComfyUI's loaded clones of this DiT's MODEL. While a clone that carries weight patches (e.g. from
    LoraLoaderModelOnly) is loaded, ComfyUI keeps them applied to the shared tensors; ZImageSampler, which runs
    the same module, must see the weights as loaded (its own LoRAs are runtime patches)."""
    root = _PATCHERS.get(dit)
    if root is None:
        return
    loaded = comfy.model_management.current_loaded_models
    for lm in list(loaded):
        if lm.model is not None and lm.model.is_clone(root):
            lm.model_unload()
            loaded.remove(lm)


def patched_of(model) -> PatchedDiT | None:
    """The PatchedDiT a MODEL made by `as_model` runs (also after ComfyUI clones it: ModelSamplingAuraFlow,
    LoraLoaderModelOnly, ...), or None for any other MODEL."""
    inner = getattr(model, "model", None)
    if not isinstance(getattr(inner, "diffusion_model", None), NextDiTAdapter):
        return None
    patched = getattr(model, "model_options", {}).get("transformer_options", {}).get(PATCHED_KEY)
    return patched if isinstance(patched, PatchedDiT) else None


def with_patched(model, patched: PatchedDiT):
    """A clone of our MODEL (keeping ComfyUI's own weight and model patches) that runs `patched` instead."""
    out = model.clone()
    out.model_options["transformer_options"] = {**out.model_options.get("transformer_options", {}),
                                                PATCHED_KEY: patched}
    return out


def describe(model) -> str:
    """What a MODEL that is not ours is, for error messages."""
    inner = getattr(model, "model", None)
    if inner is None:
        return f"a {type(model).__name__}, not a ComfyUI MODEL"
    family = type(inner).__name__
    if isinstance(inner, comfy.model_base.Lumina2):
        return (f"ComfyUI's native {family} (Z-Image / Lumina 2) MODEL, e.g. from UNETLoader; this node patches this "
                f"pack's DiT: load it with ZImageDiTLoader and turn it into a MODEL with ZImageDiTToModel")
    return f"a {family} MODEL (another model family), not a Z-Image DiT"
