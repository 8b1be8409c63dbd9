"""Scheduler and sigma nodes (ComfyUI's custom-sampling schedulers and sigma tools).

Each scheduler outputs SIGMAS: a decreasing 1-D float32 tensor of noise levels, usually ending in 0,
that SamplerCustom / SamplerCustomAdvanced sample over. The maths is in engine/backend (schedules,
step_tables, sigma_tools) behind ``engine.sdk.sigmas``, imported inside ``run``.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import (
    BOOLEAN,
    COMBO,
    FLOAT,
    INT,
    MODEL,
    SCHEDULER_NAMES,
    SIGMAS,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
)

SCHEDULERS = "sampling/custom_sampling/schedulers"
SIGMA_TOOLS = "sampling/custom_sampling/sigmas"
_ADVANCED: dict[str, Any] = {"advanced": True}
_NO_ROUND: dict[str, Any] = {"round": False, "advanced": True}
#: SD1.5's sigma_max and sigma_min, the defaults of the model-free schedulers.
SD_SIGMA_MAX = 14.614642
SD_SIGMA_MIN = 0.0291675


def _steps(default: int = 20, low: int = 1, high: int = 10000) -> Input:
    return Input("steps", INT, default=default, min=low, max=high)


def _denoise() -> Input:
    return Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)


def _sigma_range() -> tuple[Input, Input]:
    return (Input("sigma_max", FLOAT, default=SD_SIGMA_MAX, min=0.0, max=5000.0, step=0.01, extra=_NO_ROUND),
            Input("sigma_min", FLOAT, default=SD_SIGMA_MIN, min=0.0, max=5000.0, step=0.01, extra=_NO_ROUND))


def _float(name: str, default: float, low: float, high: float, step: float) -> Input:
    return Input(name, FLOAT, default=default, min=low, max=high, step=step, extra=_NO_ROUND)


def _check_range(node: str, sigma_max: float, sigma_min: float) -> None:
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(f"{node}: sigma_min ({sigma_min}) must be above 0 and at most sigma_max ({sigma_max}); "
                         "raise sigma_min or sigma_max")


class BasicScheduler(Node):
    """The sigmas of one of KSampler's schedulers for this model; denoise < 1 keeps the low-noise end."""

    category = SCHEDULERS
    inputs = (Input("model", MODEL), Input("scheduler", COMBO, choices=SCHEDULER_NAMES), _steps(), _denoise())
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, model: ModelHandle, scheduler: str, steps: int, denoise: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.basic(model, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    """Karras et al. 2022's schedule: sigma^(1/rho) evenly spaced from sigma_max to sigma_min, then 0."""

    category = SCHEDULERS
    inputs = (_steps(), *_sigma_range(), _float("rho", 7.0, 0.0, 100.0, 0.01))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0."""

    category = SCHEDULERS
    inputs = (_steps(), *_sigma_range())
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, steps: int, sigma_max: float, sigma_min: float) -> tuple[Any]:
        from engine.sdk import sigmas

        _check_range(type(self).__name__, sigma_max, sigma_min)
        return (sigmas.exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    """log sigma a power ``rho`` of the remaining fraction of steps (rho 1: exponential), then 0."""

    category = SCHEDULERS
    inputs = (_steps(), *_sigma_range(), _float("rho", 1.0, 0.0, 100.0, 0.01))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any]:
        from engine.sdk import sigmas

        _check_range(type(self).__name__, sigma_max, sigma_min)
        return (sigmas.polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(Node):
    """Log sigma at Laplace(mu, beta) quantiles, clamped to the range; like ComfyUI's, no final 0."""

    category = SCHEDULERS
    inputs = (_steps(), *_sigma_range(), _float("mu", 0.0, -10.0, 10.0, 0.1), _float("beta", 0.5, 0.0, 10.0, 0.1))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, steps: int, sigma_max: float, sigma_min: float, mu: float,
            beta: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(Node):
    """The continuous variance-preserving SDE's noise levels (Song et al. 2021), then 0."""

    category = SCHEDULERS
    inputs = (_steps(), _float("beta_d", 19.9, 0.0, 5000.0, 0.01), _float("beta_min", 0.1, 0.0, 5000.0, 0.01),
              _float("eps_s", 0.001, 0.0, 1.0, 0.0001))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, steps: int, beta_d: float, beta_min: float, eps_s: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    """The model's timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024), then 0."""

    category = SCHEDULERS
    inputs = (Input("model", MODEL), _steps(), _float("alpha", 0.6, 0.0, 50.0, 0.01),
              _float("beta", 0.6, 0.0, 50.0, 0.01))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, model: ModelHandle, steps: int, alpha: float, beta: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.beta(model, steps, alpha, beta),)


class SDTurboScheduler(Node):
    """SD-Turbo / SDXL-Turbo's schedule: timesteps 999, 899, ... (1 to 10 steps), then 0."""

    category = SCHEDULERS
    inputs = (Input("model", MODEL), _steps(default=1, high=10),
              Input("denoise", FLOAT, default=1.0, min=0, max=1.0, step=0.01))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, model: ModelHandle, steps: int, denoise: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.sd_turbo(model, steps, denoise),)


class AlignYourStepsScheduler(Node):
    """NVIDIA's Align Your Steps sigmas for SD1, SDXL or SVD, interpolated to the step count."""

    category = SCHEDULERS
    inputs = (Input("model_type", COMBO, choices=("SD1", "SDXL", "SVD")), _steps(default=10), _denoise())
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, model_type: str, steps: int, denoise: float) -> tuple[Any]:
        from engine.sdk import sigmas

        return (sigmas.align_your_steps(model_type, steps, denoise),)


class GITSScheduler(Node):
    """GITS's published SD1.5 sigmas (Chen et al. 2024) for a coefficient, interpolated past 20 steps."""

    category = SCHEDULERS
    inputs = (Input("coeff", FLOAT, default=1.20, min=0.80, max=1.50, step=0.05, extra=_ADVANCED),
              _steps(default=10, low=2, high=1000), _denoise())
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, coeff: float, steps: int, denoise: float) -> tuple[Any]:
        from engine.sdk import sigmas

        try:
            return (sigmas.gits(coeff, steps, denoise),)
        except ValueError as exc:
            raise ValueError(f"GITSScheduler input 'coeff': {exc}") from None


class SplitSigmas(Node):
    """Split at a step: high_sigmas up to and including it, low_sigmas from it on."""

    category = SIGMA_TOOLS
    inputs = (Input("sigmas", SIGMAS), Input("step", INT, default=0, min=0, max=10000))
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    def run(self, ctx: RunContext, sigmas: Any, step: int) -> tuple[Any, Any]:
        from engine.sdk import sigmas as tools

        return tools.split(sigmas, step)


class SplitSigmasDenoise(Node):
    """Split so that low_sigmas holds the last round(steps * denoise) steps."""

    category = SIGMA_TOOLS
    inputs = (Input("sigmas", SIGMAS), _denoise())
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    def run(self, ctx: RunContext, sigmas: Any, denoise: float) -> tuple[Any, Any]:
        from engine.sdk import sigmas as tools

        return tools.split_denoise(sigmas, denoise)


class FlipSigmas(Node):
    """Reverse the schedule (to unsample towards noise); a leading 0 becomes 0.0001."""

    category = SIGMA_TOOLS
    inputs = (Input("sigmas", SIGMAS),)
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, sigmas: Any) -> tuple[Any]:
        from engine.sdk import sigmas as tools

        return (tools.flip(sigmas),)


class SetFirstSigma(Node):
    """Replace the first sigma."""

    category = SIGMA_TOOLS
    inputs = (Input("sigmas", SIGMAS),
              Input("sigma", FLOAT, default=136.0, min=0.0, max=20000.0, step=0.001, extra={"round": False}))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, sigmas: Any, sigma: float) -> tuple[Any]:
        from engine.sdk import sigmas as tools

        return (tools.set_first(sigmas, sigma),)


class ExtendIntermediateSigmas(Node):
    """Insert steps - 1 sigmas between neighbours whose first lies in [end_at_sigma, start_at_sigma]
    (start -1: no upper bound), spaced linearly, by cosine or by sine."""

    category = SIGMA_TOOLS
    inputs = (Input("sigmas", SIGMAS), Input("steps", INT, default=2, min=1, max=100),
              Input("start_at_sigma", FLOAT, default=-1.0, min=-1.0, max=20000.0, step=0.01, extra={"round": False}),
              Input("end_at_sigma", FLOAT, default=12.0, min=0.0, max=20000.0, step=0.01, extra={"round": False}),
              Input("spacing", COMBO, choices=("linear", "cosine", "sine")))
    outputs = (Output(SIGMAS),)

    def run(self, ctx: RunContext, sigmas: Any, steps: int, start_at_sigma: float, end_at_sigma: float,
            spacing: str) -> tuple[Any]:
        from engine.sdk import sigmas as tools

        return (tools.extend_intermediate(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma(Node):
    """The model's sigma after a fraction of the diffusion (0: start, 1: end)."""

    category = SIGMA_TOOLS
    inputs = (Input("model", MODEL), Input("sampling_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.0001),
              Input("return_actual_sigma", BOOLEAN, default=False,
                    tooltip="Return the actual sigma value instead of the value used for interval checks.\n"
                            "This only affects results at 0.0 and 1.0."))
    outputs = (Output(FLOAT, "sigma_value"),)

    def run(self, ctx: RunContext, model: ModelHandle, sampling_percent: float,
            return_actual_sigma: bool) -> tuple[float]:
        from engine.sdk import sigmas

        return (sigmas.percent_to_sigma(model, sampling_percent, return_actual_sigma),)


SCHEDULER_NODES: tuple[type[Node], ...] = (
    BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
    VPScheduler, BetaSamplingScheduler, SDTurboScheduler, AlignYourStepsScheduler, GITSScheduler,
    SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas, SamplingPercentToSigma,
)
