"""ComfyUI's interface for the custom-sampling nodes other than schedulers and sigma tools
(comfy_extras/nodes_custom_sampler.py, nodes_perpneg.py's PerpNegGuider, nodes_advanced_samplers.py's
SamplerLCMUpscale and SamplerEulerCFGpp)."""

from __future__ import annotations

from typing import Any

SEED_MAX = 0xFFFFFFFFFFFFFFFF
Spec = tuple[str, Any, dict[str, Any]]


def cfg(name: str = "cfg") -> Spec:
    return (name, "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def unrounded(name: str, default: float, max: float = 100.0) -> Spec:
    return (name, "FLOAT", {"default": default, "min": 0.0, "max": max, "step": 0.01, "round": False})


SEED: Spec = ("noise_seed", "INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True})
SAMPLED = {"output": ["LATENT", "LATENT"], "output_name": ["output", "denoised_output"]}
SAMPLER_OUT = {"output": ["SAMPLER"]}
GUIDER_OUT = {"output": ["GUIDER"]}
NOISE_OUT = {"output": ["NOISE"]}
ETA_NOISE = [unrounded("eta", 1.0), unrounded("s_noise", 1.0)]
NOISE_DEVICE: Spec = ("noise_device", ["gpu", "cpu"], {})

EXPECTED: dict[str, dict[str, Any]] = {
    "SamplerCustom": {
        "required": [("model", "MODEL", {}), ("add_noise", "BOOLEAN", {"default": True}), SEED, cfg(),
                     ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("sampler", "SAMPLER", {}),
                     ("sigmas", "SIGMAS", {}), ("latent_image", "LATENT", {})],
        **SAMPLED,
    },
    "SamplerCustomAdvanced": {
        "required": [("noise", "NOISE", {}), ("guider", "GUIDER", {}), ("sampler", "SAMPLER", {}),
                     ("sigmas", "SIGMAS", {}), ("latent_image", "LATENT", {})],
        **SAMPLED,
    },
    # a combo of KSampler's sampler names (test_custom_sampling.py checks it is KSampler's exact list)
    "KSamplerSelect": {"required": [("sampler_name", "FILES", {})], **SAMPLER_OUT},
    "RandomNoise": {"required": [SEED], **NOISE_OUT},
    "DisableNoise": {"required": [], **NOISE_OUT},
    "AddNoise": {
        "required": [("model", "MODEL", {}), ("noise", "NOISE", {}), ("sigmas", "SIGMAS", {}),
                     ("latent_image", "LATENT", {})],
        "output": ["LATENT"],
    },
    "BasicGuider": {"required": [("model", "MODEL", {}), ("conditioning", "CONDITIONING", {})], **GUIDER_OUT},
    "CFGGuider": {
        "required": [("model", "MODEL", {}), ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
                     cfg()],
        **GUIDER_OUT,
    },
    "DualCFGGuider": {
        "required": [("model", "MODEL", {}), ("cond1", "CONDITIONING", {}), ("cond2", "CONDITIONING", {}),
                     ("negative", "CONDITIONING", {}), cfg("cfg_conds"), cfg("cfg_cond2_negative"),
                     ("style", ["regular", "nested"], {})],
        **GUIDER_OUT,
    },
    "PerpNegGuider": {
        "required": [("model", "MODEL", {}), ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
                     ("empty_conditioning", "CONDITIONING", {}), cfg(),
                     ("neg_scale", "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})],
        **GUIDER_OUT,
    },
    "SamplerEulerAncestral": {"required": ETA_NOISE, **SAMPLER_OUT},
    "SamplerEulerAncestralCFGPP": {"required": [unrounded("eta", 1.0, 1.0), unrounded("s_noise", 1.0, 10.0)],
                                   **SAMPLER_OUT},
    "SamplerEulerCFGpp": {"required": [("version", ["regular", "alternative"], {})], **SAMPLER_OUT},
    "SamplerLMS": {"required": [("order", "INT", {"default": 4, "min": 1, "max": 100})], **SAMPLER_OUT},
    "SamplerDPMPP_2M_SDE": {"required": [("solver_type", ["midpoint", "heun"], {}), *ETA_NOISE, NOISE_DEVICE],
                            **SAMPLER_OUT},
    "SamplerDPMPP_3M_SDE": {"required": [*ETA_NOISE, NOISE_DEVICE], **SAMPLER_OUT},
    "SamplerDPMPP_SDE": {"required": [*ETA_NOISE, unrounded("r", 0.5), NOISE_DEVICE], **SAMPLER_OUT},
    "SamplerDPMPP_2S_Ancestral": {"required": ETA_NOISE, **SAMPLER_OUT},
    "SamplerDPMAdaptative": {
        "required": [("order", "INT", {"default": 3, "min": 2, "max": 3}), unrounded("rtol", 0.05),
                     unrounded("atol", 0.0078), unrounded("h_init", 0.05), unrounded("pcoeff", 0.0),
                     unrounded("icoeff", 1.0), unrounded("dcoeff", 0.0), unrounded("accept_safety", 0.81),
                     unrounded("eta", 0.0), unrounded("s_noise", 1.0)],
        **SAMPLER_OUT,
    },
    "SamplerER_SDE": {
        "required": [("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"], {}),
                     ("max_stage", "INT", {"default": 3, "min": 1, "max": 3}), unrounded("eta", 1.0),
                     unrounded("s_noise", 1.0)],
        **SAMPLER_OUT,
    },
    "SamplerSASolver": {
        "required": [("model", "MODEL", {}), unrounded("eta", 1.0, 10.0),
                     ("sde_start_percent", "FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.001}),
                     ("sde_end_percent", "FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.001}),
                     unrounded("s_noise", 1.0),
                     ("predictor_order", "INT", {"default": 3, "min": 1, "max": 6}),
                     ("corrector_order", "INT", {"default": 4, "min": 0, "max": 6}),
                     ("use_pece", "BOOLEAN", {}), ("simple_order_2", "BOOLEAN", {})],
        **SAMPLER_OUT,
    },
    "SamplerLCMUpscale": {
        "required": [("scale_ratio", "FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}),
                     ("scale_steps", "INT", {"default": -1, "min": -1, "max": 1000, "step": 1}),
                     ("upscale_method", ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"], {})],
        **SAMPLER_OUT,
    },
}
