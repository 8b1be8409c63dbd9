"""k-diffusion-style samplers, with ComfyUI's names and semantics, and their registry.

The *sampler* (``sample_<name>``): a pure function ``(model, x, sigmas, ...) -> x`` where
``model(x, sigma, **extra_args)`` returns the denoised estimate for a [B] tensor of sigmas; the
sigmas come from :mod:`engine.backend.schedules`.

Every sampler calls ``callback`` with a dict ``{"i", "x", "sigma", "sigma_hat", "denoised"}`` once per
step (dpm_fast: once per internal solver step, fewer than the sigmas; dpm_adaptive: once per attempted
step); raising from the callback interrupts the run. Noise for the stochastic samplers comes from
:mod:`engine.backend.noise` and, by default, does not depend on the device.

The samplers live in :mod:`.ode`, :mod:`.ancestral`, :mod:`.sde`, :mod:`.dpm_solver` and
:mod:`.unipc` (shared helpers in :mod:`.common`); :func:`get_sampler` gives any of them by ComfyUI
name with one uniform signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.ancestral import (
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler_ancestral,
    sample_lcm,
)
from engine.backend.samplers.common import Callback, Denoiser
from engine.backend.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from engine.backend.samplers.ode import (
    sample_ddim,
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_lms,
)
from engine.backend.samplers.sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from engine.backend.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2


class Sampler(Protocol):
    """The uniform signature :func:`get_sampler` returns."""

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        seed: int | None = None,
        noise_sampler: NoiseSampler | None = None,
        **options: Any,
    ) -> Tensor: ...


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    # "none": deterministic; "seeded": SeededNoiseSampler; "brownian": Brownian tree; "churn": only with s_churn > 0
    noise: str


_SAMPLERS: dict[str, _Entry] = {
    "euler": _Entry(sample_euler, "churn"),
    "euler_ancestral": _Entry(sample_euler_ancestral, "seeded"),
    "heun": _Entry(sample_heun, "churn"),
    "dpm_2": _Entry(sample_dpm_2, "churn"),
    "dpm_2_ancestral": _Entry(sample_dpm_2_ancestral, "seeded"),
    "lms": _Entry(sample_lms, "none"),
    "dpm_fast": _Entry(sample_dpm_fast, "seeded"),
    "dpm_adaptive": _Entry(sample_dpm_adaptive, "seeded"),
    "dpmpp_2s_ancestral": _Entry(sample_dpmpp_2s_ancestral, "seeded"),
    "dpmpp_sde": _Entry(sample_dpmpp_sde, "brownian"),
    "dpmpp_2m": _Entry(sample_dpmpp_2m, "none"),
    "dpmpp_2m_sde": _Entry(sample_dpmpp_2m_sde, "brownian"),
    "dpmpp_2m_sde_heun": _Entry(sample_dpmpp_2m_sde_heun, "brownian"),
    "dpmpp_3m_sde": _Entry(sample_dpmpp_3m_sde, "brownian"),
    "lcm": _Entry(sample_lcm, "seeded"),
    "ddim": _Entry(sample_ddim, "churn"),
    "uni_pc": _Entry(sample_uni_pc, "none"),
    "uni_pc_bh2": _Entry(sample_uni_pc_bh2, "none"),
}

#: Sampler names, in ComfyUI's combo order (the subset Loom implements; listed torch-free in names.py).
SAMPLER_NAMES: list[str] = list(_SAMPLERS)

#: Samplers whose inpaint re-noising uses fresh noise (seed + 1) instead of the initial noise.
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})


def get_sampler(name: str) -> Sampler:
    """The sampler ``name`` with the uniform signature of :class:`Sampler`.

    ``seed`` / ``noise_sampler`` reach the samplers that draw noise and are ignored by the others;
    ``options`` (eta, s_noise, s_churn, order, ...) go to the sampler function as keywords.
    """
    try:
        entry = _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}") from None

    def run(
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        seed: int | None = None,
        noise_sampler: NoiseSampler | None = None,
        **options: Any,
    ) -> Tensor:
        if entry.noise != "none":
            options = {**options, "seed": seed, "noise_sampler": noise_sampler}
        return entry.fn(model, x, sigmas, extra_args=extra_args, callback=callback, **options)

    run.__name__ = f"sampler_{name}"
    run.__doc__ = entry.fn.__doc__
    return run
