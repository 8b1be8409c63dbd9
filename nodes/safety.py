"""Safety guidance nodes: SafeLatentDiffusion (Loom's own node; ComfyUI has none).

Safe Latent Diffusion (Schramowski et al. 2023) as diffusers' StableDiffusionPipelineSafe runs it: every
step also predicts the noise for a *safety concept* and steers the guidance away from it. The node
returns the MODEL with a sampling patch, so any KSampler or guider that samples it gets the guidance;
the maths is in engine/backend/sld.py.
"""

from __future__ import annotations

from engine.sdk import CLIP, COMBO, FLOAT, INT, MODEL, STRING, ClipHandle, Input, ModelHandle, Node, Output, RunContext

#: diffusers' StableDiffusionPipelineSafe default safety concept.
DEFAULT_SAFETY_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
    " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child"
    " abuse, brutality, cruelty"
)
#: "custom" uses the five numbers given; the others are diffusers' SafetyConfig presets.
PRESET_NAMES = ("custom", "WEAK", "MEDIUM", "STRONG", "MAX")


class SafeLatentDiffusion(Node):
    """Steer sampling away from a safety concept (Safe Latent Diffusion, diffusers' presets)."""

    display_name = "Safe Latent Diffusion"
    category = "sampling/guidance"
    inputs = (
        Input("model", MODEL),
        Input("clip", CLIP, tooltip="Encodes the safety concept; use the CLIP of the model's checkpoint."),
        Input("safety_concept", STRING, default=DEFAULT_SAFETY_CONCEPT, multiline=True,
              tooltip="What to steer away from (diffusers' default concept)."),
        Input("preset", COMBO, choices=list(PRESET_NAMES),
              tooltip="custom: the numbers below; WEAK / MEDIUM / STRONG / MAX: diffusers' SafetyConfig."),
        Input("sld_guidance_scale", FLOAT, default=1000.0, min=0.0, max=10000.0, step=1.0,
              tooltip="Strength of the safety guidance; 1 or less turns it off."),
        Input("sld_warmup_steps", INT, default=10, min=0, max=10000,
              tooltip="Steps before the safety guidance is applied."),
        Input("sld_threshold", FLOAT, default=0.01, min=0.0, max=1.0, step=0.001,
              tooltip="Where the prompt and the concept differ by this much or more, no safety guidance."),
        Input("sld_momentum_scale", FLOAT, default=0.3, min=0.0, max=10.0, step=0.01,
              tooltip="How much of the accumulated momentum is added each step."),
        Input("sld_mom_beta", FLOAT, default=0.4, min=0.0, max=1.0, step=0.01,
              tooltip="How much of the previous momentum is kept each step."),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, clip: ClipHandle, safety_concept: str, preset: str,
            sld_guidance_scale: float, sld_warmup_steps: int, sld_threshold: float, sld_momentum_scale: float,
            sld_mom_beta: float) -> tuple[ModelHandle]:
        from engine.sdk import safety

        if not safety_concept.strip():
            raise ValueError("SafeLatentDiffusion: input 'safety_concept' is empty; write the concept to steer "
                             "away from (or leave the default)")
        custom = safety.SafetySettings(sld_guidance_scale, sld_warmup_steps, sld_threshold, sld_momentum_scale,
                                       sld_mom_beta)
        settings = safety.settings_for(preset, custom)
        return (safety.with_safety_guidance(ctx, model, clip, safety_concept, settings),)


SAFETY_NODES: tuple[type[Node], ...] = (SafeLatentDiffusion,)
