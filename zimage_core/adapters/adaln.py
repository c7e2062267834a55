"""adaLN conditioning controls: patches (see `patching`) that steer the timestep modulation of the DiT.

Every Z-Image block is modulated by a 256-wide timestep embedding c(t) (t = 1 - sigma, 0 = pure noise):
    mod = adaLN_modulation(c) = [scale_msa | gate_msa | scale_mlp | gate_mlp]   (gates pre-tanh)
    x += tanh(gate_msa) * norm(attn(norm(x) * (1 + scale_msa)));  same for the MLP.
The final layer is modulated by c too.

- `AdaLNDetail(amount, start, end)`: the adaLN path sees t' = t + amount * w(step) while the sample's
  noise level (and the Euler update) stays sigma. Sign: positive amount = larger t' = the model believes
  the image is cleaner than it is, removes less noise and keeps/adds fine detail (like "detail daemon"
  lowering sigma); negative smooths. t' is clamped to [0, 1]. w is a smooth window over the step
  progress p = step / (n_steps - 1) (0 = first step, 1 = last): 0 outside [start, end], rising with a
  smoothstep over the first fifth of the window to 1 and falling over the last fifth.
- `AdaLNScale(scale, gate, first_block, last_block, include_refiner)`: multiplies the scale chunks
  (scale_msa, scale_mlp; the block uses 1 + factor * scale) and/or the pre-tanh gate chunks of the main
  layers first_block..last_block (inclusive, -1 = the last) and optionally of the noise refiner blocks.
- `ConditioningVariance(strength, until, seed)`: for the steps with step / n_steps < until, the caption
  tokens the main layers attend to (the Context after the context refiner, padding rows included) get
  seeded Gaussian noise of strength * (per-caption RMS of the tokens); the negative prompt is untouched.
  The noisy context is computed once per sampling run (on the first noisy step, cached until the patch is
  uninstalled at the end of the run); the same seed gives the same noise.
- `combine_conditioning(a, b, mode)`: concatenate or average two caption feature tensors.

Neutral settings (amount 0, factors 1, strength 0) return {} from `step_controls`, so the forward is the
same call as without the patch (bit-identical output).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..model.transformer import Context


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def window_weight(p: float, start: float, end: float, ramp: float = 0.2) -> float:
    """Smooth 0..1 window over progress p: 0 outside [start, end], plateau 1 in the middle."""
    if end <= start or p <= start or p >= end:
        return 0.0
    u = (p - start) / (end - start)
    return _smoothstep(min(u, 1.0 - u) / ramp)


def _check01(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must be in 0..1 (a fraction of the sampling steps); got {v}.")
    return v


class AdaLNDetail:
    def __init__(self, amount: float, start: float = 0.2, end: float = 0.8):
        self.amount = float(amount)
        self.start, self.end = _check01("start", start), _check01("end", end)
        if self.end < self.start:
            raise InputError(f"end ({end}) must not be before start ({start}).")

    def __repr__(self) -> str:
        return f"AdaLNDetail(amount={self.amount}, start={self.start}, end={self.end})"

    def install(self, dit) -> None:
        pass

    def uninstall(self, dit) -> None:
        pass

    def offset(self, step: int, n_steps: int) -> float:
        p = step / max(n_steps - 1, 1)
        return self.amount * window_weight(p, self.start, self.end)

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        off = self.offset(step, n_steps)
        if off == 0.0:
            return {}
        t = float(torch.tensor(1.0, dtype=torch.float32) - torch.tensor(sigma, dtype=torch.float32))
        return {"adaln_t": min(max(t + off, 0.0), 1.0)}


class AdaLNScale:
    def __init__(self, scale: float = 1.0, gate: float = 1.0, first_block: int = 0, last_block: int = -1,
                 include_refiner: bool = False):
        self.scale, self.gate = float(scale), float(gate)
        self.first_block, self.last_block = int(first_block), int(last_block)
        self.include_refiner = bool(include_refiner)

    def __repr__(self) -> str:
        return (f"AdaLNScale(scale={self.scale}, gate={self.gate}, blocks={self.first_block}..{self.last_block}, "
                f"refiner={self.include_refiner})")

    def install(self, dit) -> None:
        n = dit.cfg.n_layers
        last = self.last_block if self.last_block >= 0 else n + self.last_block
        if not (0 <= self.first_block < n) or not (0 <= last < n):
            raise InputError(f"block range {self.first_block}..{self.last_block} is outside this DiT's "
                             f"{n} layers (0..{n - 1}; -1 = the last).")
        self._n_layers = n

    def uninstall(self, dit) -> None:
        pass

    def applies(self, stage: str, index: int, n_layers: int) -> bool:
        if stage == "noise_refiner":
            return self.include_refiner
        last = self.last_block if self.last_block >= 0 else n_layers + self.last_block
        return stage == "layers" and self.first_block <= index <= last

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        if self.scale == 1.0 and self.gate == 1.0:
            return {}
        n = getattr(self, "_n_layers", None)

        def mod_hook(stage, index, mod):
            if not self.applies(stage, index, n if n is not None else 10**9):
                return mod
            B = mod.shape[0]
            f = mod.new_tensor([self.scale, self.gate, self.scale, self.gate])[:, None]
            return (mod.view(B, 4, -1) * f).view(B, -1)

        return {"mod_hook": mod_hook}


class ConditioningVariance:
    def __init__(self, strength: float, until: float = 0.3, seed: int = 0):
        self.strength = float(strength)
        self.until = _check01("until", until)
        self.seed = int(seed)
        self._cache: tuple[Context, Context] | None = None

    def __repr__(self) -> str:
        return f"ConditioningVariance(strength={self.strength}, until={self.until}, seed={self.seed})"

    def install(self, dit) -> None:
        self._cache = None

    def uninstall(self, dit) -> None:
        self._cache = None

    def active(self, step: int, n_steps: int) -> bool:
        return self.strength != 0.0 and step / max(n_steps, 1) < self.until

    def noisy(self, context: Context) -> Context:
        """The context with this seed's noise (cached for the same Context object within a run)."""
        if self._cache is not None and self._cache[0] is context:
            return self._cache[1]
        g = torch.Generator("cpu").manual_seed(self.seed)
        tokens = []
        for tok in context.tokens:
            n = torch.randn(tok.shape, generator=g, dtype=torch.float32)
            rms = tok.float().pow(2).mean().sqrt()
            tokens.append((tok.float() + self.strength * rms * n.to(tok.device)).to(tok.dtype))
        out = Context(tokens, list(context.rot))
        self._cache = (context, out)
        return out

    def step_controls(self, step: int, sigma: float, n_steps: int) -> dict:
        if not self.active(step, n_steps):
            return {}
        return {"context": self.noisy}


def combine_conditioning(a: torch.Tensor, b: torch.Tensor, mode: str = "concat", weight: float = 0.5) -> torch.Tensor:
    """Two caption feature tensors [L, D] (or [1, L, D]) -> one.

    concat: [La + Lb, D], a then b (both prompts are read; the model sees one longer caption).
    average: weight * a + (1 - weight) * b over the first min(La, Lb) tokens; the longer one's remaining
    tokens are appended unchanged, so the result has max(La, Lb) tokens.
    """
    if a.shape[-1] != b.shape[-1] or a.ndim != b.ndim:
        raise InputError(f"cannot combine conditionings of shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                         "both must come from the same text encoder.")
    b = b.to(device=a.device, dtype=a.dtype)
    if mode == "concat":
        return torch.cat([a, b], dim=-2)
    if mode == "average":
        n = min(a.shape[-2], b.shape[-2])
        mixed = weight * a[..., :n, :] + (1.0 - weight) * b[..., :n, :]
        rest = a[..., n:, :] if a.shape[-2] > n else b[..., n:, :]
        return torch.cat([mixed, rest], dim=-2)
    raise InputError(f"mode must be 'concat' or 'average', not '{mode}'.")
