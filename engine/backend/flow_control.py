"""ControlNets on SD3/SD3.5 and Flux.1 models during sampling: the control function
:class:`~engine.backend.conditioning.UNetApply` calls for every batched model call, whose residuals
:class:`~engine.backend.flow_apply.FlowTransformerCall` hands to the transformer (``control=``).

The semantics are those of the UNet ControlNets (engine/backend/control_apply.py, ComfyUI's): every
:class:`~engine.backend.control_apply.ControlSpec` of a conditioning entry's chain acts while the step's sigma lies
in ``[percent_to_sigma(end), percent_to_sigma(start)]``, its residuals multiplied by ``strength`` and added to the
chain's earlier ones; each distinct chain of a batch runs once on its entries' rows, other rows get zeros.

The hint image is fitted to the latent size x 8 (centre crop, nearest-exact) once per size, then:

* latent hints (SD3, InstantX Flux): encoded by the spec's ``vae`` (a callable from pixels ``[B, 3, H, W]`` in 0..1
  to VAE latents; ControlNetApplyAdvanced's ``vae`` input) and put in the net's ``hint_format``; an inpainting net's
  extra mask channel is all ones (ComfyUI's default without a mask);
* pixel hints (XLabs Flux): as they are.

Residuals are ``{"double": [...], "single": [...]}`` with one entry per block of the sampled model (tensors
``[B, image tokens, hidden]``); a residual feeding several blocks is one tensor, scaled and summed once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from engine.backend.control_apply import (
    ControlSpec,
    all_control_specs,
    assemble_rows,
    control_groups,
    fit_hint,
    member_rows,
    net_label,
    tile_rows,
)
from engine.backend.flow_apply import FLUX_DEFAULT_GUIDANCE
from engine.backend.flux import Flux
from engine.backend.flux_controlnet import FluxControlNet
from engine.backend.mmdit import MMDiT
from engine.backend.mmdit_controlnet import SD3ControlNet
from engine.backend.model_sampling import ModelSampling

__all__ = ["FlowControlApplier", "FlowResiduals", "fit_problem", "flow_control_function"]

log = logging.getLogger(__name__)

FlowNet = SD3ControlNet | FluxControlNet
FlowResiduals = dict[str, list[Tensor | None]]
#: Turns ``ControlSpec.net`` (a CONTROL_NET handle) into a loaded net (any kind: others are refused here).
Resolve = Callable[[Any], Any]


def _describe(net: Any) -> str:
    config = getattr(net, "config", None)
    describe = getattr(config, "describe", None)
    return describe() if callable(describe) else f"a {type(net).__name__}"


def fit_problem(net: Any, model: MMDiT | Flux) -> str | None:
    """Why ``net`` cannot steer ``model`` (another family, other widths), or None."""
    if isinstance(model, MMDiT):
        if not isinstance(net, SD3ControlNet):
            return "it is not an SD3 ControlNet"
        mine, theirs = net.config.mmdit, model.config
        pairs = {"hidden size": (mine.hidden_size, theirs.hidden_size), "patch size": (mine.patch_size,
                 theirs.patch_size), "text width": (mine.context_in_dim, theirs.context_in_dim)}
    else:
        if not isinstance(net, FluxControlNet):
            return "it is not a Flux ControlNet"
        f, g = net.config.flux, model.config
        pairs = {"hidden size": (f.hidden_size, g.hidden_size), "heads": (f.num_heads, g.num_heads),
                 "text width": (f.context_in_dim, g.context_in_dim), "pooled width": (f.vec_in_dim, g.vec_in_dim)}
    for what, (mine_value, model_value) in pairs.items():
        if mine_value != model_value:
            return f"its {what} is {mine_value}, the model's {model_value}"
    return None


def flow_control_function(conds: Iterable[Sequence[Any]], model_sampling: ModelSampling, resolve: Resolve,
                          model: MMDiT | Flux) -> FlowControlApplier | None:
    """The control function for a run of ``model`` over ``conds`` (lists of CondSpecs), or None when no entry has a
    ControlNet. Every net is loaded and checked up front, so a ControlNet for another family, or a latent-hint net
    without a VAE, fails before the first step."""
    label = "SD3" if isinstance(model, MMDiT) else "Flux"
    nets: dict[ControlSpec, FlowNet] = {}
    for spec in all_control_specs(conds):
        net = spec.net if isinstance(spec.net, nn.Module) else resolve(spec.net)
        problem = fit_problem(net, model)
        if problem or not isinstance(net, (SD3ControlNet, FluxControlNet)):
            raise ValueError(f"ControlNet {net_label(spec.net)} ({_describe(net)}) does not fit this {label} model: "
                             f"{problem}; use a ControlNet made for {label} models of this size")
        problem = _spec_problem(spec, net)
        if problem:
            raise ValueError(f"ControlNet {net_label(spec.net)} ({_describe(net)}) {problem}")
        nets[spec] = net
    if not nets:
        return None
    log.debug("sampling %s with %d ControlNet(s)", label, len(nets))
    return FlowControlApplier(model_sampling, nets, model)


def _spec_problem(spec: ControlSpec, net: FlowNet) -> str | None:
    """What the apply node left out for this net (its VAE; a union mode it knows), or None."""
    if net.hint_format is not None and spec.vae is None:
        return ("takes the hint image as a VAE latent: connect the model's VAE to the vae input of Apply ControlNet "
                "(ControlNetApplyAdvanced)")
    mode = getattr(spec.net, "union_type", None)
    modes = net.config.union_modes if isinstance(net, FluxControlNet) else 0
    if mode is not None and modes and not 0 <= mode < modes:
        return (f"knows {modes} union modes; SetUnionControlNetType's type index {mode} is not one of them: pick "
                f"one of the first {modes} types")
    return None


def _scaled(out: Mapping[str, Sequence[Tensor | None]], strength: float) -> FlowResiduals:
    """Every tensor times ``strength``, once per distinct tensor (repeated entries stay one tensor)."""
    done: dict[int, Tensor] = {}
    scaled: FlowResiduals = {}
    for key, tensors in out.items():
        scaled[key] = []
        for tensor in tensors:
            if tensor is not None and id(tensor) not in done:
                done[id(tensor)] = tensor * strength
            scaled[key].append(None if tensor is None else done[id(tensor)])
    return scaled


def _summed(previous: FlowResiduals | None, current: FlowResiduals) -> FlowResiduals:
    """Entry-wise sums (None: no residual there), each distinct pair of tensors added once."""
    if previous is None:
        return current
    done: dict[tuple[int, int], Tensor] = {}
    out: FlowResiduals = {}
    for key in dict.fromkeys([*previous, *current]):
        before, now = previous.get(key, []), current.get(key, [])
        merged: list[Tensor | None] = []
        for index in range(max(len(before), len(now))):
            a = before[index] if index < len(before) else None
            b = now[index] if index < len(now) else None
            if a is None or b is None:
                merged.append(a if b is None else b)
                continue
            if (id(a), id(b)) not in done:
                done[(id(a), id(b))] = a + b
            merged.append(done[(id(a), id(b))])
        out[key] = merged
    return out


class FlowControlApplier:
    """The ``control_fn(x, timesteps, context, y, specs)`` of an SD3/Flux sampling run; see the module docstring."""

    def __init__(self, model_sampling: ModelSampling, nets: Mapping[ControlSpec, FlowNet], model: MMDiT | Flux) -> None:
        self.model_sampling = model_sampling
        self.nets = dict(nets)
        self.windows = {spec: (float(model_sampling.percent_to_sigma(spec.start_percent)),
                               float(model_sampling.percent_to_sigma(spec.end_percent))) for spec in self.nets}
        self.depths = ((len(model.joint_blocks), 0) if isinstance(model, MMDiT)
                       else (len(model.double_blocks), len(model.single_blocks)))
        self._hints: dict[tuple[ControlSpec, int, int, torch.device, torch.dtype], Tensor] = {}

    def __call__(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None,
                 specs: Sequence[Any]) -> FlowResiduals | None:
        grouping = control_groups(specs, x.shape[0])
        if grouping is None:
            return None
        per, groups, whole = grouping
        guidance = torch.cat([_guidance(spec, per, x.device) for spec in specs])
        if whole:
            return self._run_chain(next(iter(groups)), x, timesteps, context, y, guidance, per)
        results: list[tuple[list[int], FlowResiduals]] = []
        for control, members in groups.items():
            rows = member_rows(members, per, x.device)
            out = self._run_chain(control, x[rows], timesteps[rows], context[rows], None if y is None else y[rows],
                                  guidance[rows], per)
            if out is not None:
                results.append((members, out))
        return assemble_rows(results, per, x.shape[0]) if results else None

    def _run_chain(self, control: ControlSpec, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None,
                   guidance: Tensor, per: int) -> FlowResiduals | None:
        sigma = float(self.model_sampling.sigma(timesteps[0]))
        result: FlowResiduals | None = None
        for spec in control.chain():
            sigma_start, sigma_end = self.windows[spec]
            if sigma > sigma_start or sigma < sigma_end:
                continue
            net = self.nets[spec]
            hint = self._hint(spec, net, x, per)
            latent = x[:, :net.in_channels]
            if isinstance(net, SD3ControlNet):
                out = net(latent, hint, timesteps, context, main_depth=self.depths[0])
            else:
                out = net(latent, hint, timesteps, context, y, guidance, main_depth=self.depths[0],
                          main_single=self.depths[1], control_type=getattr(spec.net, "union_type", None))
            result = _summed(result, _scaled(out, spec.strength))
        return result

    def _hint(self, spec: ControlSpec, net: FlowNet, x: Tensor, per: int) -> Tensor:
        """The hint for ``x``'s rows: fitted (and encoded) once per size for the run, then tiled to the batch."""
        key = (spec, x.shape[-2], x.shape[-1], x.device, net.dtype)
        hint = self._hints.get(key)
        if hint is None:
            hint = self._prepared(spec, net, x)
            self._hints[key] = hint
        # Each entry's rows get the hint batch repeated (or cut) to the entry's size.
        return tile_rows(hint, per).repeat(x.shape[0] // per, 1, 1, 1)

    def _prepared(self, spec: ControlSpec, net: FlowNet, x: Tensor) -> Tensor:
        pixels = spec.hint[:, :3] if spec.hint.shape[1] >= 3 else spec.hint[:, :1].expand(-1, 3, -1, -1)
        pixels = fit_hint(pixels.to(device=x.device, dtype=torch.float32), x.shape[-2] * 8, x.shape[-1] * 8)
        if net.hint_format is None:
            return pixels.to(net.dtype)
        with torch.no_grad():
            latent = spec.vae(pixels).to(device=x.device, dtype=torch.float32)
        if latent.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"ControlNet {net_label(spec.net)}: the VAE made a {tuple(latent.shape[-2:])} latent of "
                             f"the hint, the sampled latent is {tuple(x.shape[-2:])}: use the model's own VAE")
        latent = net.hint_format.to_model(latent)
        extra = _hint_channels(net) - latent.shape[1]
        if extra == 1:  # an inpainting net's mask channel: all ones without a mask (ComfyUI's default)
            latent = torch.cat((latent, torch.ones_like(latent[:, :1])), dim=1)
        elif extra:
            raise ValueError(f"ControlNet {net_label(spec.net)} takes {_hint_channels(net)}-channel hint latents but "
                             f"the VAE makes {latent.shape[1]} channels: use the model's own VAE")
        return latent.to(net.dtype)


def _hint_channels(net: FlowNet) -> int:
    if isinstance(net, SD3ControlNet):
        return net.config.hint_channels
    return net.config.hint_channels // 4


def _guidance(spec: Any, rows: int, device: torch.device) -> Tensor:
    """Flux's distilled guidance for an entry's rows (FluxGuidance's, else Flux's default)."""
    value = getattr(spec, "guidance", None)
    return torch.full((rows,), FLUX_DEFAULT_GUIDANCE if value is None else value, device=device)
