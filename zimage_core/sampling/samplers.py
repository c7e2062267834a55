"""k-diffusion style samplers for the flow-matching DiT, one function per method.

Each sampler takes a `denoise(x, sigma, step) -> x0` function (see `sampling.Denoiser`), the starting x
(already noised to sigmas[0]), the schedule and a `Noise` source, and returns x at sigmas[-1]. The flow model
is x_sigma = sigma * noise + (1 - sigma) * x0, so alpha_sigma = 1 - sigma and the half-log-SNR is
lambda = log((1 - sigma) / sigma). The update rules follow the papers as k-diffusion/ComfyUI state them for
such a model (their rectified-flow branches), so the same seed gives the same image as ComfyUI's KSampler:
stochastic samplers draw from `torch.randn` seeded like k-diffusion's default noise sampler (seed + 1 on the
CPU) or from a torchsde Brownian tree over [sigma_min, sigma_max] seeded with the seed.

All sigma arithmetic is on float32 0-dim tensors, like the schedules the samplers are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .schedules import shift_sigmas

# denoise(x, sigma, step) -> x0 estimate; `step` selects that step's controls.
Denoise = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# on_step(step, x_after_step, x0_estimate)
OnStep = Callable[[int, torch.Tensor, torch.Tensor], None]


class Noise:
    """The per-step noise of stochastic samplers for one seed.

    gaussian(): independent N(0, 1) draws from a generator on x's device seeded with `seed` (+ 1 on the CPU,
    k-diffusion's rule). brownian(s, s_next): the normalised increment of a torchsde Brownian tree spanning the
    schedule's nonzero sigmas (entropy = seed), so the same path is sampled whatever the step sizes.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seed: int | None):
        self.x, self.sigmas = x, sigmas
        self.seed = int(seed) if seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        self._generator = None
        self._tree = None

    def gaussian(self) -> torch.Tensor:
        if self._generator is None:
            x = self.x
            self._generator = torch.Generator(x.device).manual_seed(self.seed + (1 if x.device.type == "cpu" else 0))
        return torch.randn(self.x.shape, dtype=self.x.dtype, device=self.x.device, generator=self._generator)

    def brownian(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self._tree is None:
            import torchsde  # the Brownian-tree reference implementation (Li et al. 2020)

            lo = self.sigmas[self.sigmas > 0].min().detach().cpu()
            hi = self.sigmas.max().detach().cpu()
            self._tree = torchsde.BrownianTree(lo, torch.zeros_like(self.x, device="cpu"), hi, entropy=self.seed)
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi = (a, b) if a < b else (b, a)
        w = self._tree(lo.detach().cpu().float(), hi.detach().cpu().float())  # W(hi) - W(lo)
        if a > b:  # integrating towards lower noise walks the path backwards
            w = -w
        return w.to(self.x.device, self.x.dtype) / (b - a).abs().sqrt()


# ------------------------------------------------------------------------------------- flow-model helpers

def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = log((1 - sigma) / sigma)."""
    return sigma.logit().neg()


def sigma_of_half_log_snr(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().sigmoid()


def offset_first_sigma(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma = 1 has an infinite half-log-SNR: start at the sigma of time 1 - 1e-4 instead (shifted)."""
    if len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = float(shift_sigmas(torch.tensor(1.0 - 1e-4, dtype=torch.float64), shift))
    return sigmas


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    """(sigma_down, sigma_up) of a variance-exploding ancestral step (Karras et al. / k-diffusion)."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


def _d(x, sigma, x0):
    return (x - x0) / sigma


# ---------------------------------------------------------------------------------------------- samplers

def sample_euler(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i], i)
        x = x + _d(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
        on_step(i, x, x0)
    return x


def sample_euler_ancestral(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, eta: float = 1.0):
    """Euler steps to sigma_down, then re-noising to sigma_next in the flow parameterisation."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        if s_next == 0:
            x = x0
        else:
            s_down = s_next * (1 + (s_next / s - 1) * eta)
            a_next, a_down = 1 - s_next, 1 - s_down
            renoise = (s_next ** 2 - s_down ** 2 * a_next ** 2 / a_down ** 2) ** 0.5
            r = s_down / s
            x = r * x + (1 - r) * x0
            if eta > 0:
                x = (a_next / a_down) * x + noise.gaussian() * renoise
        on_step(i, x, x0)
    return x


def sample_heun(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1 without churn); Euler on the last step to 0."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        d = _d(x, s, x0)
        dt = s_next - s
        if s_next == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = _d(x2, s_next, denoise(x2, s_next, i))
            x = x + (d + d2) / 2 * dt
        on_step(i, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    """DPM-Solver++(2M) (Lu et al. 2022) in k-diffusion's t = -log(sigma) time."""
    old_x0 = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        t, t_next = s.log().neg(), s_next.log().neg()
        h = t_next - t
        if old_x0 is None or s_next == 0:
            x0_d = x0
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            x0_d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * x0_d
        old_x0 = x0
        on_step(i, x, x0)
    return x


def sample_dpmpp_2m_sde(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, shift: float = 3.0,
                        eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2M) SDE, midpoint variant, with Brownian-tree noise."""
    sigmas = offset_first_sigma(sigmas, shift)
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        h = None
        if s_next == 0:
            x = x0
        else:
            lam_s, lam_t = half_log_snr(s), half_log_snr(s_next)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = s_next * lam_t.exp()
            x = s_next / s * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * x0
            if old_x0 is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (x0 - old_x0)
            if eta > 0 and s_noise > 0:
                x = x + noise.brownian(s, s_next) * s_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_x0, h_last = x0, h
        on_step(i, x, x0)
    return x


def sample_dpmpp_sde(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, shift: float = 3.0,
                     eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
    """DPM-Solver++ (stochastic, 2 evaluations per step at lambda and lambda + r h), Brownian-tree noise."""
    sigmas = offset_first_sigma(sigmas, shift)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        if s_next == 0:
            x = x0
        else:
            lam_s, lam_t = half_log_snr(s), half_log_snr(s_next)
            h = lam_t - lam_s
            lam_mid = lam_s + r * h
            s_mid = sigma_of_half_log_snr(lam_mid)
            alpha_s, alpha_mid, alpha_t = s * lam_s.exp(), s_mid * lam_mid.exp(), s_next * lam_t.exp()
            # first stage: to the midpoint
            sd, su = ancestral_step(lam_s.neg().exp(), lam_mid.neg().exp(), eta)
            h_ = sd.log().neg() - lam_s
            x2 = (alpha_mid / alpha_s) * (-h_).exp() * x - alpha_mid * (-h_).expm1() * x0
            if eta > 0 and s_noise > 0:
                x2 = x2 + alpha_mid * noise.brownian(s, s_mid) * s_noise * su
            x0_2 = denoise(x2, s_mid, i)
            # second stage: the full step with the combined estimate
            sd, su = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
            h_ = sd.log().neg() - lam_s
            x0_d = (1 - fac) * x0 + fac * x0_2
            x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * x0_d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * noise.brownian(s, s_next) * s_noise * su
        on_step(i, x, x0)
    return x


def sample_res_multistep(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    """RES second-order multistep (Zhang et al. 2023, arXiv:2308.02157), deterministic."""
    old_x0 = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        if s_next == 0 or old_x0 is None:
            x = x + _d(x, s, x0) * (s_next - s)
        else:
            t, t_next, t_prev = s.log().neg(), s_next.log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = (-h).exp() * x + h * (b1 * x0 + b2 * old_x0)
        old_x0 = x0
        on_step(i, x, x0)
    return x


def sample_er_sde(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, shift: float = 3.0,
                  s_noise: float = 1.0, max_stage: int = 3):
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169)."""
    def scale(v):  # the paper's default noise scale function
        return v * ((v ** 0.3).exp() + 10.0)

    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma(sigmas, shift)
    er = half_log_snr(sigmas).neg().exp()  # sigma / alpha
    old_x0 = old_x0_d = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        stage = min(max_stage, i + 1)
        if s_next == 0:
            x = x0
        else:
            er_s, er_t = er[i], er[i + 1]
            alpha_s, alpha_t = s / er_s, s_next / er_t
            r = scale(er_t) / scale(er_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * x0
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / n_points
                pos = er_t + points * step
                scaled = scale(pos)
                x0_d = (x0 - old_x0) / (er_s - er[i - 1])
                x = x + alpha_t * (dt + torch.sum(1 / scaled) * step * scale(er_t)) * x0_d
                if stage >= 3:
                    s_u = torch.sum((pos - er_s) / scaled) * step
                    x0_u = (x0_d - old_x0_d) / ((er_s - er[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * scale(er_t)) * x0_u
                old_x0_d = x0_d
            if s_noise > 0:
                x = x + alpha_t * noise.gaussian() * s_noise * (er_t ** 2 - er_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_x0 = x0
        on_step(i, x, x0)
    return x


def sample_lcm(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    """Latent consistency sampling: jump to x0, re-noise with fresh noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i], i)
        x = x0
        if sigmas[i + 1] > 0:
            s = sigmas[i + 1]
            x = s * noise.gaussian() + (1.0 - s) * x0
        on_step(i, x, x0)
    return x


def deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list[list[float]]:
    """tAB-DEIS coefficients (Zhang & Chen 2022): integrals of the VP exponential-integrator weight times the
    Lagrange basis over the previous points, in the VP time of the EDM sigma (sigma_min 0.002, sigma_max 80,
    eps 1e-3), by an n-point rectangle rule."""
    sig = sigmas.double().cpu()
    eps, s_min, s_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(s_min ** 2 + 1) / eps - math.log(s_max ** 2 + 1)) / (eps - 1)
    beta_min = math.log(s_max ** 2 + 1) - 0.5 * beta_d
    t = ((beta_min ** 2 + 2 * beta_d * torch.log(sig ** 2 + 1)).sqrt() - beta_min) / beta_d
    coeffs = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), n, dtype=torch.float64)
        dtau = (t[i + 1] - t[i]) / n
        log_alpha_rate = taus * beta_d + beta_min  # -d log(alpha)/d tau, alpha = exp(-tau^2 beta_d/2 - tau beta_min)
        alpha = torch.exp(-0.5 * taus ** 2 * beta_d - taus * beta_min)
        weight = 0.5 * log_alpha_rate / torch.sqrt(alpha * (1 - alpha))
        prev = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - prev[k]) / (prev[j] - prev[k])
            row.append(float(torch.sum(weight * basis) * dtau))
        coeffs.append(row)
    return coeffs


def sample_deis(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, max_order: int = 3):
    """DEIS multistep (tAB, order 3) on the derivative d = (x - x0) / sigma."""
    coeffs = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []  # the previous derivatives, oldest first
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s, i)
        d = _d(x, s, x0)
        order = 1 if s_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (s_next - s) * d
        else:
            c = coeffs[i]
            x = x + c[0] * d + sum(c[k] * history[-k] for k in range(1, order))
        history = (history + [d])[-(max_order - 1):]
        on_step(i, x, x0)
    return x


def _unipc_step(model, x, ms, ts, t, order, corrector, variant):
    """One UniPC multistep update (Zhao et al. 2023, data prediction, B(h) variant) from ts[-1] to t.

    Time is the VE sigma seen as VP (alpha = 1/sqrt(1 + s^2), std = s/sqrt(1 + s^2), lambda = -log s);
    ms / ts: the previous data predictions and their times, newest last. Returns (x_t, prediction at x_t or None).
    """
    def log_alpha(s):
        return 0.5 * torch.log(1 / (s * s + 1))

    def std(s):
        return torch.sqrt(1.0 - torch.exp(2.0 * log_alpha(s)))

    def lam(s):
        la = log_alpha(s)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    t0, m0 = ts[-1], ms[-1]
    h = lam(t) - lam(t0)
    alpha_t = torch.exp(log_alpha(t))
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lam(ts[-(i + 1)]) - lam(t0)) / h
        rks.append(float(rk))
        d1s.append((ms[-(i + 1)] - m0) / rk)
    rks = torch.tensor(rks + [1.0])
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k, fact, rows, b = h_phi_1 / hh - 1, 1, [], []
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(float(h_phi_k * fact / b_h))
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = torch.stack(rows), torch.tensor(b)
    x_base = (std(t) / std(t0)) * x - (alpha_t * h_phi_1) * m0
    pred = 0
    if d1s:  # predictor (UniP): the higher-order terms from the history
        rho_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred = sum(float(r) * d for r, d in zip(rho_p, d1s))
    x_t = x_base - (alpha_t * b_h) * pred
    if not corrector:
        return x_t, None
    # corrector (UniC): refine with the prediction at the new point, which the next step reuses
    rho_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
    m_t = model(x_t, t)
    corr = sum(float(r) * d for r, d in zip(rho_c[:-1], d1s)) if d1s else 0
    return x_base - (alpha_t * b_h) * (corr + rho_c[-1] * (m_t - m0)), m_t


def sample_uni_pc(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep, variant: str = "bh1"):
    """UniPC multistep, order 3 (lower order at the start and the end), in ComfyUI's form: k-diffusion's
    sigmas read as variance-preserving times, the final sigma 0 replaced by 0.001, and the result un-scaled
    by that end point's flow noise scaling 1 - 0.001 (what ComfyUI's KSampler returns for a flow model)."""
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    n = len(ts) - 1

    def model(x_vp, t):  # the data prediction at VP-scaled x, through the noise prediction as UniPC defines it
        k = int((ts >= t).sum()) - 1  # the schedule step of this time
        x_ve = x_vp * (t ** 2 + 1.0) ** 0.5
        eps = (x_ve - denoise(x_ve, t, min(max(k, 0), n - 1))) / t
        log_alpha = 0.5 * torch.log(1 / (t * t + 1))
        return (x_vp - torch.sqrt(1.0 - torch.exp(2.0 * log_alpha)) * eps) / torch.exp(log_alpha)

    order = min(3, len(ts) - 2)
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    ms, tl = [], []
    for i in range(n):
        if i == 0:
            ms, tl = [model(x, ts[0])], [ts[0]]
        elif i < order:
            x, m = _unipc_step(model, x, ms, tl, ts[i], i, True, variant)
            ms.append(m)
            tl.append(ts[i])
        else:
            for step in range(i, i + 1 + (1 if i == n - 1 else 0)):
                x, m = _unipc_step(model, x, ms, tl, ts[step], min(order, n + 1 - step), step != n, variant)
                ms, tl = ms[1:] + ms[-1:], tl[1:] + [ts[step]]
                if step < n:
                    ms[-1] = m if m is not None else model(x, ts[step])
        on_step(i, x, ms[-1])
    x = x / torch.exp(0.5 * torch.log(1 / (ts[-1] * ts[-1] + 1)))
    return x / (1.0 - ts[-1]) if sigmas[-1] == 0 else x


def sample_uni_pc_bh2(denoise: Denoise, x, sigmas, noise: Noise, on_step: OnStep):
    return sample_uni_pc(denoise, x, sigmas, noise, on_step, variant="bh2")


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_sde": sample_dpmpp_sde,
    "res_multistep": sample_res_multistep,
    "er_sde": sample_er_sde,
    "lcm": sample_lcm,
    "deis": sample_deis,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
# samplers whose update needs the model's shift (through the first sigma's offset)
SHIFT_AWARE = {"dpmpp_2m_sde", "dpmpp_sde", "er_sde"}
