"""UniPC (Zhao et al. 2023): the predictor-corrector solver and ComfyUI's uni_pc / uni_pc_bh2 samplers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.backend.samplers.common import Callback, Denoiser


class _VPSchedule:
    """alpha, std and lambda of the variance-preserving process equivalent to sigma (alpha = 1/sqrt(1 +
    sigma^2), std = sigma alpha, lambda = log(alpha / std) = -log sigma).

    Written through log alpha = 0.5 log(1 / (sigma^2 + 1)) and std = sqrt(1 - alpha^2), the form ComfyUI
    evaluates in float32, so the rounding at tiny sigmas (the 0.001 end point) comes out the same.
    """

    @staticmethod
    def log_alpha(sigma: Tensor) -> Tensor:
        return 0.5 * torch.log(1 / (sigma * sigma + 1))

    @classmethod
    def alpha(cls, sigma: Tensor) -> Tensor:
        return torch.exp(cls.log_alpha(sigma))

    @classmethod
    def std(cls, sigma: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * cls.log_alpha(sigma)))

    @classmethod
    def lam(cls, sigma: Tensor) -> Tensor:
        log_alpha = cls.log_alpha(sigma)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class UniPC:
    """UniPC with data prediction (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
    for Fast Sampling of Diffusion Models", Algorithms 2 and 3): UniP-p predictor and UniC-p corrector,
    B(h) = h ("bh1") or e^h - 1 ("bh2"). The state is kept in the VP convention x_vp = x / sqrt(1 + sigma^2).
    """

    def __init__(self, model: Denoiser, extra_args: dict[str, Any] | None, variant: str = "bh1") -> None:
        if variant not in {"bh1", "bh2"}:
            raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.variant = variant

    def data_prediction(self, x_vp: Tensor, sigma: Tensor) -> Tensor:
        x = x_vp * (sigma**2 + 1.0) ** 0.5
        return self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)

    def update(
        self, x: Tensor, model_prev: list[Tensor], t_prev: list[Tensor], t: Tensor, order: int, use_corrector: bool
    ) -> tuple[Tensor, Tensor | None]:
        """One multistep UniP-p step to t (and UniC-p correction when ``use_corrector``)."""
        vp = _VPSchedule
        lambda_prev_0 = vp.lam(t_prev[-1])
        h = vp.lam(t) - lambda_prev_0
        m0 = model_prev[-1]
        rks: list[Tensor | float] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            rk = (vp.lam(t_prev[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor([float(r) for r in rks], dtype=torch.float32)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        factorial_i = 1
        rows: list[Tensor] = []
        b: list[float] = []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(float(h_phi_k * factorial_i / b_h))
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        big_r = torch.stack(rows)
        b_t = torch.tensor(b, dtype=torch.float32)
        alpha_t = vp.alpha(t)
        x_t_ = (vp.std(t) / vp.std(t_prev[-1])) * x - (alpha_t * h_phi_1) * m0
        pred_res: Tensor | float = 0.0
        if d1s:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b_t[:-1])
            pred_res = sum(rho * d for rho, d in zip(rhos_p.tolist(), d1s, strict=True))
        x_t = x_t_ - (alpha_t * b_h) * pred_res
        if not use_corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(big_r, b_t)
        model_t = self.data_prediction(x_t, t)
        corr_res: Tensor | float = sum(rho * d for rho, d in zip(rhos_c[:-1].tolist(), d1s, strict=True))
        x_t = x_t_ - (alpha_t * b_h) * (corr_res + float(rhos_c[-1]) * (model_t - m0))
        return x_t, model_t


@torch.no_grad()
def _sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: Callback | None,
    variant: str,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    ts = sigmas.detach().clone().float()
    if ts[-1] == 0:
        ts[-1] = 0.001  # UniPC in the VP convention needs a positive end point
    solver = UniPC(model, extra_args, variant)
    steps = len(ts) - 1
    order = min(3, steps - 1)
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    model_prev = [solver.data_prediction(x, ts[0])]
    t_prev = [ts[0]]
    _report_unipc(callback, 0, x, ts[0], model_prev[-1])
    # ComfyUI updates only from its second loop iteration on, so one step (order 0) changes nothing.
    for step in range(1, steps + 1 if steps >= 2 else 1):
        if step < order:
            step_order, use_corrector = step, True
        else:
            step_order, use_corrector = min(order, steps + 1 - step), step < steps
        x, model_x = solver.update(x, model_prev, t_prev, ts[step], step_order, use_corrector)
        if step < order:
            model_prev.append(model_x if model_x is not None else solver.data_prediction(x, ts[step]))
            t_prev.append(ts[step])
        else:
            model_prev, t_prev = model_prev[1:] + model_prev[-1:], t_prev[1:] + [ts[step]]
            if step < steps:
                model_prev[-1] = model_x if model_x is not None else solver.data_prediction(x, ts[step])
        # ComfyUI reports `steps` times: after the first evaluation, after updates 1 .. steps - 2, and
        # after the final update (its last loop iteration runs updates steps - 1 and steps).
        if step <= steps - 2 or step == steps:
            _report_unipc(callback, min(step, steps - 1), x, ts[step], model_prev[-1])
    return x / _VPSchedule.alpha(ts[-1])


def _report_unipc(callback: Callback | None, i: int, x_vp: Tensor, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        x = x_vp / _VPSchedule.alpha(sigma)
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_uni_pc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC-3 multistep, B(h) = h (bh1), lower order on the last steps, as ComfyUI's uni_pc.

    A final sigma of 0 is replaced by 0.001 and the result is divided by the VP alpha there. As in
    ComfyUI, order = min(3, steps - 1), so a single step returns the (rescaled) input unchanged.
    """
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """:func:`sample_uni_pc` with B(h) = e^h - 1 (bh2), recommended by Zhao et al. for guided sampling."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh2")
