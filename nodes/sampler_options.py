"""Sampler-parameter nodes (SamplerEulerAncestral, SamplerDPMPP_2M_SDE, ...): a SAMPLER with options.

Each gives a sampler name and its options as ComfyUI's node does; the sampler itself runs when
SamplerCustom(Advanced) samples. ``noise_device`` gpu picks the ``*_gpu`` variant (noise drawn on the
compute device), cpu the plain one. A sampler this build lacks fails at sampling time with an error
naming it and the node.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import BOOLEAN, COMBO, FLOAT, INT, MODEL, SAMPLER, Input, ModelHandle, Node, Output, RunContext

_CATEGORY = "sampling/samplers"
_UNROUNDED = {"round": False}


def _float(name: str, default: float, max: float = 100.0, min: float = 0.0, step: float = 0.01) -> Input:
    return Input(name, FLOAT, default=default, min=min, max=max, step=step, extra=_UNROUNDED)


def _eta_noise(eta_max: float = 100.0, noise_max: float = 100.0) -> tuple[Input, Input]:
    return _float("eta", 1.0, eta_max), _float("s_noise", 1.0, noise_max)


def _noise_device() -> Input:
    return Input("noise_device", COMBO, choices=("gpu", "cpu"))


def _choice(name: str, source: str, **options: Any) -> tuple[Any]:
    from engine.sdk import ops

    return (ops.SamplerChoice.of(name, source, **options),)


def _device_name(name: str, noise_device: str) -> str:
    return name if noise_device == "cpu" else f"{name}_gpu"


class SamplerEulerAncestral(Node):
    """Euler ancestral with its eta (noise amount) and s_noise."""

    category = _CATEGORY
    inputs = _eta_noise()
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, eta: float, s_noise: float) -> tuple[Any]:
        return _choice("euler_ancestral", "SamplerEulerAncestral", eta=eta, s_noise=s_noise)


class SamplerEulerAncestralCFGPP(Node):
    """Euler ancestral CFG++ with its eta and s_noise."""

    category = _CATEGORY
    display_name = "SamplerEulerAncestralCFG++"
    inputs = _eta_noise(eta_max=1.0, noise_max=10.0)
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, eta: float, s_noise: float) -> tuple[Any]:
        return _choice("euler_ancestral_cfg_pp", "SamplerEulerAncestralCFGPP", eta=eta, s_noise=s_noise)


class SamplerEulerCFGpp(Node):
    """Euler CFG++: "regular" is the euler_cfg_pp sampler, "alternative" the Euler step on
    x - 2 * denoised + uncond_denoised."""

    category = "_for_testing"
    display_name = "SamplerEulerCFG++"
    inputs = (Input("version", COMBO, choices=("regular", "alternative")),)
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, version: str) -> tuple[Any]:
        name = "euler_cfg_pp_alternative" if version == "alternative" else "euler_cfg_pp"
        return _choice(name, "SamplerEulerCFGpp")


class SamplerLMS(Node):
    """Linear multistep with its order."""

    category = _CATEGORY
    inputs = (Input("order", INT, default=4, min=1, max=100),)
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, order: int) -> tuple[Any]:
        return _choice("lms", "SamplerLMS", order=order)


class SamplerDPMPP_2M_SDE(Node):  # noqa: N801 - ComfyUI's node name
    """DPM++ 2M SDE with its solver type, eta, s_noise and noise device."""

    category = _CATEGORY
    inputs = (Input("solver_type", COMBO, choices=("midpoint", "heun")), *_eta_noise(), _noise_device())
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, solver_type: str, eta: float, s_noise: float, noise_device: str) -> tuple[Any]:
        return _choice(_device_name("dpmpp_2m_sde", noise_device), "SamplerDPMPP_2M_SDE", eta=eta, s_noise=s_noise,
                       solver_type=solver_type)


class SamplerDPMPP_3M_SDE(Node):  # noqa: N801 - ComfyUI's node name
    """DPM++ 3M SDE with its eta, s_noise and noise device."""

    category = _CATEGORY
    inputs = (*_eta_noise(), _noise_device())
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, eta: float, s_noise: float, noise_device: str) -> tuple[Any]:
        return _choice(_device_name("dpmpp_3m_sde", noise_device), "SamplerDPMPP_3M_SDE", eta=eta, s_noise=s_noise)


class SamplerDPMPP_SDE(Node):  # noqa: N801 - ComfyUI's node name
    """DPM++ SDE with its eta, s_noise, r (midpoint ratio) and noise device."""

    category = _CATEGORY
    inputs = (*_eta_noise(), _float("r", 0.5), _noise_device())
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, eta: float, s_noise: float, r: float, noise_device: str) -> tuple[Any]:
        return _choice(_device_name("dpmpp_sde", noise_device), "SamplerDPMPP_SDE", eta=eta, s_noise=s_noise, r=r)


class SamplerDPMPP_2S_Ancestral(Node):  # noqa: N801 - ComfyUI's node name
    """DPM++ 2S ancestral with its eta and s_noise."""

    category = _CATEGORY
    inputs = _eta_noise()
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, eta: float, s_noise: float) -> tuple[Any]:
        return _choice("dpmpp_2s_ancestral", "SamplerDPMPP_2S_Ancestral", eta=eta, s_noise=s_noise)


class SamplerDPMAdaptative(Node):
    """DPM-Solver adaptive with its order, tolerances and PID step-size controller."""

    category = _CATEGORY
    inputs = (
        Input("order", INT, default=3, min=2, max=3),
        _float("rtol", 0.05), _float("atol", 0.0078), _float("h_init", 0.05), _float("pcoeff", 0.0),
        _float("icoeff", 1.0), _float("dcoeff", 0.0), _float("accept_safety", 0.81), _float("eta", 0.0),
        _float("s_noise", 1.0),
    )
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, order: int, rtol: float, atol: float, h_init: float, pcoeff: float,
            icoeff: float, dcoeff: float, accept_safety: float, eta: float, s_noise: float) -> tuple[Any]:
        return _choice("dpm_adaptive", "SamplerDPMAdaptative", order=order, rtol=rtol, atol=atol, h_init=h_init,
                       pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta,
                       s_noise=s_noise)


class SamplerER_SDE(Node):  # noqa: N801 - ComfyUI's node name
    """ER-SDE: the ER-SDE solver, the reverse-time SDE (noise scaler x^(eta+1)) or its ODE."""

    category = _CATEGORY
    inputs = (
        Input("solver_type", COMBO, choices=("ER-SDE", "Reverse-time SDE", "ODE")),
        Input("max_stage", INT, default=3, min=1, max=3),
        _float("eta", 1.0),
        _float("s_noise", 1.0),
    )
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, solver_type: str, max_stage: int, eta: float, s_noise: float) -> tuple[Any]:
        from engine.sdk import ops

        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0.0, 0.0
        scaler = None if solver_type == "ER-SDE" else ops.PowerNoiseScaler(eta)
        return _choice("er_sde", "SamplerER_SDE", s_noise=s_noise, noise_scaler=scaler, max_stage=max_stage)


class SamplerSASolver(Node):
    """SA-Solver with its stochastic window (in sampling percent), orders and PECE mode."""

    category = _CATEGORY
    inputs = (
        Input("model", MODEL),
        _float("eta", 1.0, max=10.0),
        Input("sde_start_percent", FLOAT, default=0.2, min=0.0, max=1.0, step=0.001),
        Input("sde_end_percent", FLOAT, default=0.8, min=0.0, max=1.0, step=0.001),
        _float("s_noise", 1.0),
        Input("predictor_order", INT, default=3, min=1, max=6),
        Input("corrector_order", INT, default=4, min=0, max=6),
        Input("use_pece", BOOLEAN, default=False),
        Input("simple_order_2", BOOLEAN, default=False),
    )
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, model: ModelHandle, eta: float, sde_start_percent: float,
            sde_end_percent: float, s_noise: float, predictor_order: int, corrector_order: int, use_pece: bool,
            simple_order_2: bool) -> tuple[Any]:
        from engine.sdk import ops

        if simple_order_2:
            raise ValueError("SamplerSASolver: simple_order_2 is not supported by Loom's SA-Solver yet; "
                             "switch simple_order_2 off")
        ms = ops.model_sampling(model)
        tau = ops.TauInterval(ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent), eta)
        name = "sa_solver_pece" if use_pece else "sa_solver"
        return _choice(name, "SamplerSASolver", tau_func=tau, s_noise=s_noise, predictor_order=predictor_order,
                       corrector_order=corrector_order)


class SamplerLCMUpscale(Node):
    """LCM that upscales the latent between steps towards scale_ratio (scale_steps -1: about half the steps)."""

    category = "sampling/custom_sampling/samplers"
    inputs = (
        Input("scale_ratio", FLOAT, default=1.0, min=0.1, max=20.0, step=0.01),
        Input("scale_steps", INT, default=-1, min=-1, max=1000, step=1),
        Input("upscale_method", COMBO, choices=("bislerp", "nearest-exact", "bilinear", "area", "bicubic")),
    )
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple[Any]:
        return _choice("lcm_upscale", "SamplerLCMUpscale", total_upscale=scale_ratio,
                       upscale_steps=None if scale_steps < 0 else scale_steps, upscale_method=upscale_method)


SAMPLER_OPTION_NODES: tuple[type[Node], ...] = (
    SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerEulerCFGpp, SamplerLMS, SamplerDPMPP_2M_SDE,
    SamplerDPMPP_3M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE,
    SamplerSASolver, SamplerLCMUpscale,
)
