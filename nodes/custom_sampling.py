"""Custom sampling (ComfyUI's SamplerCustom family): sampling split into its parts, on their own edges.

A SIGMAS edge carries a 1-D float tensor (the schedule nodes live in nodes/schedulers.py); SAMPLER,
NOISE and GUIDER edges carry small frozen values (engine.sdk.ops.SamplerChoice, NoiseSource, Guider:
a sampler name with options, a seed or "disabled", a MODEL handle with its conditionings and scales).
SamplerCustom and SamplerCustomAdvanced run them through the same pipeline as KSampler, so
CFGGuider + RandomNoise + BasicScheduler + KSamplerSelect give KSampler's latent exactly. Their
second output, denoised_output, is the last step's denoised estimate (x0).
"""

from __future__ import annotations

from typing import Any

from engine.sdk import (
    BOOLEAN,
    COMBO,
    CONDITIONING,
    FLOAT,
    GUIDER,
    INT,
    LATENT,
    MODEL,
    NOISE,
    SAMPLER,
    SAMPLER_NAMES,
    SEED_MAX,
    SIGMAS,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
)
from nodes.sampler_options import SAMPLER_OPTION_NODES

Latent = dict[str, Any]


def _cfg_input(name: str = "cfg") -> Input:
    return Input(name, FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)


def _seed_input() -> Input:
    return Input("noise_seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True)


_SAMPLED = (Output(LATENT, "output"), Output(LATENT, "denoised_output"))


class SamplerCustom(Node):
    """Sample with explicit sigmas and sampler, classifier-free guidance and seeded noise."""

    category = "sampling/custom_sampling"
    inputs = (
        Input("model", MODEL),
        Input("add_noise", BOOLEAN, default=True),
        _seed_input(),
        _cfg_input(),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("sampler", SAMPLER),
        Input("sigmas", SIGMAS),
        Input("latent_image", LATENT),
    )
    outputs = _SAMPLED

    def run(self, ctx: RunContext, model: ModelHandle, add_noise: bool, noise_seed: int, cfg: float,
            positive: list[Any], negative: list[Any], sampler: Any, sigmas: Any,
            latent_image: Latent) -> tuple[Latent, Latent]:
        from engine.sdk import ops

        guider = ops.Guider(model, ops.Guidance.classifier_free(positive, negative, cfg))
        result = ops.sample_custom_run(ctx, guider, ops.NoiseSource(noise_seed, add_noise), sampler, sigmas,
                                       latent_image)
        return result.latent, result.denoised


class SamplerCustomAdvanced(Node):
    """Sample with a noise source, a guider, a sampler and sigmas, each from its own node."""

    category = "sampling/custom_sampling"
    inputs = (
        Input("noise", NOISE),
        Input("guider", GUIDER),
        Input("sampler", SAMPLER),
        Input("sigmas", SIGMAS),
        Input("latent_image", LATENT),
    )
    outputs = _SAMPLED

    def run(self, ctx: RunContext, noise: Any, guider: Any, sampler: Any, sigmas: Any,
            latent_image: Latent) -> tuple[Latent, Latent]:
        from engine.sdk import ops

        result = ops.sample_custom_run(ctx, guider, noise, sampler, sigmas, latent_image)
        return result.latent, result.denoised


class KSamplerSelect(Node):
    """Pick a sampler by its KSampler name (default options)."""

    category = "sampling/samplers"
    inputs = (Input("sampler_name", COMBO, choices=SAMPLER_NAMES),)
    outputs = (Output(SAMPLER),)

    def run(self, ctx: RunContext, sampler_name: str) -> tuple[Any]:
        from engine.sdk import ops

        return (ops.SamplerChoice.of(sampler_name, "KSamplerSelect"),)


class RandomNoise(Node):
    """ComfyUI's seeded initial noise (the same as KSampler's for the same seed)."""

    category = "sampling/noise"
    inputs = (_seed_input(),)
    outputs = (Output(NOISE),)

    def run(self, ctx: RunContext, noise_seed: int) -> tuple[Any]:
        from engine.sdk import ops

        return (ops.NoiseSource(noise_seed),)


class DisableNoise(Node):
    """No initial noise: sample the latent as it is (e.g. after AddNoise, or a second pass)."""

    category = "sampling/noise"
    outputs = (Output(NOISE),)

    def run(self, ctx: RunContext) -> tuple[Any]:
        from engine.sdk import ops

        return (ops.NoiseSource(0, enabled=False),)


class AddNoise(Node):
    """Noise a latent to the span of a schedule (|first - last sigma|), in the model's latent space."""

    category = "experimental/custom_sampling/noise"
    inputs = (Input("model", MODEL), Input("noise", NOISE), Input("sigmas", SIGMAS), Input("latent_image", LATENT))
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, model: ModelHandle, noise: Any, sigmas: Any,
            latent_image: Latent) -> tuple[Latent]:
        from engine.sdk import ops

        return (ops.add_noise(model, noise, sigmas, latent_image),)


class BasicGuider(Node):
    """Guide with one conditioning only (no negative pass): for distilled and flux-style models."""

    category = "sampling/guiders"
    display_name = "Basic Guider"
    inputs = (Input("model", MODEL), Input("conditioning", CONDITIONING))
    outputs = (Output(GUIDER),)

    def run(self, ctx: RunContext, model: ModelHandle, conditioning: list[Any]) -> tuple[Any]:
        from engine.sdk import ops

        return (ops.Guider(model, ops.Guidance.basic(conditioning)),)


class CFGGuider(Node):
    """Classifier-free guidance: negative + (positive - negative) * cfg, as KSampler."""

    category = "sampling/guiders"
    display_name = "CFG Guider"
    inputs = (Input("model", MODEL), Input("positive", CONDITIONING), Input("negative", CONDITIONING), _cfg_input())
    outputs = (Output(GUIDER),)

    def run(self, ctx: RunContext, model: ModelHandle, positive: list[Any], negative: list[Any],
            cfg: float) -> tuple[Any]:
        from engine.sdk import ops

        return (ops.Guider(model, ops.Guidance.classifier_free(positive, negative, cfg)),)


class DualCFGGuider(Node):
    """Two prompts guided at once: cond2 against the negative (cfg_cond2_negative), cond1 against cond2
    (cfg_conds); "nested" applies the second guidance on top of the first."""

    category = "sampling/guiders"
    display_name = "Dual CFG Guider"
    inputs = (
        Input("model", MODEL),
        Input("cond1", CONDITIONING),
        Input("cond2", CONDITIONING),
        Input("negative", CONDITIONING),
        _cfg_input("cfg_conds"),
        _cfg_input("cfg_cond2_negative"),
        Input("style", COMBO, choices=("regular", "nested")),
    )
    outputs = (Output(GUIDER),)

    def run(self, ctx: RunContext, model: ModelHandle, cond1: list[Any], cond2: list[Any], negative: list[Any],
            cfg_conds: float, cfg_cond2_negative: float, style: str) -> tuple[Any]:
        from engine.sdk import ops

        guidance = ops.Guidance.dual(cond1, cond2, negative, cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return (ops.Guider(model, guidance),)


class PerpNegGuider(Node):
    """Perp-Neg: the negative prompt only removes what is perpendicular to the positive direction
    (guidance relative to an empty prompt)."""

    category = "_for_testing"
    inputs = (
        Input("model", MODEL),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("empty_conditioning", CONDITIONING),
        _cfg_input(),
        Input("neg_scale", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output(GUIDER),)

    def run(self, ctx: RunContext, model: ModelHandle, positive: list[Any], negative: list[Any],
            empty_conditioning: list[Any], cfg: float, neg_scale: float) -> tuple[Any]:
        from engine.sdk import ops

        guidance = ops.Guidance.perp_neg(positive, negative, empty_conditioning, cfg, neg_scale)
        return (ops.Guider(model, guidance),)


CUSTOM_SAMPLING_NODES: tuple[type[Node], ...] = (
    SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, RandomNoise, DisableNoise, AddNoise,
    BasicGuider, CFGGuider, DualCFGGuider, PerpNegGuider, *SAMPLER_OPTION_NODES,
)
