"""Guidance patch nodes (ComfyUI's RescaleCFG, CFGZeroStar, CFGNorm, APG, TCFG, Mahiro, FreSca, PerpNeg
and DifferentialDiffusion): each returns the MODEL with one more sampling patch.

The patches (:mod:`engine.sdk.guidance`) are frozen, picklable objects a MODEL handle carries; they add
hooks to each sampling run and change nothing else, so the input MODEL samples as before. Several
patches compose in the order of the nodes; a cfg function (RescaleCFG, PerpNeg) replaces CFG, and of
two the later one wins, as in ComfyUI.
"""

from __future__ import annotations

from typing import Any

from engine.sdk import CONDITIONING, FLOAT, INT, MODEL, Input, ModelHandle, Node, Output, RunContext

_MODEL_IN = Input("model", MODEL)
_PATCHED = (Output(MODEL, name="patched_model"),)


class RescaleCFG(Node):
    """CFG on v-predictions with its standard deviation rescaled to the cond's (Lin et al. 2023)."""

    category = "advanced/model"
    inputs = (_MODEL_IN, Input("multiplier", FLOAT, default=0.7, min=0.0, max=1.0, step=0.01))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, multiplier: float) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.RescaleCFG(multiplier)),)


class CFGZeroStar(Node):
    """CFG-Zero*: CFG against the uncond prediction scaled by its optimal projection on the cond's."""

    category = "advanced/guidance"
    inputs = (_MODEL_IN,)
    outputs = _PATCHED

    def run(self, ctx: RunContext, model: ModelHandle) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.CFGZeroStar()),)


class CFGNorm(Node):
    """Caps the guided prediction's per-pixel norm at the cond prediction's, times strength."""

    category = "advanced/guidance"
    inputs = (_MODEL_IN, Input("strength", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01))
    outputs = _PATCHED

    def run(self, ctx: RunContext, model: ModelHandle, strength: float) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.CFGNorm(strength)),)


class APG(Node):
    """Adaptive Projected Guidance: the guidance's part parallel to the cond prediction is scaled by eta,
    its norm capped, optionally averaged over the steps."""

    display_name = "Adaptive Projected Guidance"
    category = "sampling/custom_sampling"
    inputs = (
        _MODEL_IN,
        Input("eta", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01,
              tooltip="Controls the scale of the parallel guidance vector. Default CFG behavior at a setting of 1."),
        Input("norm_threshold", FLOAT, default=5.0, min=0.0, max=50.0, step=0.1,
              tooltip="Normalize guidance vector to this value, normalization disable at a setting of 0."),
        Input("momentum", FLOAT, default=0.0, min=-5.0, max=1.0, step=0.01,
              tooltip="Controls a running average of guidance during diffusion, disabled at a setting of 0."),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, eta: float, norm_threshold: float,
            momentum: float) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.APG(eta, norm_threshold, momentum)),)


class TCFG(Node):
    """Tangential Damping CFG: the uncond prediction keeps only its component along the cond's."""

    display_name = "Tangential Damping CFG"
    category = "advanced/guidance"
    description = ("TCFG – Tangential Damping CFG (2503.18137)\n\nRefine the uncond (negative) to align with "
                   "the cond (positive) for improving quality.")
    inputs = (_MODEL_IN,)
    outputs = _PATCHED

    def run(self, ctx: RunContext, model: ModelHandle) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.TCFG()),)


class Mahiro(Node):
    """Leans the guidance toward the direction of the positive prompt."""

    display_name = "Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)"
    category = "_for_testing"
    description = ("Modify the guidance to scale more on the 'direction' of the positive prompt rather than the "
                   "difference between the negative prompt.")
    inputs = (_MODEL_IN,)
    outputs = _PATCHED

    def run(self, ctx: RunContext, model: ModelHandle) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.Mahiro()),)


class FreSca(Node):
    """Scales the low and high spatial frequencies of the guidance (cond - uncond) differently."""

    display_name = "FreSca"
    category = "_for_testing"
    description = "Applies frequency-dependent scaling to the guidance"
    inputs = (
        _MODEL_IN,
        Input("scale_low", FLOAT, default=1.0, min=0, max=10, step=0.01,
              tooltip="Scaling factor for low-frequency components"),
        Input("scale_high", FLOAT, default=1.25, min=0, max=10, step=0.01,
              tooltip="Scaling factor for high-frequency components"),
        Input("freq_cutoff", INT, default=20, min=1, max=10000, step=1,
              tooltip="Number of frequency indices around center to consider as low-frequency"),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, scale_low: float, scale_high: float,
            freq_cutoff: int) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.FreSca(scale_low, scale_high, freq_cutoff)),)


class PerpNeg(Node):
    """Perp-Neg as a model patch: only the part of the negative prompt's guidance perpendicular to the
    positive's is subtracted (the empty prompt is the reference). PerpNegGuider replaces it."""

    display_name = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    category = "_for_testing"
    inputs = (
        _MODEL_IN,
        Input("empty_conditioning", CONDITIONING),
        Input("neg_scale", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, empty_conditioning: Any,
            neg_scale: float) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.PerpNeg(empty_conditioning, neg_scale)),)


class DifferentialDiffusion(Node):
    """Inpainting with a soft mask: each pixel is regenerated for the share of the steps its mask value
    gives (the mask is thresholded against the schedule's progress at every step)."""

    display_name = "Differential Diffusion"
    category = "_for_testing"
    inputs = (_MODEL_IN, Input("strength", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, optional=True))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model: ModelHandle, strength: float = 1.0) -> tuple[ModelHandle]:
        from engine.sdk import guidance

        return (model.with_sampling_patch(guidance.DifferentialDiffusion(strength)),)


GUIDANCE_NODES: tuple[type[Node], ...] = (
    RescaleCFG, CFGZeroStar, CFGNorm, APG, TCFG, Mahiro, FreSca, PerpNeg, DifferentialDiffusion,
)
