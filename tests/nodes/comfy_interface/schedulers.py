"""ComfyUI's interface for the scheduler and sigma nodes (comfy_extras/nodes_custom_sampler.py,
nodes_align_your_steps.py, nodes_gits.py) and the model-sampling nodes (nodes_model_advanced.py's
ModelSamplingDiscrete / ContinuousEDM / ContinuousV / ModelComputeDtype, nodes_eps.py's Epsilon Scaling)."""

from __future__ import annotations

from typing import Any

from engine.backend.names import SCHEDULER_NAMES

MODEL: tuple[str, str, dict[str, Any]] = ("model", "MODEL", {})
SIGMAS_IN: tuple[str, str, dict[str, Any]] = ("sigmas", "SIGMAS", {})
SIGMAS_OUT = {"output": ["SIGMAS"]}
MODEL_OUT = {"output": ["MODEL"]}
SPLIT_OUT = {"output": ["SIGMAS", "SIGMAS"], "output_name": ["high_sigmas", "low_sigmas"]}
NO_ROUND = {"round": False}


def _steps(default: int = 20, low: int = 1, high: int = 10000) -> tuple[str, str, dict[str, Any]]:
    return ("steps", "INT", {"default": default, "min": low, "max": high})


def _float(name: str, default: float, low: float, high: float, step: float) -> tuple[str, str, dict[str, Any]]:
    return (name, "FLOAT", {"default": default, "min": low, "max": high, "step": step, **NO_ROUND})


SIGMA_RANGE = [_float("sigma_max", 14.614642, 0.0, 5000.0, 0.01), _float("sigma_min", 0.0291675, 0.0, 5000.0, 0.01)]
DENOISE = ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})

EXPECTED: dict[str, dict[str, Any]] = {
    "BasicScheduler": {"required": [MODEL, ("scheduler", list(SCHEDULER_NAMES), {}), _steps(), DENOISE],
                       **SIGMAS_OUT},
    "KarrasScheduler": {"required": [_steps(), *SIGMA_RANGE, _float("rho", 7.0, 0.0, 100.0, 0.01)], **SIGMAS_OUT},
    "ExponentialScheduler": {"required": [_steps(), *SIGMA_RANGE], **SIGMAS_OUT},
    "PolyexponentialScheduler": {"required": [_steps(), *SIGMA_RANGE, _float("rho", 1.0, 0.0, 100.0, 0.01)],
                                 **SIGMAS_OUT},
    "LaplaceScheduler": {"required": [_steps(), *SIGMA_RANGE, _float("mu", 0.0, -10.0, 10.0, 0.1),
                                      _float("beta", 0.5, 0.0, 10.0, 0.1)], **SIGMAS_OUT},
    "VPScheduler": {"required": [_steps(), _float("beta_d", 19.9, 0.0, 5000.0, 0.01),
                                 _float("beta_min", 0.1, 0.0, 5000.0, 0.01), _float("eps_s", 0.001, 0.0, 1.0, 0.0001)],
                    **SIGMAS_OUT},
    "BetaSamplingScheduler": {"required": [MODEL, _steps(), _float("alpha", 0.6, 0.0, 50.0, 0.01),
                                           _float("beta", 0.6, 0.0, 50.0, 0.01)], **SIGMAS_OUT},
    "SDTurboScheduler": {"required": [MODEL, _steps(default=1, high=10),
                                      ("denoise", "FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01})],
                         **SIGMAS_OUT},
    "AlignYourStepsScheduler": {"required": [("model_type", ["SD1", "SDXL", "SVD"], {}), _steps(default=10), DENOISE],
                                **SIGMAS_OUT},
    "GITSScheduler": {"required": [("coeff", "FLOAT", {"default": 1.20, "min": 0.80, "max": 1.50, "step": 0.05}),
                                   _steps(default=10, low=2, high=1000), DENOISE], **SIGMAS_OUT},
    "SplitSigmas": {"required": [SIGMAS_IN, ("step", "INT", {"default": 0, "min": 0, "max": 10000})], **SPLIT_OUT},
    "SplitSigmasDenoise": {"required": [SIGMAS_IN, DENOISE], **SPLIT_OUT},
    "FlipSigmas": {"required": [SIGMAS_IN], **SIGMAS_OUT},
    "SetFirstSigma": {"required": [SIGMAS_IN, ("sigma", "FLOAT", {"default": 136.0, "min": 0.0, "max": 20000.0,
                                                                  "step": 0.001, **NO_ROUND})], **SIGMAS_OUT},
    "ExtendIntermediateSigmas": {
        "required": [SIGMAS_IN, ("steps", "INT", {"default": 2, "min": 1, "max": 100}),
                     ("start_at_sigma", "FLOAT", {"default": -1.0, "min": -1.0, "max": 20000.0, "step": 0.01,
                                                  **NO_ROUND}),
                     ("end_at_sigma", "FLOAT", {"default": 12.0, "min": 0.0, "max": 20000.0, "step": 0.01,
                                                **NO_ROUND}),
                     ("spacing", ["linear", "cosine", "sine"], {})],
        **SIGMAS_OUT,
    },
    "SamplingPercentToSigma": {
        "required": [MODEL, ("sampling_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}),
                     ("return_actual_sigma", "BOOLEAN", {"default": False})],
        "output": ["FLOAT"], "output_name": ["sigma_value"],
    },
    "ModelSamplingDiscrete": {
        "required": [MODEL, ("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"], {}),
                     ("zsnr", "BOOLEAN", {"default": False})],
        **MODEL_OUT,
    },
    "ModelSamplingContinuousEDM": {
        "required": [MODEL, ("sampling", ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"], {}),
                     ("sigma_max", "FLOAT", {"default": 120.0, "min": 0.0, "max": 1000.0, "step": 0.001, **NO_ROUND}),
                     ("sigma_min", "FLOAT", {"default": 0.002, "min": 0.0, "max": 1000.0, "step": 0.001, **NO_ROUND})],
        **MODEL_OUT,
    },
    "ModelSamplingContinuousV": {
        "required": [MODEL, ("sampling", ["v_prediction"], {}),
                     ("sigma_max", "FLOAT", {"default": 500.0, "min": 0.0, "max": 1000.0, "step": 0.001, **NO_ROUND}),
                     ("sigma_min", "FLOAT", {"default": 0.03, "min": 0.0, "max": 1000.0, "step": 0.001, **NO_ROUND})],
        **MODEL_OUT,
    },
    "ModelComputeDtype": {"required": [MODEL, ("dtype", ["default", "fp32", "fp16", "bf16"], {})], **MODEL_OUT},
    "Epsilon Scaling": {
        "required": [MODEL, ("scaling_factor", "FLOAT", {"default": 1.005, "min": 0.5, "max": 1.5, "step": 0.001})],
        **MODEL_OUT,
    },
}
