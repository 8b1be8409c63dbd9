"""Torch-backed SDK for SIGMAS and model sampling: the scheduler nodes' schedules, the sigma tools,
the model-sampling choices of ModelSampling* nodes, and Epsilon Scaling.

A node imports this module inside ``run`` (``from engine.sdk import sigmas``), never at module level.
A MODEL's model sampling needs no weights: it follows from the handle's family and its
:class:`~engine.models.handles.ModelSamplingSpec`, so no model is loaded here.
"""

from __future__ import annotations

from torch import Tensor

from engine.backend import model_sampling as model_sampling_module
from engine.backend import schedules, sigma_tools, step_tables
from engine.backend.epsilon_scaling import EpsilonScaling
from engine.backend.model_sampling import ModelSampling, model_sampling_for
from engine.models.handles import ModelHandle, ModelSamplingSpec

__all__ = [
    "AYS_MODEL_TYPES", "EDM_SAMPLINGS", "DISCRETE_SAMPLINGS", "EpsilonScaling", "ModelSampling", "align_your_steps",
    "basic", "beta", "continuous_edm_spec", "continuous_v_spec", "discrete_flow_spec", "discrete_spec", "exponential",
    "flux_spec",
    "extend_intermediate", "flip", "gits", "karras", "laplace", "model_sampling", "percent_to_sigma",
    "polyexponential", "sd_turbo", "set_first", "split", "split_denoise", "vp",
]

AYS_MODEL_TYPES = step_tables.AYS_MODEL_TYPES
#: ModelSamplingDiscrete's sampling choices (ComfyUI's order).
DISCRETE_SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
#: ModelSamplingContinuousEDM's sampling choices (ComfyUI's order); cosmos_rflow is for Cosmos models only.
EDM_SAMPLINGS = ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")

karras = schedules.get_sigmas_karras
exponential = schedules.get_sigmas_exponential
polyexponential = schedules.get_sigmas_polyexponential
laplace = schedules.get_sigmas_laplace
vp = schedules.get_sigmas_vp
align_your_steps = step_tables.align_your_steps
gits = step_tables.gits
split = sigma_tools.split_sigmas
split_denoise = sigma_tools.split_sigmas_denoise
flip = sigma_tools.flip_sigmas
set_first = sigma_tools.set_first_sigma
extend_intermediate = sigma_tools.extend_intermediate_sigmas


def model_sampling(model: ModelHandle) -> ModelSampling:
    """The model sampling (noise levels and parameterization) a MODEL samples with."""
    family = model.family
    return model_sampling_for(family.prediction, model.sampling, (family.linear_start, family.linear_end))


def basic(model: ModelHandle, scheduler: str, steps: int, denoise: float) -> Tensor:
    return schedules.basic_scheduler(model_sampling(model), scheduler, steps, denoise)


def beta(model: ModelHandle, steps: int, alpha: float, beta: float) -> Tensor:
    return schedules.beta_scheduler(model_sampling(model), steps, alpha=alpha, beta=beta)


def sd_turbo(model: ModelHandle, steps: int, denoise: float) -> Tensor:
    return schedules.sd_turbo_sigmas(model_sampling(model), steps, denoise)


def percent_to_sigma(model: ModelHandle, percent: float, return_actual_sigma: bool) -> float:
    """The sigma at ``percent`` of the diffusion; with ``return_actual_sigma`` 0 and 1 give the model's
    sigma_max and sigma_min instead of the interval-check values 999999999.9 and 0."""
    ms = model_sampling(model)
    if return_actual_sigma and percent == 0.0:
        return float(ms.sigma_max)
    if return_actual_sigma and percent == 1.0:
        return float(ms.sigma_min)
    return ms.percent_to_sigma(percent)


def discrete_spec(sampling: str, zsnr: bool) -> ModelSamplingSpec:
    """ModelSamplingDiscrete's choice: SD's 1000 discrete noise levels (50 for lcm) read as ``sampling``."""
    if sampling not in DISCRETE_SAMPLINGS:
        raise ValueError(f"unknown discrete sampling {sampling!r}; choose one of {', '.join(DISCRETE_SAMPLINGS)}")
    return ModelSamplingSpec(kind="discrete", prediction=sampling, zsnr=zsnr)


def continuous_edm_spec(sampling: str, sigma_max: float, sigma_min: float) -> ModelSamplingSpec:
    """ModelSamplingContinuousEDM's choice; edm and edm_playground_v2.5 use sigma_data 0.5."""
    if sampling not in EDM_SAMPLINGS:
        raise ValueError(f"unknown EDM sampling {sampling!r}; choose one of {', '.join(EDM_SAMPLINGS)}")
    if sampling == "cosmos_rflow":
        raise ValueError("sampling 'cosmos_rflow' is for NVIDIA Cosmos models, which Loom does not run; "
                         "for SD1/SD2/SDXL choose v_prediction, edm, edm_playground_v2.5 or eps")
    _check_range(sigma_max, sigma_min)
    edm = sampling.startswith("edm")
    return ModelSamplingSpec(kind="continuous_edm", prediction="edm" if edm else sampling, sigma_min=sigma_min,
                             sigma_max=sigma_max, sigma_data=0.5 if edm else 1.0,
                             latent_format="playground_v2.5" if sampling == "edm_playground_v2.5" else None)


def continuous_v_spec(sigma_max: float, sigma_min: float) -> ModelSamplingSpec:
    """ModelSamplingContinuousV's choice: v-prediction on continuous sigmas with t = atan(sigma) 2 / pi."""
    _check_range(sigma_max, sigma_min)
    return ModelSamplingSpec(kind="continuous_v", prediction="v_prediction", sigma_min=sigma_min,
                             sigma_max=sigma_max)


def discrete_flow_spec(shift: float, multiplier: float) -> ModelSamplingSpec:
    """ModelSamplingSD3's / ModelSamplingAuraFlow's choice: rectified flow on shifted discrete timesteps."""
    return ModelSamplingSpec(kind="discrete_flow", prediction="flow", shift=shift, multiplier=multiplier)


def flux_spec(max_shift: float, base_shift: float, width: int, height: int) -> ModelSamplingSpec:
    """ModelSamplingFlux's choice: rectified flow with Flux's shift for this image size."""
    shift = model_sampling_module.flux_shift(max_shift, base_shift, width, height)
    return ModelSamplingSpec(kind="flux", prediction="flow", shift=shift)


def _check_range(sigma_max: float, sigma_min: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be above 0 and below sigma_max ({sigma_max})")
