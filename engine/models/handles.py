"""The small, immutable values that travel on MODEL, CLIP and VAE edges.

A handle says *which* weights (a file, identified by path, size and mtime) and *how* to use them
(patches, options). It holds no tensors: the ModelManager turns a handle into a ready module when
a node needs one, so the output cache never holds a second copy of a model. Nodes that modify a
model (LoraLoader, CLIPSetLastLayer, ...) return a new handle with one more option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.families import ModelFamily


@dataclass(frozen=True)
class FileRef:
    """A weights file, identified by its real path and its size and mtime (so edits are noticed)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileRef:
        real = Path(path).resolve()
        stat = real.stat()
        return cls(str(real), stat.st_size, stat.st_mtime_ns)

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class KeyLayout:
    """Where a part's tensors are in its file: the keys under ``prefix`` (``model.diffusion_model.`` in a
    checkpoint, ``""`` in a UNet file), named as in ``naming``: ``"ldm"`` (the original checkpoints' names)
    or ``"diffusers"`` (renamed while read; engine/models/convert_diffusers.py)."""

    prefix: str
    naming: str = "ldm"


#: The UNet of a Stable Diffusion checkpoint.
CHECKPOINT_UNET = KeyLayout("model.diffusion_model.")


@dataclass(frozen=True)
class TextEncoderFile:
    """One text encoder stored on its own (CLIPLoader, DualCLIPLoader, a diffusers folder): its keys under
    ``prefix`` in ``file`` are read as if they were under ``tower``, the prefix the family's checkpoints
    keep that encoder under (``cond_stage_model.transformer.``, ``conditioner.embedders.1.model.``, ...);
    transformers' and OpenCLIP's layouts both load from there."""

    file: FileRef
    prefix: str
    tower: str


@dataclass(frozen=True)
class WeightPatch:
    """A weight patch applied to a model with a strength: a LoRA file (``kind`` "lora"), or another model's
    weights used as one (``kind`` "model", CreateHookModelAsLora: each weight moves ``strength`` of the way to
    that checkpoint's)."""

    file: FileRef
    strength: float
    kind: str = "lora"


@dataclass(frozen=True)
class PreCfgOperation:
    """A LATENT_OPERATION applied at each sampling step to the guidance (cond - uncond) before CFG
    combines it (ComfyUI's LatentApplyOperationCFG), between two fractions of the schedule (0 = start).

    ``operation`` is called as ``operation(latent=tensor)``; Loom's operations are frozen dataclasses,
    so the handle stays hashable and picklable.
    """

    operation: Callable[..., Any]
    start_percent: float = 0.0
    end_percent: float = 1.0


@dataclass(frozen=True)
class ModelSamplingSpec:
    """A model-sampling node's choice (ModelSamplingDiscrete / ContinuousEDM / ContinuousV / SD3 / AuraFlow /
    Flux).

    ``kind``: "discrete" (SD's 1000 noise levels; LCM keeps 50 of them), "continuous_edm" or
    "continuous_v" (sigmas in [sigma_min, sigma_max]), "discrete_flow" or "flux" (rectified flow, with
    ``shift`` and ``multiplier``). ``prediction``: eps, v_prediction, edm, x0, lcm, img_to_img or flow.
    ``zsnr`` rescales the discrete schedule to zero terminal SNR.
    ``latent_format`` names a latent format the model needs instead of its family's
    ("playground_v2.5"), or None. engine.backend.model_sampling.model_sampling_for builds it.
    """

    kind: str = "discrete"
    prediction: str = "eps"
    zsnr: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_data: float = 1.0
    latent_format: str | None = None
    #: The flow kinds' timestep shift and timestep multiplier ("discrete_flow": SD3 1000, AuraFlow 1).
    shift: float = 1.0
    multiplier: float = 1000.0


@dataclass(frozen=True)
class MergeRule:
    """One weight group of a merge: weights whose name starts with ``prefix`` become
    ``self_scale * own + other_scale * other's`` (ComfyUI's strength_model / strength_patch)."""

    prefix: str
    self_scale: float
    other_scale: float


@dataclass(frozen=True)
class MergeSpec:
    """A merged model's weights, computed from two models' weights when a node first needs them.

    ``base`` and ``other`` are the weights of the two inputs (handles reduced to what decides their weights:
    file, layout, their own merge and LoRA patches, which are baked in). A weight takes the rule of the
    longest matching ``rules`` prefix, else ``default``; a weight the other model lacks, has in another
    shape, or whose name ends with one of ``skip`` stays the base's.
    """

    base: Any  # ModelHandle | ClipHandle (Any: the two classes refer to each other)
    other: Any
    rules: tuple[MergeRule, ...]
    default: tuple[float, float]  # (self_scale, other_scale)
    skip: tuple[str, ...] = ()

    def scales(self, name: str) -> tuple[float, float]:
        """``(self_scale, other_scale)`` of the weight ``name``."""
        best: MergeRule | None = None
        for rule in self.rules:
            if name.startswith(rule.prefix) and (best is None or len(rule.prefix) > len(best.prefix)):
                best = rule
        return self.default if best is None else (best.self_scale, best.other_scale)

    def skips(self, name: str) -> bool:
        return name.endswith(self.skip) if self.skip else False


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: the diffusion UNet of a checkpoint, its family, the patches to apply and the sampling
    hooks (``pre_cfg``: operations on each step's guidance, applied in order)."""

    checkpoint: FileRef
    family: ModelFamily
    patches: tuple[WeightPatch, ...] = ()
    pre_cfg: tuple[PreCfgOperation, ...] = ()
    #: Guidance and UNet patches (RescaleCFG, FreeU, ...): torch-side objects with
    #: ``install(hooks, model_sampling)`` (engine.backend.guidance.SamplingPatch), applied in order.
    #: They never touch weights, so removing one restores the model exactly.
    sampling_patches: tuple[Any, ...] = ()
    #: The model sampling a ModelSampling* node chose; None: the checkpoint's own (eps or v).
    sampling: ModelSamplingSpec | None = None
    #: ModelComputeDtype's choice ("fp32", "fp16", "bf16"); None: the model manager's default.
    compute_dtype: str | None = None
    #: Where the UNet is in ``checkpoint`` (UNETLoader and DiffusersLoader read files without the prefix).
    unet_layout: KeyLayout = CHECKPOINT_UNET
    #: UNETLoader's weight_dtype: "fp8_e4m3fn" / "fp8_e5m2" keep the weights in float8, cast layer by layer
    #: to the compute dtype as they are used; None: the weights are stored in the compute dtype.
    weight_dtype: str | None = None
    #: A ModelMerge* node's recipe: the UNet's weights are that merge (``checkpoint`` is the base's file;
    #: ``patches`` apply on top of the merge). None: the weights are ``checkpoint``'s.
    merge: MergeSpec | None = None

    def weights(self) -> ModelHandle:
        """This handle reduced to what decides the UNet's weights (for a merge's inputs and cache keys)."""
        return ModelHandle(self.checkpoint, self.family, self.patches, unet_layout=self.unet_layout,
                           weight_dtype=self.weight_dtype, merge=self.merge)

    def merged_with(self, other: ModelHandle, rules: tuple[MergeRule, ...], default: tuple[float, float],
                    skip: tuple[str, ...] = ()) -> ModelHandle:
        """This model (its sampling options kept, as ComfyUI's clone) with merged weights."""
        spec = MergeSpec(self.weights(), other.weights(), rules, default, skip)
        return dataclasses.replace(self, patches=(), merge=spec, weight_dtype=None)

    def with_patch(self, patch: WeightPatch) -> ModelHandle:
        return dataclasses.replace(self, patches=(*self.patches, patch))

    def with_patches(self, patches: tuple[WeightPatch, ...]) -> ModelHandle:
        """This model with more patches after its own (hooks' LoRAs during a sampling step)."""
        return dataclasses.replace(self, patches=(*self.patches, *patches)) if patches else self

    def with_pre_cfg(self, operation: Callable[..., Any], start_percent: float = 0.0,
                     end_percent: float = 1.0) -> ModelHandle:
        """This model with one more pre-CFG operation, after the ones it has."""
        added = PreCfgOperation(operation, start_percent, end_percent)
        return dataclasses.replace(self, pre_cfg=(*self.pre_cfg, added))

    def with_sampling_patch(self, patch: Any) -> ModelHandle:
        """This model with one more sampling patch, after the ones it has."""
        return dataclasses.replace(self, sampling_patches=(*self.sampling_patches, patch))

    def with_family(self, family: ModelFamily) -> ModelHandle:
        return dataclasses.replace(self, family=family)

    def with_sampling(self, sampling: ModelSamplingSpec | None) -> ModelHandle:
        """This model with another model sampling (replacing any earlier choice, as ComfyUI does)."""
        return dataclasses.replace(self, sampling=sampling)

    def with_compute_dtype(self, dtype: str | None) -> ModelHandle:
        return dataclasses.replace(self, compute_dtype=dtype)


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: the text encoder(s) of a checkpoint, the layer to read (clip skip) and patches."""

    checkpoint: FileRef
    family: ModelFamily
    layer_idx: int | None = None
    patches: tuple[WeightPatch, ...] = ()
    #: CLIPAttentionMultiply's (q, k, v, out) multipliers of every self-attention projection (weights and
    #: biases), applied at encode time without touching the stored weights; (1, 1, 1, 1): none.
    attention_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    #: Text encoders stored on their own files (``checkpoint`` is the first of them); (): the towers of the
    #: ``checkpoint`` under the family's prefixes.
    sources: tuple[TextEncoderFile, ...] = ()
    #: A CLIPMerge* node's recipe (``patches`` apply on top of it); None: the weights are the files'.
    merge: MergeSpec | None = None
    #: SetClipHooks: the hooks' LoRAs (engine.models.hooks.HookGroup) apply while encoding at their CLIP
    #: strengths; ``hooks_to_conds`` puts the group on the conditioning made; ``schedule_clip`` encodes once
    #: per keyframe range (entries limited to their range) instead of at multiplier 1.
    hooks: Any = None
    hooks_to_conds: bool = True
    schedule_clip: bool = False

    def weights(self) -> ClipHandle:
        """This handle reduced to what decides the text encoders' weights."""
        return ClipHandle(self.checkpoint, self.family, patches=self.patches, sources=self.sources, merge=self.merge)

    def merged_with(self, other: ClipHandle, rules: tuple[MergeRule, ...], default: tuple[float, float],
                    skip: tuple[str, ...] = ()) -> ClipHandle:
        """This CLIP (its clip skip and attention scale kept) with merged weights."""
        spec = MergeSpec(self.weights(), other.weights(), rules, default, skip)
        return dataclasses.replace(self, patches=(), merge=spec)

    def with_layer(self, layer_idx: int) -> ClipHandle:
        return dataclasses.replace(self, layer_idx=layer_idx)

    def with_attention_scale(self, q: float, k: float, v: float, out: float) -> ClipHandle:
        """This CLIP with its attention projections multiplied once more (multipliers compose by product)."""
        a = self.attention_scale
        return dataclasses.replace(self, attention_scale=(a[0] * q, a[1] * k, a[2] * v, a[3] * out))

    def with_patch(self, patch: WeightPatch) -> ClipHandle:
        return dataclasses.replace(self, patches=(*self.patches, patch))

    def with_patches(self, patches: tuple[WeightPatch, ...]) -> ClipHandle:
        return dataclasses.replace(self, patches=(*self.patches, *patches)) if patches else self


@dataclass(frozen=True)
class VaeHandle:
    """VAE: an autoencoder inside a checkpoint (``prefix`` ``first_stage_model.``) or a VAE file.

    ``tiny`` names a TAESD (``taesd`` / ``taesdxl``): then ``file`` is its decoder and ``encoder`` its
    encoder (None for a preview decoder), in models/vae_approx."""

    file: FileRef
    prefix: str
    tiny: str | None = None
    encoder: FileRef | None = None


@dataclass(frozen=True)
class ControlNetHandle:
    """CONTROL_NET: a ControlNet file. ``global_average_pooling`` averages its residuals over the image
    (the "shuffle" ControlNets need it; ComfyUI turns it on for file names ending in ``_shuffle``)."""

    file: FileRef
    global_average_pooling: bool = False
    #: A union ControlNet's control type (index of engine.backend.controlnet_union.UNION_TYPES;
    #: None = "auto"), set by SetUnionControlNetType.
    union_type: int | None = None
    #: DiffControlNetLoader's model: the file is a difference ControlNet whose weights this model's UNet
    #: weights are added to at load (None: a full ControlNet or a T2I-Adapter).
    base: ModelHandle | None = None
