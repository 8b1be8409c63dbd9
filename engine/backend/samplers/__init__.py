"""k-diffusion-style samplers, with ComfyUI's names and semantics, and their registry.

The *sampler* (``sample_<name>``): a pure function ``(model, x, sigmas, ...) -> x`` where
``model(x, sigma, **extra_args)`` returns the denoised estimate for a [B] tensor of sigmas; the
sigmas come from :mod:`engine.backend.schedules`.

Every sampler calls ``callback`` with a dict ``{"i", "x", "sigma", "sigma_hat", "denoised"}`` once per
step (dpm_fast: once per internal solver step, fewer than the sigmas; dpm_adaptive: once per attempted
step); raising from the callback interrupts the run. Noise for the stochastic samplers comes from
:mod:`engine.backend.noise` and, by default, does not depend on the device.

The samplers live in :mod:`.ode`, :mod:`.ancestral`, :mod:`.sde`, :mod:`.dpm_solver`,
:mod:`.unipc`, :mod:`.cfg_pp`, :mod:`.multistep`, :mod:`.res_multistep`, :mod:`.er_sde`,
:mod:`.seeds` and :mod:`.sa_solver` (shared helpers in :mod:`.common`); :func:`get_sampler` gives
any of them by ComfyUI name with one uniform signature.

The cfg++ samplers (:func:`needs_uncond`) read each step's uncond prediction through the guided
denoiser's ``on_guidance`` keyword, so the model they get must accept it (``CFGDenoiser`` does), and
the denoiser should run the uncond pass even at cfg 1 (``needs_uncond=True``), as ComfyUI does for them.
The ``*_gpu`` samplers draw their Brownian noise on the sampling device (see
:class:`engine.backend.noise.BrownianTreeNoiseSampler`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from engine.backend.noise import NoiseSampler
from engine.backend.samplers.ancestral import (
    sample_ddpm,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler_ancestral,
    sample_lcm,
)
from engine.backend.samplers.cfg_pp import (
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
)
from engine.backend.samplers.common import Callback, Denoiser
from engine.backend.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from engine.backend.samplers.er_sde import sample_er_sde
from engine.backend.samplers.multistep import (
    sample_deis,
    sample_gradient_estimation,
    sample_gradient_estimation_cfg_pp,
    sample_ipndm,
    sample_ipndm_v,
)
from engine.backend.samplers.ode import (
    sample_ddim,
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_heunpp2,
    sample_lms,
)
from engine.backend.samplers.res_multistep import (
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from engine.backend.samplers.sa_solver import sample_sa_solver, sample_sa_solver_pece
from engine.backend.samplers.sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_gpu,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2m_sde_heun_gpu,
    sample_dpmpp_3m_sde,
    sample_dpmpp_3m_sde_gpu,
    sample_dpmpp_sde,
    sample_dpmpp_sde_gpu,
)
from engine.backend.samplers.seeds import sample_seeds_2, sample_seeds_3
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
    # cfg++: reads the uncond prediction through ``on_guidance``
    cfg_pp: bool = False


_SAMPLERS: dict[str, _Entry] = {
    "euler": _Entry(sample_euler, "churn"),
    "euler_cfg_pp": _Entry(sample_euler_cfg_pp, "none", cfg_pp=True),
    "euler_ancestral": _Entry(sample_euler_ancestral, "seeded"),
    "euler_ancestral_cfg_pp": _Entry(sample_euler_ancestral_cfg_pp, "seeded", cfg_pp=True),
    "heun": _Entry(sample_heun, "churn"),
    "heunpp2": _Entry(sample_heunpp2, "churn"),
    "dpm_2": _Entry(sample_dpm_2, "churn"),
    "dpm_2_ancestral": _Entry(sample_dpm_2_ancestral, "seeded"),
    "lms": _Entry(sample_lms, "none"),
    "dpm_fast": _Entry(sample_dpm_fast, "seeded"),
    "dpm_adaptive": _Entry(sample_dpm_adaptive, "seeded"),
    "dpmpp_2s_ancestral": _Entry(sample_dpmpp_2s_ancestral, "seeded"),
    "dpmpp_2s_ancestral_cfg_pp": _Entry(sample_dpmpp_2s_ancestral_cfg_pp, "seeded", cfg_pp=True),
    "dpmpp_sde": _Entry(sample_dpmpp_sde, "brownian"),
    "dpmpp_sde_gpu": _Entry(sample_dpmpp_sde_gpu, "brownian"),
    "dpmpp_2m": _Entry(sample_dpmpp_2m, "none"),
    "dpmpp_2m_cfg_pp": _Entry(sample_dpmpp_2m_cfg_pp, "none", cfg_pp=True),
    "dpmpp_2m_sde": _Entry(sample_dpmpp_2m_sde, "brownian"),
    "dpmpp_2m_sde_gpu": _Entry(sample_dpmpp_2m_sde_gpu, "brownian"),
    "dpmpp_2m_sde_heun": _Entry(sample_dpmpp_2m_sde_heun, "brownian"),
    "dpmpp_2m_sde_heun_gpu": _Entry(sample_dpmpp_2m_sde_heun_gpu, "brownian"),
    "dpmpp_3m_sde": _Entry(sample_dpmpp_3m_sde, "brownian"),
    "dpmpp_3m_sde_gpu": _Entry(sample_dpmpp_3m_sde_gpu, "brownian"),
    "ddpm": _Entry(sample_ddpm, "seeded"),
    "lcm": _Entry(sample_lcm, "seeded"),
    "ipndm": _Entry(sample_ipndm, "none"),
    "ipndm_v": _Entry(sample_ipndm_v, "none"),
    "deis": _Entry(sample_deis, "none"),
    "res_multistep": _Entry(sample_res_multistep, "none"),
    "res_multistep_cfg_pp": _Entry(sample_res_multistep_cfg_pp, "none", cfg_pp=True),
    "res_multistep_ancestral": _Entry(sample_res_multistep_ancestral, "seeded"),
    "res_multistep_ancestral_cfg_pp": _Entry(sample_res_multistep_ancestral_cfg_pp, "seeded", cfg_pp=True),
    "gradient_estimation": _Entry(sample_gradient_estimation, "none"),
    "gradient_estimation_cfg_pp": _Entry(sample_gradient_estimation_cfg_pp, "none", cfg_pp=True),
    "er_sde": _Entry(sample_er_sde, "seeded"),
    "seeds_2": _Entry(sample_seeds_2, "seeded"),
    "seeds_3": _Entry(sample_seeds_3, "seeded"),
    "sa_solver": _Entry(sample_sa_solver, "seeded"),
    "sa_solver_pece": _Entry(sample_sa_solver_pece, "seeded"),
    "ddim": _Entry(sample_ddim, "churn"),
    "uni_pc": _Entry(sample_uni_pc, "none"),
    "uni_pc_bh2": _Entry(sample_uni_pc_bh2, "none"),
}

#: Sampler names, in ComfyUI's combo order (all of KSampler's; listed torch-free in names.py).
SAMPLER_NAMES: list[str] = list(_SAMPLERS)

#: The cfg++ samplers: they need each step's uncond prediction (see :func:`needs_uncond`).
CFG_PP_SAMPLERS = frozenset(name for name, entry in _SAMPLERS.items() if entry.cfg_pp)

#: Samplers that take a ``model_sampling`` option (SA-Solver's noise interval is the model's 20%..80%
#: of the diffusion; without it, SD's scaled-linear schedule is assumed).
MODEL_SAMPLING_SAMPLERS = frozenset({"sa_solver", "sa_solver_pece"})

#: Samplers whose inpaint re-noising uses fresh noise (seed + 1) instead of the initial noise.
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})


def needs_uncond(name: str) -> bool:
    """Whether ``name`` reads the uncond prediction every step, so the guided denoiser must run the
    uncond pass even at cfg 1 (ComfyUI disables its cfg-1 shortcut for these samplers)."""
    return name in CFG_PP_SAMPLERS


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
