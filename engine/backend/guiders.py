"""What travels on custom-sampling edges (NOISE, SAMPLER, GUIDER) and how a guider combines predictions.

The edge values are small frozen dataclasses: a :class:`NoiseSource` (a seed, or disabled), a
:class:`SamplerChoice` (a sampler name and its options) and a :class:`Guidance` (the conditionings
and scales of one guidance kind; the GUIDER edge pairs it with a MODEL handle). The sampling
pipeline (:mod:`engine.backend.pipeline`) turns them into a run; KSampler's own inputs become the
same three values, so every path samples the same way.

Guidance kinds (predictions are denoised estimates, as ComfyUI's guiders use them):

* ``cfg``: ``neg + (pos - neg) * cfg`` (CFGGuider, KSampler);
* ``basic``: the positive prediction alone (BasicGuider);
* ``dual_cfg`` regular: ``neg + (mid - neg) * cfg2 + (pos - mid) * cfg1``; nested:
  ``neg + cfg2 * (mid + (pos - mid) * cfg1 - neg)`` (DualCFGGuider, mid = cond2);
* ``perp_neg``: with ``p = pos - empty`` and ``n = neg - empty``, ``n_perp = n - <n, p> / |p|^2 * p``
  over the whole batch, ``empty + cfg * (p - neg_scale * n_perp)`` (PerpNegGuider; Armandpour et al.
  2023, "Re-imagine the Negative Prompt Algorithm").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

GuidanceKind = Literal["cfg", "basic", "dual_cfg", "perp_neg"]


@dataclass(frozen=True)
class NoiseSource:
    """NOISE: ComfyUI's seeded initial noise (``enabled``) or none at all (zeros). The seed also seeds the
    samplers' per-step noise, as ComfyUI passes ``noise.seed`` on (DisableNoise's seed is 0)."""

    seed: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a sampler by name (see :func:`engine.backend.samplers.get_sampler` and
    :data:`engine.backend.node_samplers.NODE_SAMPLERS`) with keyword options; ``source`` names the node
    that chose it, for error messages."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    source: str = "KSamplerSelect"

    @classmethod
    def of(cls, name: str, source: str = "KSamplerSelect", **options: Any) -> SamplerChoice:
        return cls(name, tuple(options.items()), source)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Guidance:
    """How one step's predictions combine, with its conditionings (CONDITIONING values) and scales.

    ``positive`` / ``negative`` are the cond and uncond; ``middle`` is DualCFGGuider's cond2 or
    PerpNegGuider's empty conditioning. ``cfg`` is the main scale (DualCFG's cfg_conds), ``cfg2``
    DualCFG's cfg_cond2_negative, ``neg_scale`` PerpNeg's.
    """

    kind: GuidanceKind
    positive: list[Any]
    negative: list[Any] = field(default_factory=list)
    middle: list[Any] = field(default_factory=list)
    cfg: float = 1.0
    cfg2: float = 1.0
    neg_scale: float = 1.0
    nested: bool = False

    @classmethod
    def classifier_free(cls, positive: list[Any], negative: list[Any], cfg: float) -> Guidance:
        return cls("cfg", positive, negative, cfg=cfg)

    @classmethod
    def basic(cls, positive: list[Any]) -> Guidance:
        return cls("basic", positive)

    @classmethod
    def dual(cls, cond1: list[Any], cond2: list[Any], negative: list[Any], cfg_conds: float,
             cfg_cond2_negative: float, nested: bool = False) -> Guidance:
        return cls("dual_cfg", cond1, negative, _as_negative(cond2), cfg=cfg_conds, cfg2=cfg_cond2_negative,
                   nested=nested)

    @classmethod
    def perp_neg(cls, positive: list[Any], negative: list[Any], empty: list[Any], cfg: float,
                 neg_scale: float) -> Guidance:
        return cls("perp_neg", positive, negative, _as_negative(empty), cfg=cfg, neg_scale=neg_scale)

    @property
    def batch_scale(self) -> float:
        """The scale the CFG denoiser sees: whether it runs the uncond pass (skipped when it is 1)."""
        if self.kind == "dual_cfg":
            return self.cfg2
        return self.cfg if self.kind in ("cfg", "perp_neg") else 1.0

    @property
    def needs_uncond(self) -> bool:
        """Whether the negative pass is needed even though :attr:`batch_scale` is 1."""
        if self.kind == "perp_neg":
            return not math.isclose(self.neg_scale, 0.0)
        return self.kind == "dual_cfg" and self.nested

    @property
    def uses_middle(self) -> bool:
        """Whether the middle conditioning runs (skipped where ComfyUI's cfg-1 shortcut skips it)."""
        if self.kind == "dual_cfg":
            return self.nested or not (math.isclose(self.cfg, 1.0) and math.isclose(self.cfg2, 1.0))
        if self.kind == "perp_neg":
            return not (math.isclose(self.neg_scale, 0.0) and math.isclose(self.cfg, 1.0))
        return False


def _as_negative(conditioning: list[Any]) -> list[Any]:
    """Entries marked ``prompt_type: negative`` (as ComfyUI marks DualCFG's cond2 and PerpNeg's empty prompt)."""
    return [[cond, {**extras, "prompt_type": "negative"}] for cond, extras in conditioning]


def dual_cfg(pos: Any, mid: Any, neg: Any, cfg1: float, cfg2: float, nested: bool,
             pair: Callable[[Any, Any, float], Any] | None = None) -> Any:
    """DualCFGGuider's result from the three predictions; ``pair(cond, uncond, scale)`` is the CFG of one
    pair (default ``uncond + (cond - uncond) * scale``; a MODEL's cfg function replaces it)."""
    combine = pair or (lambda c, u, s: u + (c - u) * s)
    if nested:
        text = combine(pos, mid, cfg1)
        return neg + cfg2 * (text - neg)
    return combine(mid, neg, cfg2) + (pos - mid) * cfg1


def perp_neg(pos: Any, neg: Any, empty: Any, cfg: float, neg_scale: float) -> Any:
    """PerpNegGuider's result: the negative's component perpendicular to the positive direction is removed."""
    p = pos - empty
    n = neg - empty
    perp = n - ((n * p).sum() / (p.norm() ** 2)) * p
    return empty + cfg * (p - perp * neg_scale)



@dataclass(frozen=True)
class Guider:
    """GUIDER: a MODEL handle (opaque here) and the guidance to sample it with."""

    model: Any
    guidance: Guidance
