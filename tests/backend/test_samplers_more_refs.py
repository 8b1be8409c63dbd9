"""The new samplers against independent references: diffusers' DDPMScheduler for ddpm, and otherwise
the published update formulas written out here in float64 numpy (coefficients by scipy quadrature
where the sampler uses closed forms or Riemann sums), on the Gaussian toy problem of
test_samplers_more.py. Fixed noise comes from a queue, so stochastic steps are compared exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import Tensor

from engine.backend.model_sampling import ModelSampling
from engine.backend.samplers import get_sampler
from engine.backend.samplers.multistep import _ipndm_v_weights, deis_coefficients
from engine.backend.samplers.sa_solver import adams_coefficients, exponential_coefficients
from engine.backend.schedules import sigmas_for

integrate = pytest.importorskip("scipy.integrate")

MU, SD = 0.5, 0.6
Array = npt.NDArray[np.float64]


def denoiser(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
    s = sigma.reshape(-1, 1, 1, 1)
    return (x * SD**2 + MU * s**2) / (SD**2 + s**2)


def np_den(x: Array, sigma: float) -> Array:
    return (x * SD**2 + MU * sigma**2) / (SD**2 + sigma**2)


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


def sched(ms: ModelSampling, scheduler: str, name: str, steps: int) -> Tensor:
    """The KSampler schedule in float64 (so the comparisons are not limited by float32 sigmas)."""
    return sigmas_for(ms, scheduler, name, steps).double()


def start(sigmas: Tensor, seed: int = 9) -> Tensor:
    return torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * float(
        sigmas[0]
    )


def noise_queue(count: int) -> tuple[Callable[[Tensor, Tensor], Tensor], list[Array]]:
    noises = [torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float64)
              for k in range(count)]
    queue = list(noises)
    return (lambda s, t: queue.pop(0)), [n.numpy() for n in noises]


def lagrange_integral(nodes: list[float], j: int, a: float, b: float, weight: Callable[[float], float]) -> float:
    def f(u: float) -> float:
        out = weight(u)
        for k, node in enumerate(nodes):
            if k != j:
                out *= (u - node) / (nodes[j] - node)
        return out

    return float(integrate.quad(f, a, b, limit=200)[0])


# ddpm against diffusers ---------------------------------------------------------------------------------


def test_ddpm_matches_diffusers_ddpm_scheduler() -> None:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        variance_type="fixed_small", clip_sample=False, prediction_type="epsilon",
    )
    timesteps = list(range(999, 0, -111))
    scheduler.set_timesteps(timesteps=timesteps)
    acp = scheduler.alphas_cumprod.double()
    sigmas = torch.tensor([float(((1 - acp[t]) / acp[t]).sqrt()) for t in timesteps] + [0.0], dtype=torch.float64)
    x_vp = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    generator = torch.Generator().manual_seed(42)
    sample = x_vp.clone()
    for t in scheduler.timesteps:
        sigma = float(((1 - acp[t]) / acp[t]).sqrt())
        x_k = sample * math.sqrt(1 + sigma**2)
        eps = (x_k - np_den_t(x_k, sigma)) / sigma
        sample = scheduler.step(eps, t, sample, generator=generator).prev_sample

    ours_generator = torch.Generator().manual_seed(42)

    def draw(s: Tensor, t: Tensor) -> Tensor:
        return torch.randn((2, 4, 4, 4), generator=ours_generator, dtype=torch.float64)

    out = get_sampler("ddpm")(denoiser, x_vp * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, noise_sampler=draw)
    torch.testing.assert_close(out, sample, atol=1e-6, rtol=1e-6)


def np_den_t(x: Tensor, sigma: float) -> Tensor:
    return (x * SD**2 + MU * sigma**2) / (SD**2 + sigma**2)


# deis: tAB coefficients by quadrature ------------------------------------------------------------------


def vp_time(sigma: float) -> tuple[float, float, float]:
    eps_s, s_min, s_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(s_min**2 + 1) / eps_s - math.log(s_max**2 + 1)) / (eps_s - 1)
    beta_min = math.log(s_max**2 + 1) - 0.5 * beta_d
    t = (math.sqrt(beta_min**2 + 2 * beta_d * math.log(sigma**2 + 1)) - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_weight(tau: float, beta_0: float, beta_1: float) -> float:
    """-(1/2) dlog(alpha)/dt / sqrt(alpha (1 - alpha)) for alpha = exp(-t^2 (b1 - b0) / 2 - t b0)."""
    alpha = math.exp(-0.5 * tau**2 * (beta_1 - beta_0) - tau * beta_0)
    return 0.5 * (tau * (beta_1 - beta_0) + beta_0) / math.sqrt(alpha * (1 - alpha))


def ref_deis_coefficients(sigmas: list[float], max_order: int) -> list[list[float]]:
    times = [vp_time(s)[0] for s in sigmas]
    _, b0, b1 = vp_time(1.0)
    rows: list[list[float]] = []
    for i in range(len(sigmas) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] == 0:
            rows.append([])
            continue
        nodes = [times[i - k] for k in range(order)]
        rows.append([lagrange_integral(nodes, j, times[i], times[i + 1], lambda u: deis_weight(u, b0, b1))
                     for j in range(order)])
    return rows


def test_deis_coefficients_match_quadrature(ms: ModelSampling) -> None:
    sigmas = sched(ms, "karras", "deis", 8)
    ours = deis_coefficients(sigmas, 3)
    ref = ref_deis_coefficients([float(s) for s in sigmas], 3)
    assert [len(r) for r in ours] == [len(r) for r in ref] == [0, 2, 3, 3, 3, 3, 3, 0]
    for row, ref_row in zip(ours, ref, strict=True):
        np.testing.assert_allclose(row, ref_row, rtol=2e-3, atol=1e-4)


def test_deis_trajectory_matches_the_reference(ms: ModelSampling) -> None:
    sigmas = sched(ms, "karras", "deis", 8)
    x = start(sigmas)
    grid = [float(s) for s in sigmas]
    rows = ref_deis_coefficients(grid, 3)
    ref = x.numpy()
    history: list[Array] = []
    for i in range(len(grid) - 1):
        d = (ref - np_den(ref, grid[i])) / grid[i]
        history.insert(0, d)
        ref = ref + (grid[i + 1] - grid[i]) * d if not rows[i] else ref + sum(
            c * h for c, h in zip(rows[i], history, strict=False)
        )
    out = get_sampler("deis")(denoiser, x, sigmas)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-4, rtol=2e-4)


# ipndm / ipndm_v ----------------------------------------------------------------------------------------


def ref_adams_bashforth(x: Array, grid: list[float], weights: Callable[[int, int], list[float]]) -> Array:
    history: list[Array] = []
    for i in range(len(grid) - 1):
        denoised = np_den(x, grid[i])
        history.insert(0, (x - denoised) / grid[i])
        if grid[i + 1] == 0:
            x = denoised
            continue
        w = weights(i, min(4, i + 1))
        x = x + (grid[i + 1] - grid[i]) * sum(c * d for c, d in zip(w, history, strict=False))
    return x


def test_ipndm_is_adams_bashforth_with_equal_step_weights(ms: ModelSampling) -> None:
    """Zhang & Chen 2023, iPNDM: AB weights 1; 3/2,-1/2; 23/12,-16/12,5/12; 55/24,-59/24,37/24,-9/24."""
    table = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    sigmas = sched(ms, "karras", "ipndm", 9)
    x = start(sigmas)
    ref = ref_adams_bashforth(x.numpy(), [float(s) for s in sigmas], lambda i, order: table[order - 1])
    np.testing.assert_allclose(get_sampler("ipndm")(denoiser, x, sigmas).numpy(), ref, atol=1e-10, rtol=1e-10)


def test_ipndm_v_second_order_is_exact_variable_step_ab2(ms: ModelSampling) -> None:
    sigmas = sched(ms, "karras", "ipndm_v", 9)
    grid = [float(s) for s in sigmas]

    def ab2(i: int, order: int) -> list[float]:
        if order == 1:
            return [1.0]
        nodes = [grid[i], grid[i - 1]]
        step = grid[i + 1] - grid[i]
        return [lagrange_integral(nodes, j, grid[i], grid[i + 1], lambda u: 1.0) / step for j in range(2)]

    x = start(sigmas)
    ref = ref_adams_bashforth(x.numpy(), grid, lambda i, order: ab2(i, min(order, 2)))
    out = get_sampler("ipndm_v")(denoiser, x, sigmas, max_order=2)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_v_weights_for_equal_steps(order: int) -> None:
    """Orders 2 and 3 reduce to Adams-Bashforth; order 4 keeps diff-sampler's (and ComfyUI's) weights,
    which sum to 1 but are not AB4's 55/24, -59/24, 37/24, -9/24."""
    table = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [57 / 24, -65 / 24, 43 / 24, -11 / 24]]
    np.testing.assert_allclose(_ipndm_v_weights([-0.3] * order), table[order - 1], rtol=1e-12)


# res_multistep: the second-order exponential multistep step, derived here ---------------------------


def ref_res_multistep(x: Array, grid: list[float]) -> Array:
    """dx/dlambda = D - x in lambda = -log sigma; D interpolated linearly through the last two
    evaluations: x' = e^-h x + (1 - e^-h) D_i + (h - 1 + e^-h) (D_i - D_(i-1)) / h_prev."""
    previous: Array | None = None
    for i in range(len(grid) - 1):
        denoised = np_den(x, grid[i])
        if grid[i + 1] == 0 or previous is None:
            x = x + (grid[i + 1] - grid[i]) * (x - denoised) / grid[i]
        else:
            h = math.log(grid[i] / grid[i + 1])
            h_prev = math.log(grid[i - 1] / grid[i])
            x = (math.exp(-h) * x + (1 - math.exp(-h)) * denoised
                 + (h - 1 + math.exp(-h)) * (denoised - previous) / h_prev)
        previous = denoised
    return x


@pytest.mark.parametrize("scheduler", ["karras", "normal"])
def test_res_multistep_matches_the_reference(ms: ModelSampling, scheduler: str) -> None:
    sigmas = sched(ms, scheduler, "res_multistep", 10)
    x = start(sigmas)
    ref = ref_res_multistep(x.numpy(), [float(s) for s in sigmas])
    np.testing.assert_allclose(get_sampler("res_multistep")(denoiser, x, sigmas).numpy(), ref, atol=1e-9, rtol=1e-9)


def test_res_multistep_ancestral_matches_the_reference(ms: ModelSampling) -> None:
    """eta 1: the same step to sigma_down (the ancestral split of Ho et al. 2020 in sigma form), the
    previous node one (previous) step to sigma_down behind, then noise of std sigma_up."""
    sigmas = sched(ms, "karras", "res_multistep_ancestral", 8)
    x = start(sigmas)
    draw, noises = noise_queue(10)
    s, ref = [float(v) for v in sigmas], x.numpy()
    previous: Array | None = None
    h_prev = 0.0
    for i in range(len(s) - 1):
        denoised = np_den(ref, s[i])
        up = min(s[i + 1], math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        down = math.sqrt(s[i + 1] ** 2 - up**2)
        if down == 0 or previous is None:
            ref = ref + (down - s[i]) * (ref - denoised) / s[i]
        else:
            h = math.log(s[i] / down)
            ref = (math.exp(-h) * ref + (1 - math.exp(-h)) * denoised
                   + (h - 1 + math.exp(-h)) * (denoised - previous) / h_prev)
        if s[i + 1] > 0:
            ref = ref + up * noises[i]
        previous = denoised
        h_prev = math.log(s[i] / down) if down > 0 else 0.0
    out = get_sampler("res_multistep_ancestral")(denoiser, x, sigmas, noise_sampler=draw)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


# gradient_estimation and heunpp2 ------------------------------------------------------------------------


def test_gradient_estimation_matches_its_formula(ms: ModelSampling) -> None:
    """Permenter & Yuan 2024, Algorithm 2 in sigma: x' = x + dt (d + (gamma - 1)(d - d_prev)), gamma = 2."""
    sigmas = sched(ms, "karras", "gradient_estimation", 10)
    x = start(sigmas)
    grid = [float(s) for s in sigmas]
    ref, d_prev = x.numpy(), None
    for i in range(len(grid) - 1):
        denoised = np_den(ref, grid[i])
        d = (ref - denoised) / grid[i]
        dt = grid[i + 1] - grid[i]
        if grid[i + 1] == 0:
            ref = denoised
        else:
            ref = ref + dt * (d if d_prev is None else d + (d - d_prev))
        d_prev = d
    out = get_sampler("gradient_estimation")(denoiser, x, sigmas)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


def test_heunpp2_matches_its_formula(ms: ModelSampling) -> None:
    sigmas = sched(ms, "karras", "heunpp2", 7)
    x = start(sigmas)
    s = [float(v) for v in sigmas]
    ref = x.numpy()

    def slope(y: Array, sigma: float) -> Array:
        return (y - np_den(y, sigma)) / sigma

    for i in range(len(s) - 1):
        d, dt = slope(ref, s[i]), s[i + 1] - s[i]
        if i + 1 == len(s) - 1:
            ref = ref + dt * d
            continue
        y2 = ref + dt * d
        d2 = slope(y2, s[i + 1])
        if i + 2 == len(s) - 1:
            w = s[i + 1] / (2 * s[0])
            ref = ref + dt * ((1 - w) * d + w * d2)
            continue
        d3 = slope(y2 + (s[i + 2] - s[i + 1]) * d2, s[i + 2])
        w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
        ref = ref + dt * ((1 - w2 - w3) * d + w2 * d2 + w3 * d3)
    np.testing.assert_allclose(get_sampler("heunpp2")(denoiser, x, sigmas).numpy(), ref, atol=1e-9, rtol=1e-9)


# seeds ------------------------------------------------------------------------------------------------------


def test_seeds_2_without_noise_is_dpmpp_2s(ms: ModelSampling) -> None:
    """eta 0, r 1/2: DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1) in sigma form."""
    sigmas = sched(ms, "karras", "seeds_2", 8)
    x = start(sigmas)
    s, ref = [float(v) for v in sigmas], x.numpy()
    for i in range(len(s) - 1):
        denoised = np_den(ref, s[i])
        if s[i + 1] == 0:
            ref = denoised
            continue
        s_mid = math.sqrt(s[i] * s[i + 1])
        u = (s_mid / s[i]) * ref + (1 - s_mid / s[i]) * denoised
        ref = (s[i + 1] / s[i]) * ref + (1 - s[i + 1] / s[i]) * np_den(u, s_mid)
    out = get_sampler("seeds_2")(denoiser, x, sigmas, eta=0.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


def test_seeds_3_without_noise_matches_the_exponential_rk3(ms: ModelSampling) -> None:
    """Stages at lambda fractions 1/3 and 2/3, D interpolated linearly (SEEDS-3 with eta 0)."""
    sigmas = sched(ms, "karras", "seeds_3", 6)
    x = start(sigmas)
    s, ref = [float(v) for v in sigmas], x.numpy()

    def expo(y: Array, d0: Array, d1: Array, c1: float, frac: float, h: float) -> Array:
        """e^-(frac h) y + int_0^(frac h) e^-(frac h - u) (d0 + u (d1 - d0) / (c1 h)) du."""
        a = frac * h
        return math.exp(-a) * y + (1 - math.exp(-a)) * d0 + (a - 1 + math.exp(-a)) * (d1 - d0) / (c1 * h)

    for i in range(len(s) - 1):
        d0 = np_den(ref, s[i])
        if s[i + 1] == 0:
            ref = d0
            continue
        h = math.log(s[i] / s[i + 1])
        x2 = math.exp(-h / 3) * ref + (1 - math.exp(-h / 3)) * d0
        d2 = np_den(x2, s[i] * math.exp(-h / 3))
        x3 = expo(ref, d0, d2, 1 / 3, 2 / 3, h)
        d3 = np_den(x3, s[i] * math.exp(-2 * h / 3))
        ref = expo(ref, d0, d3, 2 / 3, 1.0, h)
    out = get_sampler("seeds_3")(denoiser, x, sigmas, eta=0.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


def test_seeds_2_with_noise_matches_the_sde_step(ms: ModelSampling) -> None:
    """eta 1: the data-prediction SDE solved exactly for fixed D over each stage (Gonzalez et al. 2023,
    SEEDS-2), with one Brownian path: stage noise sqrt(1 - e^(-2rh)) z1, final noise
    e^(-(1-r)h) sqrt(1 - e^(-2rh)) z1 + sqrt(1 - e^(-2(1-r)h)) z2, times the target sigma."""
    sigmas = sched(ms, "karras", "seeds_2", 6)
    x = start(sigmas)
    draw, noises = noise_queue(20)
    s, ref, k = [float(v) for v in sigmas], x.numpy(), 0
    for i in range(len(s) - 1):
        d0 = np_den(ref, s[i])
        if s[i + 1] == 0:
            ref = d0
            continue
        h = math.log(s[i] / s[i + 1])
        s_mid = s[i] * math.exp(-h / 2)
        z1, z2 = noises[k], noises[k + 1]
        k += 2
        n1 = math.sqrt(1 - math.exp(-h)) * z1
        x2 = (s_mid / s[i]) * math.exp(-h / 2) * ref + (1 - math.exp(-h)) * d0 + s_mid * n1
        d_mix = np_den(x2, s_mid)
        n2 = math.exp(-h / 2) * n1 + math.sqrt(1 - math.exp(-h)) * z2
        ref = (s[i + 1] / s[i]) * math.exp(-h) * ref + (1 - math.exp(-2 * h)) * d_mix + s[i + 1] * n2
    out = get_sampler("seeds_2")(denoiser, x, sigmas, noise_sampler=draw)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=1e-9)


# er_sde ---------------------------------------------------------------------------------------------------


def er_scale(lam: float) -> float:
    return lam * (math.exp(lam**0.3) + 10.0)


def test_er_sde_matches_the_er_sde_solver_3(ms: ModelSampling) -> None:
    """Cui et al. 2023, VP ER-SDE-Solver-3 with alpha = 1 (lambda = sigma), the integrals by quadrature."""
    sigmas = sched(ms, "karras", "er_sde", 8)
    x = start(sigmas)
    draw, noises = noise_queue(10)
    lam, ref = [float(v) for v in sigmas], x.numpy()
    history: list[Array] = []
    diffs: list[Array] = []
    for i in range(len(lam) - 1):
        d = np_den(ref, lam[i])
        history.append(d)
        if lam[i + 1] == 0:
            ref = d
            continue
        ls, lt = lam[i], lam[i + 1]
        r = er_scale(lt) / er_scale(ls)
        ref = r * ref + (1 - r) * d
        if i >= 1:
            d1 = (d - history[-2]) / (ls - lam[i - 1])
            inv = integrate.quad(lambda u: 1 / er_scale(u), lt, ls)[0]
            ref = ref + (lt - ls + er_scale(lt) * inv) * d1
            if i >= 2:
                d2 = (d1 - diffs[-1]) / ((ls - lam[i - 2]) / 2)
                lin = integrate.quad(lambda u, a=ls: (u - a) / er_scale(u), lt, ls)[0]
                ref = ref + ((lt - ls) ** 2 / 2 + er_scale(lt) * lin) * d2
            diffs.append(d1)
        ref = ref + math.sqrt(max(lt**2 - ls**2 * r**2, 0.0)) * noises[i]
    out = get_sampler("er_sde")(denoiser, x, sigmas, noise_sampler=draw)
    # the sampler integrates with a 200-point Riemann sum, as ComfyUI
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-3, rtol=1e-3)


# sa_solver ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 1.0])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_sa_solver_coefficients_match_quadrature(tau: float, order: int) -> None:
    """b_j = (1 + tau^2) int_s^t e^((1 + tau^2)(u - t)) l_j(u) du for the Lagrange basis l_j
    (Xue et al. 2023, eq. 15)."""
    lambdas = [-2.1, -1.6, -1.2, -0.9][-order:]
    s, t = -0.9, -0.5
    k = 1 + tau**2

    def weight(u: float) -> float:
        return k * math.exp(k * (u - t))

    expected = [lagrange_integral(lambdas, j, s, t, weight) for j in range(order)]
    np.testing.assert_allclose(adams_coefficients(lambdas, s, t, tau).numpy(), expected, rtol=1e-8, atol=1e-12)
    moments = [integrate.quad(lambda u, p=p: weight(u) * u**p, s, t)[0] for p in range(order)]
    np.testing.assert_allclose(exponential_coefficients(s, t, order, tau).numpy(), moments, rtol=1e-8, atol=1e-12)


def exp_weight(t: float) -> Callable[[float], float]:
    return lambda u: math.exp(u - t)


def ref_sa_solver_ode(x: Array, grid: list[float], pece: bool) -> Array:
    """SA-Solver with tau = 0 (Xue et al. 2023, Algorithm 1): Adams predictor of order 3 and corrector of
    order 4 in lambda = -log sigma, orders lowered at the start and the end; quadrature coefficients."""
    lam = [-math.log(s) if s > 0 else math.inf for s in grid]
    n = len(grid)
    preds: list[Array] = []
    x_pred, x_cur = x, x
    for i in range(n - 1):
        d = np_den(x_pred, grid[i])
        preds = [*preds, d][-4:]
        p_order = min(3, len(preds), n - 2 - i)
        c_order = 0 if i == 0 or (grid[i + 1] == 0 and not pece) else min(4, len(preds), n - 1 - i)
        if c_order == 0:
            x_cur = x_pred
        else:
            nodes = lam[i - c_order + 1 : i + 1]
            b = [lagrange_integral(nodes, j, lam[i - 1], lam[i], exp_weight(lam[i])) for j in range(c_order)]
            x_cur = grid[i] / grid[i - 1] * x_cur + sum(c * p for c, p in zip(b, preds[-c_order:], strict=True))
            if pece:
                preds[-1] = np_den(x_cur, grid[i])
        if grid[i + 1] == 0:
            x_pred = preds[-1] if pece else d
            continue
        nodes = lam[i - p_order + 1 : i + 1]
        b = [lagrange_integral(nodes, j, lam[i], lam[i + 1], exp_weight(lam[i + 1])) for j in range(p_order)]
        x_pred = grid[i + 1] / grid[i] * x_cur + sum(c * p for c, p in zip(b, preds[-p_order:], strict=True))
    return x_pred


@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
def test_sa_solver_ode_matches_the_reference(ms: ModelSampling, name: str) -> None:
    sigmas = sched(ms, "karras", name, 8)
    x = start(sigmas)
    ref = ref_sa_solver_ode(x.numpy(), [float(s) for s in sigmas], name.endswith("pece"))
    out = get_sampler(name)(denoiser, x, sigmas, tau_func=lambda sigma: 0.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-7, rtol=1e-7)


def test_sa_solver_noise_interval_is_20_to_80_percent(ms: ModelSampling) -> None:
    from engine.backend.samplers.sa_solver import tau_interval

    tau = tau_interval(ms)
    high, low = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)
    assert tau(torch.tensor(high * 1.01)) == 0.0
    assert tau(torch.tensor(math.sqrt(high * low))) == 1.0
    assert tau(torch.tensor(low * 0.99)) == 0.0
    assert tau_interval()(torch.tensor(math.sqrt(high * low))) == 1.0
