"""Torch-side sampling patches that run a pack's ComfyUI model functions inside Loom's sampling.

A pack's ``set_model_sampler_cfg_function`` / ``set_model_sampler_post_cfg_function`` /
``set_model_sampler_pre_cfg_function`` (and ``transformer_options["patches"]`` entries) become
:class:`ComfyGuidancePatch` and :class:`ComfyUnetPatch` objects on the MODEL handle
(``ModelHandle.sampling_patches``). ``install(hooks, model_sampling)`` adds adapters to the run's
:class:`~engine.backend.guidance.GuidanceHooks` that call the pack's function with the ``args`` dict
ComfyUI's samplers.py builds (interface facts only):

* cfg function: ``cond`` / ``uncond`` are noise-like (``input - denoised``), ``cond_denoised`` /
  ``uncond_denoised`` the predictions, ``cond_scale``, ``timestep`` and ``sigma`` (the step's sigma),
  ``input``, ``model``, ``model_options``, ``input_cond`` / ``input_uncond``; it returns a noise-like
  value and the step's prediction is ``input - result``;
* post-cfg function: ``denoised``, ``cond`` / ``uncond`` (the conditionings), ``cond_denoised``,
  ``uncond_denoised``, ``cond_scale``, ``sigma``, ``input``, ``model``, ``model_options``; it returns
  the new denoised value;
* pre-cfg function: ``conds`` ([cond, uncond or None]), ``conds_out`` ([cond_pred, uncond_pred]),
  ``cond_scale``, ``timestep``, ``sigma``, ``input``, ``model``, ``model_options``; it returns the list.

Where cfg 1 skipped the uncond pass, ComfyUI hands its functions an all-zero uncond prediction; so
do these adapters. The patches are frozen dataclasses: picklable when the pack's function is (a
module-level function is, a lambda is not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.backend.guidance import GuidanceHooks, GuidanceStep, StepPreCfg

__all__ = ["GUIDANCE_KINDS", "UNET_POINTS", "ComfyGuidancePatch", "ComfyInnerModel", "ComfyUnetPatch",
           "transformer_options"]

#: The kinds of :class:`ComfyGuidancePatch`, by the ``model_options`` key ComfyUI keeps them under.
GUIDANCE_KINDS = {"sampler_cfg_function": "cfg", "sampler_post_cfg_function": "post_cfg",
                  "sampler_pre_cfg_function": "pre_cfg"}

#: ``transformer_options["patches"]`` points Loom's UNet calls with ComfyUI's arguments, the last one
#: being the options dict (engine.backend.unet lists the points).
UNET_POINTS = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "input_block_patch",
               "input_block_patch_after_skip", "middle_block_patch", "output_block_patch")


class ComfyInnerModel:
    """What ``args["model"]`` offers a pack's function: ComfyUI's BaseModel reduced to ``model_sampling``."""

    def __init__(self, model_sampling: Any) -> None:
        self.model_sampling = model_sampling


def _uncond(step: GuidanceStep) -> Tensor:
    return step.uncond_denoised if step.uncond_denoised is not None else torch.zeros_like(step.cond_denoised)


@dataclass(frozen=True)
class ComfyGuidancePatch:
    """A pack's cfg / post-cfg / pre-cfg function (``kind``: "cfg", "post_cfg" or "pre_cfg").

    ``needs_uncond`` is ComfyUI's ``disable_cfg1_optimization``: the uncond pass runs at cfg 1 too.
    ``options`` is the ``model_options`` dict the function sees (not part of equality or hashing).
    """

    kind: str
    function: Callable[[dict[str, Any]], Any]
    needs_uncond: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        """Add this function to the run's hooks (a cfg function replaces any earlier one)."""
        model = ComfyInnerModel(model_sampling)
        hooks.needs_uncond = hooks.needs_uncond or self.needs_uncond
        if self.kind == "cfg":
            hooks.cfg_function = lambda step: self.cfg(step, model)
        elif self.kind == "post_cfg":
            hooks.post_cfg.append(lambda step, denoised: self.post_cfg(step, denoised, model))
        elif self.kind == "pre_cfg":
            hooks.pre_cfg.append(StepPreCfg(lambda step: self.pre_cfg(step, model)))
        else:
            raise ValueError(f"unknown ComfyUI model function kind {self.kind!r}")

    def _common(self, step: GuidanceStep, model: ComfyInnerModel) -> dict[str, Any]:
        return {"cond_scale": step.cfg_scale, "timestep": step.sigma, "sigma": step.sigma, "input": step.x,
                "model": model, "model_options": dict(self.options)}

    def cfg(self, step: GuidanceStep, model: ComfyInnerModel) -> Tensor:
        """The step's prediction: ``input - function(args)``."""
        cond, uncond, x = step.cond_denoised, _uncond(step), step.x
        args = {**self._common(step, model), "cond": x - cond, "uncond": x - uncond, "cond_denoised": cond,
                "uncond_denoised": uncond, "input_cond": step.cond, "input_uncond": step.uncond}
        return x - self.function(args)

    def post_cfg(self, step: GuidanceStep, denoised: Tensor, model: ComfyInnerModel) -> Tensor:
        """The function's new denoised value."""
        args = {**self._common(step, model), "denoised": denoised, "cond": step.cond, "uncond": step.uncond,
                "cond_denoised": step.cond_denoised, "uncond_denoised": _uncond(step)}
        del args["timestep"]  # ComfyUI's post-cfg args have "sigma" only
        result: Tensor = self.function(args)
        return result

    def pre_cfg(self, step: GuidanceStep, model: ComfyInnerModel) -> tuple[Tensor, Tensor | None]:
        """The two predictions as the function returns them (uncond stays None when it was skipped)."""
        skipped = step.uncond_denoised is None
        args = {**self._common(step, model), "conds": [step.cond, None if skipped else step.uncond],
                "conds_out": [step.cond_denoised, _uncond(step)]}
        out = self.function(args)
        return out[0], None if skipped else out[1]


def transformer_options(ctx: Any) -> dict[str, Any]:
    """ComfyUI's ``transformer_options`` / ``extra_options`` as far as Loom's PatchContext knows them."""
    return {"block": ctx.block, "block_index": ctx.block_index, "n_heads": ctx.heads, "dim_head": ctx.dim_head,
            "original_shape": list(ctx.original_shape), "timestep": ctx.timestep}


@dataclass(frozen=True)
class ComfyUnetPatch:
    """A pack's function at one of the UNet's patch points (:data:`UNET_POINTS`), called as ComfyUI calls it:
    the point's tensors, then the options dict (:func:`transformer_options`)."""

    point: str
    function: Callable[..., Any]

    def install(self, hooks: GuidanceHooks, model_sampling: Any) -> None:
        if self.point not in UNET_POINTS:
            raise ValueError(f"Loom's UNet has no patch point {self.point!r}")
        hooks.add_unet_patch(self.point, self.call)

    def call(self, *values: Any) -> Any:
        """The patch point's values with Loom's PatchContext last, passed on with the options dict instead."""
        *tensors, ctx = values
        return self.function(*tensors, transformer_options(ctx))
