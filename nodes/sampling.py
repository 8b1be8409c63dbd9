"""KSampler and KSamplerAdvanced: denoise a latent with a model, prompts, a sampler and a schedule.

Same seed, same settings, same checkpoint -> the same latent as ComfyUI: noise is one CPU
``torch.randn`` of the whole batch seeded with the seed; sigmas, samplers, CFG and noise scaling
follow ComfyUI. The nodes only map their inputs onto a sampling request; the pipeline lives in
engine/backend/pipeline.py. Progress is reported every step and an interrupt stops the sampler
between steps.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import (
    COMBO,
    CONDITIONING,
    FLOAT,
    INT,
    LATENT,
    MODEL,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    SEED_MAX,
    Input,
    ModelHandle,
    Node,
    Output,
    RunContext,
)

Latent = dict[str, Any]


def _common_inputs() -> tuple[Input, ...]:
    return (
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="Classifier-free guidance: how strongly to follow the prompt."),
        Input("sampler_name", COMBO, choices=SAMPLER_NAMES),
        Input("scheduler", COMBO, choices=SCHEDULER_NAMES),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("latent_image", LATENT),
    )


class KSampler(Node):
    """Denoise a latent: the heart of text-to-image and image-to-image."""

    category = "sampling"
    inputs = (
        Input("model", MODEL),
        Input("seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True,
              tooltip="The noise seed."),
        Input("steps", INT, default=20, min=1, max=10000),
        *_common_inputs(),
        Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
              tooltip="Below 1, keep part of the input latent (image-to-image)."),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str,
            scheduler: str, positive: list[Any], negative: list[Any], latent_image: Latent,
            denoise: float) -> tuple[Latent]:
        from engine.sdk import ops

        request = ops.SamplingRequest(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                                      scheduler=scheduler, positive=positive, negative=negative,
                                      latent=latent_image, denoise=denoise)
        return (ops.sample(ctx, model, request),)


class KSamplerAdvanced(Node):
    """KSampler with control over noise and the range of steps (for multi-pass workflows)."""

    category = "sampling"
    inputs = (
        Input("model", MODEL),
        Input("add_noise", COMBO, choices=("enable", "disable")),
        Input("noise_seed", INT, default=0, min=0, max=SEED_MAX, control_after_generate=True),
        Input("steps", INT, default=20, min=1, max=10000),
        *_common_inputs(),
        Input("start_at_step", INT, default=0, min=0, max=10000),
        Input("end_at_step", INT, default=10000, min=0, max=10000),
        Input("return_with_leftover_noise", COMBO, choices=("disable", "enable")),
    )
    outputs = (Output(LATENT),)

    def run(self, ctx: RunContext, model: ModelHandle, add_noise: str, noise_seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, positive: list[Any], negative: list[Any], latent_image: Latent,
            start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple[Latent]:
        from engine.sdk import ops

        request = ops.SamplingRequest(seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                                      scheduler=scheduler, positive=positive, negative=negative,
                                      latent=latent_image, add_noise=add_noise == "enable",
                                      start_step=start_at_step, last_step=end_at_step,
                                      force_full_denoise=return_with_leftover_noise == "disable")
        return (ops.sample(ctx, model, request),)


SAMPLING_NODES = (KSampler, KSamplerAdvanced)
