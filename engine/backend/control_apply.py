"""ControlNets during sampling: the :class:`ControlSpec` a conditioning entry carries, and the control
function :class:`~engine.backend.conditioning.UNetApply` calls for every batched UNet forward.

A CONDITIONING entry's extras hold ``"control"``: a :class:`ControlSpec` (which net, hint image,
strength, active window) linked to the spec that was there before (``previous``), so applying two
ControlNets chains them. ComfyUI's semantics (``shared/reference/comfyui.md`` section 8):

* a net acts only while the step's sigma lies in ``[percent_to_sigma(end), percent_to_sigma(start)]``;
* the hint is resized to the latent size x 8 (nearest-exact, after a centre crop to the latent's
  aspect ratio) once per size, then repeated to the batch;
* every residual is multiplied by ``strength`` and added to the chain's earlier residuals.

:class:`ControlApplier` handles a batched forward whose entries carry different chains (or none):
each distinct chain runs once on the rows of the entries that carry it, and rows without control get
zero residuals, which leave the UNet's features exactly unchanged.

Windows are checked on the sigma of the discrete timestep the UNet receives (ComfyUI compares the
sampler's own sigma): the two differ only for a step within half a timestep of a window's edge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.backend.adapter_control import AdapterRun
from engine.backend.control_lora import ControlLora
from engine.backend.controlnet import ControlNet, compatibility_problem
from engine.backend.controlnet_union import UnionControlNet
from engine.backend.model_sampling import ModelSampling
from engine.backend.t2i_adapter import T2IAdapter, adapter_problem
from engine.backend.unet import UNetConfig, UNetModel

__all__ = ["ControlApplier", "ControlSpec", "Residuals", "control_function", "fit_hint", "share_with_uncond"]

log = logging.getLogger(__name__)

Residuals = dict[str, list[Tensor | None]]
#: Turns ``ControlSpec.net`` (a CONTROL_NET handle) into a loaded :class:`ControlNet`, T2I-Adapter or Control-LoRA
#: (or an SD3/Flux ControlNet, engine/backend/flow_control.py).
Resolve = Callable[[Any], Any]


@dataclass(frozen=True, eq=False)
class ControlSpec:
    """One ControlNet applied to a conditioning entry (compared and hashed by identity).

    ``net`` is a CONTROL_NET handle, resolved when sampling starts, or a :class:`ControlNet` itself.
    ``hint`` is ``[B, C, H, W]`` in 0..1 (any size; fitted to the latent when sampling).
    ``start_percent`` / ``end_percent`` bound the part of the diffusion (0 = first step, 1 = last)
    in which the net acts; ``previous`` is the spec this one was chained onto.
    """

    net: Any
    hint: Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: ControlSpec | None = None
    global_average_pooling: bool = False
    #: SD3/Flux ControlNets that take the hint as a latent: pixels [B, 3, H, W] (0..1) -> VAE latents
    #: (ControlNetApplyAdvanced's VAE; engine/backend/flow_control.py). Unused by UNet ControlNets.
    vae: Any = None

    def chain(self) -> list[ControlSpec]:
        """Every spec of the chain, the first applied first (this one last)."""
        specs: list[ControlSpec] = []
        spec: ControlSpec | None = self
        while spec is not None:
            specs.append(spec)
            spec = spec.previous
        return specs[::-1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the chain's hint images (for the output cache's accounting)."""
        return sum(spec.hint.numel() * spec.hint.element_size() for spec in self.chain())


def _entry_control(entry: Sequence[Any]) -> Any:
    return entry[1].get("control")


def share_with_uncond(positive: Sequence[Sequence[Any]], negative: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The negative CONDITIONING with the legacy ``ControlNetApply`` controls of ``positive`` attached.

    Positive entries without an area whose extras say ``control_apply_to_uncond`` lend their control
    to the negative entries without an area and without control, in turn; when there are more such
    controls than negative entries, copies of the negative entries carry the rest (the averaged
    negative then mirrors the averaged positive). Nothing changes when some negative entry without
    an area already has a control. The lists and extras given are not modified.
    """
    out = [list(entry) for entry in negative]
    lent = [_entry_control(e) for e in positive
            if "area" not in e[1] and _entry_control(e) is not None and e[1].get("control_apply_to_uncond")]
    plain = [i for i, e in enumerate(out) if "area" not in e[1]]
    if not lent or not plain or any(_entry_control(out[i]) is not None for i in plain):
        return out
    targets = [i for i in plain if _entry_control(out[i]) is None]
    originals = {i: out[i] for i in targets}
    for n, control in enumerate(lent):
        index = targets[n % len(targets)]
        embedding, extras = originals[index]
        entry = [embedding, {**extras, "control": control}]
        if n < len(targets):
            out[index] = entry
        else:
            out.append(entry)
    return out


def fit_hint(hint: Tensor, height: int, width: int) -> Tensor:
    """``hint`` ``[B, C, H, W]`` centre-cropped to the aspect ratio ``width / height`` and resized to
    ``height x width`` with nearest-exact sampling (ComfyUI's ``common_upscale(..., "center")``)."""
    old_h, old_w = hint.shape[-2:]
    if old_w * height > width * old_h:  # too wide: cut the sides
        cut = round((old_w - old_h * width / height) / 2)
        hint = hint[..., :, cut:old_w - cut]
    elif old_w * height < width * old_h:  # too tall: cut top and bottom
        cut = round((old_h - old_w * height / width) / 2)
        hint = hint[..., cut:old_h - cut, :]
    if tuple(hint.shape[-2:]) == (height, width):
        return hint
    return F.interpolate(hint, size=(height, width), mode="nearest-exact")


def _match_channels(hint: Tensor, channels: int, label: str) -> Tensor:
    if hint.shape[1] == channels:
        return hint
    if hint.shape[1] == 1:
        return hint.expand(-1, channels, -1, -1)
    if hint.shape[1] > channels == 3:
        return hint[:, :3]  # RGBA -> RGB
    raise ValueError(f"ControlNet {label} takes {channels}-channel hint images, got {hint.shape[1]} channels")


def tile_rows(tensor: Tensor, batch: int) -> Tensor:
    """Repeat or truncate along dim 0 to ``batch`` rows."""
    if tensor.shape[0] == batch:
        return tensor
    reps = -(-batch // tensor.shape[0])
    return tensor.repeat(reps, *([1] * (tensor.ndim - 1)))[:batch]


def net_label(net: Any) -> str:
    file = getattr(net, "file", None)
    name = getattr(file, "name", None)
    return repr(name) if name else type(net).__name__


def _merge(previous: Residuals | None, current: Mapping[str, Sequence[Tensor | None]], strength: float) -> Residuals:
    """``current`` times ``strength`` added to ``previous`` entry by entry (None: no residual there)."""
    merged: Residuals = {}
    for key, tensors in current.items():
        before = previous.get(key, []) if previous is not None else []
        out = [None if t is None else t * strength for t in tensors]
        for i, prior in enumerate(before):
            if i >= len(out):
                out.append(prior)
            elif prior is not None:
                current_i = out[i]
                out[i] = prior if current_i is None else prior + current_i
        merged[key] = out
    if previous is not None:
        for key, prior_list in previous.items():
            merged.setdefault(key, prior_list)
    return merged


class ControlApplier:
    """The ``control_fn(x, timesteps, context, y, specs)`` of a sampling run; see the module docstring.

    ``nets`` maps every spec of every chain to its loaded net. Resized hints are cached per spec and
    size for the run, as the hint block's features.
    """

    def __init__(self, model_sampling: ModelSampling, nets: Mapping[ControlSpec, ControlNet | T2IAdapter],
                 num_res_blocks: int = 2) -> None:
        self.model_sampling = model_sampling
        self.nets = dict(nets)
        self.windows = {spec: (model_sampling.percent_to_sigma(spec.start_percent),
                               model_sampling.percent_to_sigma(spec.end_percent)) for spec in self.nets}
        self._hints: dict[tuple[ControlSpec, int, int, torch.device, torch.dtype], Tensor] = {}
        self._adapters = AdapterRun(fit_hint, num_res_blocks)

    def __call__(self, x: Tensor, timesteps: Tensor, context: Tensor | None, y: Tensor | None,
                 specs: Sequence[Any]) -> Residuals | None:
        grouping = control_groups(specs, x.shape[0])
        if grouping is None:
            return None
        per, groups, whole = grouping
        if whole:
            return self._run_chain(next(iter(groups)), x, timesteps, context, y, per)
        results: list[tuple[list[int], Residuals]] = []
        for control, members in groups.items():
            rows = member_rows(members, per, x.device)
            out = self._run_chain(control, x[rows], timesteps[rows], None if context is None else context[rows],
                                  None if y is None else y[rows], per)
            if out is not None:
                results.append((members, out))
        return assemble_rows(results, per, x.shape[0]) if results else None

    def _run_chain(self, control: ControlSpec, x: Tensor, timesteps: Tensor, context: Tensor | None,
                   y: Tensor | None, per: int) -> Residuals | None:
        sigma = float(self.model_sampling.sigma(timesteps[0]))
        result: Residuals | None = None
        for spec in control.chain():
            sigma_start, sigma_end = self.windows[spec]
            if sigma > sigma_start or sigma < sigma_end:
                continue
            net = self.nets[spec]
            if isinstance(net, T2IAdapter):
                result = _merge(result, self._adapters.residuals(spec, spec.hint, net, x, per), spec.strength)
                continue
            features = self._hint(spec, net, x, per)
            extra = {"control_type": getattr(spec.net, "union_type", None)} if isinstance(net, UnionControlNet) else {}
            out = net(x[:, :net.in_channels], None, timesteps, context, y, hint_features=features, **extra)
            if spec.global_average_pooling:
                out = {key: [None if t is None else t.mean(dim=(2, 3), keepdim=True) for t in ts]
                       for key, ts in out.items()}
            result = _merge(result, out, spec.strength)
        return result

    def _hint(self, spec: ControlSpec, net: ControlNet, x: Tensor, per: int) -> Tensor:
        """The hint block's features for ``x``'s rows: the hint is fitted to the latent and encoded once
        per size for the run (it does not change between steps), then tiled to the batch."""
        dtype = next(net.parameters()).dtype
        height, width = x.shape[-2] * 8, x.shape[-1] * 8
        key = (spec, height, width, x.device, dtype)
        features = self._hints.get(key)
        if features is None:
            hint = _match_channels(spec.hint, net.config.hint_channels, net_label(spec.net))
            hint = fit_hint(hint.to(device=x.device, dtype=torch.float32), height, width).to(dtype)
            with torch.no_grad():
                features = net.encode_hint(hint)
            self._hints[key] = features
        # Each entry's rows get the hint batch repeated (or cut) to the entry's size.
        return tile_rows(features, per).repeat(x.shape[0] // per, 1, 1, 1)


def assemble_rows(results: Sequence[tuple[list[int], Residuals]], per: int, batch: int) -> Residuals:
    """One residual dict for the whole batch: each group's rows where its entries sit, zeros elsewhere
    (None where no group has a residual). A set of group tensors that recurs (one residual feeding several
    blocks) is assembled once."""
    out: Residuals = {}
    done: dict[tuple[int, ...], Tensor] = {}
    for key in dict.fromkeys(k for _, residuals in results for k in residuals):
        length = max(len(residuals.get(key, [])) for _, residuals in results)
        out[key] = []
        for index in range(length):
            parts = [(members, r[key][index]) for members, r in results
                     if index < len(r.get(key, [])) and r[key][index] is not None]
            ids = tuple(id(part) for _, part in parts)
            if parts and ids not in done:
                done[ids] = _rows_of(parts, per, batch)
            out[key].append(done[ids] if parts else None)
    return out


def _rows_of(parts: Sequence[tuple[list[int], Tensor | None]], per: int, batch: int) -> Tensor:
    like = parts[0][1]
    assert like is not None
    full = like.new_zeros((batch, *like.shape[1:]))
    for members, part in parts:
        assert part is not None
        for k, member in enumerate(members):
            full[member * per:(member + 1) * per] = part[k * per:(k + 1) * per]
    return full


def control_groups(specs: Sequence[Any], batch: int) -> tuple[int, dict[ControlSpec, list[int]], bool] | None:
    """How a batched model call's entries (CondSpecs, ``batch`` rows in equal shares) group by ControlNet chain:
    the rows per entry, each chain's entry indices, and whether one chain covers every entry; None when no entry
    has a ControlNet."""
    controls: list[ControlSpec | None] = [getattr(spec, "control", None) for spec in specs]
    if all(control is None for control in controls):
        return None
    if batch % len(controls):
        raise ValueError(f"a batch of {batch} rows cannot hold {len(controls)} equal entries")
    groups: dict[ControlSpec, list[int]] = {}
    for index, control in enumerate(controls):
        if control is not None:
            groups.setdefault(control, []).append(index)
    whole = len(groups) == 1 and all(control is not None for control in controls)
    return batch // len(controls), groups, whole


def member_rows(members: Sequence[int], per: int, device: torch.device) -> Tensor:
    """The batch rows of the entries ``members`` (``per`` rows each)."""
    return torch.cat([torch.arange(m * per, (m + 1) * per, device=device) for m in members])


def all_control_specs(conds: Iterable[Sequence[Any]]) -> list[ControlSpec]:
    seen: dict[ControlSpec, None] = {}
    for specs in conds:
        for spec in specs:
            control = getattr(spec, "control", None)
            if control is not None:
                for link in control.chain():
                    seen.setdefault(link, None)
    return list(seen)


def _built(lora: ControlLora, unet: UNetModel | None, built: dict[int, ControlNet], label: str) -> ControlNet:
    if unet is None:
        raise ValueError(f"ControlNet {label} is a Control-LoRA: it needs the sampled model's UNet")
    net = built.get(id(lora))
    if net is None:
        net = built[id(lora)] = lora.build(unet)
    return net


def control_function(conds: Iterable[Sequence[Any]], model_sampling: ModelSampling, resolve: Resolve,
                     unet_config: UNetConfig | None = None, unet: UNetModel | None = None) -> ControlApplier | None:
    """The control function for a run over ``conds`` (lists of CondSpecs), or None when no entry has a
    ControlNet. Every net is loaded (``resolve``) and checked against ``unet_config`` up front, so a
    ControlNet made for another model family fails before the first step, saying why. Control-LoRAs are
    built from ``unet``, the UNet being sampled (engine/backend/control_lora.py)."""
    specs = all_control_specs(conds)
    if not specs:
        return None
    nets: dict[ControlSpec, ControlNet | T2IAdapter] = {}
    built: dict[int, ControlNet] = {}  # one ControlNet per Control-LoRA for the run
    for spec in specs:
        resolved = spec.net if isinstance(spec.net, (ControlNet, T2IAdapter)) else resolve(spec.net)
        if not isinstance(resolved, (ControlNet, T2IAdapter, ControlLora)):  # an SD3/Flux ControlNet
            raise ValueError(f"ControlNet {net_label(spec.net)} ({resolved.config.describe()}) does not fit this "
                             "model: it is made for SD3/Flux transformer models; use a ControlNet made for the "
                             "checkpoint's model family")
        net = _built(resolved, unet, built, net_label(spec.net)) if isinstance(resolved, ControlLora) else resolved
        if unet_config is not None:
            problem = (adapter_problem(net.config, unet_config) if isinstance(net, T2IAdapter)
                       else compatibility_problem(net.config, unet_config))
            if problem:
                raise ValueError(f"ControlNet {net_label(spec.net)} ({net.config.describe()}) does not fit this "
                                 f"model: {problem}; use a ControlNet made for the checkpoint's model family")
        nets[spec] = net
    log.debug("sampling with %d ControlNet(s)", len(nets))
    blocks = unet_config.num_res_blocks[0] if unet_config is not None else 2
    return ControlApplier(model_sampling, nets, blocks)
