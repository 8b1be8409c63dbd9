"""Torch-backed SDK: in-graph LoRA training (TrainLoraNode) and LORA_MODEL values (LoraModelLoader, SaveLoRANode,
LossGraphNode). A node imports this module inside ``run``.

A LORA_MODEL value is a dict of tensors under kohya's names (``lora_unet_<module>.lora_up.weight``,
``.lora_down.weight``, ``.alpha``; LoHa's ``hada_*`` and LoKr's ``lokr_*`` likewise), the names
engine/models/lora_extract.py gives, so Loom's LoRA loader maps them back to the trained weights. To apply one,
it is written once to a content-named safetensors file in the temp folder and added to the MODEL handle as a
WeightPatch like any LoRA file (the model manager patches the shared UNet from it); saving writes the same
tensors into the loras folder.

Training itself (engine/backend/lora_training.py) never changes the shared UNet: it reads the weights and runs
the module functionally with adapted copies. This module turns the node's inputs into what it needs: latents in
the model's space, the conditioning prepared as the sampling pipeline prepares it (SDXL's adm vectors
included), the UNet modules to adapt with their kohya names, and a LoRA file to continue from.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.backend import conditioning
from engine.backend.latent_formats import LatentFormat
from engine.backend.lora_training import (
    ALGORITHMS,
    COMPONENTS,
    LOSS_FUNCTIONS,
    OPTIMIZERS,
    TRAINABLE_ALGORITHMS,
    Adapter,
    Examples,
    TrainingOptions,
    adaptable_modules,
    adapter_from_tensors,
    train_adapters,
)
from engine.backend.loss_graph import loss_graph_image
from engine.backend.model_sampling import ModelSampling
from engine.backend.pipeline import adm_builder
from engine.backend.unet import UNetModel
from engine.context import RunContext
from engine.errors import LoomError, ModelError
from engine.files import next_counter
from engine.models.handles import FileRef, ModelHandle, WeightPatch
from engine.models.lora_formats import Adapter as FileAdapter
from engine.models.lora_formats import LoHaAdapter, LoKrAdapter, LoRAAdapter
from engine.models.lora_keys import is_text_key, kohya_unet_names, unet_key_map
from engine.models.patching import read_lora
from engine.models.safetensors_writer import TensorEntry, write_safetensors
from engine.sdk import ops

__all__ = [
    "ALGORITHMS", "DTYPES", "LOSS_FUNCTIONS", "OPTIMIZERS", "LoraModel", "TrainSettings", "TrainedLora",
    "loss_graph_image", "lora_targets", "save_lora", "steps_in_name", "train_lora", "with_lora",
]

log = logging.getLogger(__name__)

#: A LORA_MODEL value: kohya key -> tensor.
LoraModel = dict[str, Tensor]
#: training_dtype / lora_dtype choices.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
NODE = "TrainLoraNode"
_STEPS_IN_NAME = re.compile(r"_(\d+)_steps_")
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class TrainSettings:
    """TrainLoraNode's widget inputs."""

    batch_size: int = 1
    grad_accumulation_steps: int = 1
    steps: int = 16
    learning_rate: float = 0.0005
    rank: int = 8
    optimizer: str = "AdamW"
    loss_function: str = "MSE"
    seed: int = 0
    training_dtype: str = "bf16"
    lora_dtype: str = "bf16"
    algorithm: str = "LoRA"
    gradient_checkpointing: bool = True
    prior_loss_weight: float = 1.0


@dataclass(frozen=True)
class TrainedLora:
    lora: LoraModel
    losses: list[float]  # one per optimizer step
    steps: int  # this run's steps plus those of the LoRA it continued


def steps_in_name(name: str) -> int:
    """The step count a trained LoRA's file name carries (``..._{N}_steps_...``, SaveLoRANode's), 0 if none."""
    match = _STEPS_IN_NAME.search(Path(name).name)
    return int(match.group(1)) if match else 0


def lora_targets(unet: UNetModel) -> dict[str, str]:
    """The UNet's Linear and Conv2d modules that a kohya LoRA name reaches: module path -> that name (the name
    Loom's LoRA loader maps back to the same module)."""
    return kohya_unet_names(adaptable_modules(unet), unet.config)


def train_lora(ctx: RunContext, model: ModelHandle, latents: Mapping[str, Any], positive: Sequence[Any],
               settings: TrainSettings, *, class_latents: Mapping[str, Any] | None = None,
               class_positive: Sequence[Any] | None = None, existing: Path | None = None) -> TrainedLora:
    """Train a LoRA of ``model``'s UNet on ``latents`` (a LATENT batch) with ``positive`` (one entry shared, or
    one per latent); with ``class_latents`` / ``class_positive`` also DreamBooth's prior-preservation loss;
    ``existing`` is a LoRA file to continue from. ``ctx.progress`` reports every step (and stops the training
    on an interrupt, leaving the model untouched)."""
    _check_algorithm(settings.algorithm)
    traits = ops.model_traits(model.family, model.pre_cfg, model.sampling_patches, model.sampling)
    if traits.inpaint or traits.ip2p or traits.x4_upscaler:
        raise ModelError(f"{NODE}: training a LoRA of {traits.label} models with extra input channels (inpainting, "
                         "InstructPix2Pix, x4 upscaler) is not supported; train on the base model")
    if (class_latents is None) != (class_positive is None):
        raise LoomError(f"{NODE}: prior preservation needs both class_latents and class_positive; connect both "
                        "or neither")
    if model.family.is_flow:
        raise ModelError(f"{NODE}: training LoRAs of {traits.label} models is not supported yet; train on an "
                         "SD1.x/SD2.x/SDXL model")
    unet = ctx.models.unet(model)
    assert isinstance(unet, UNetModel)
    model_sampling = ops.model_sampling(model)
    adm = adm_builder(traits.adm, settings.seed, unet.config.adm_in_channels or 0)
    prepare = _Preparation(traits.latent_format, adm, model_sampling, unet.config.in_channels)
    examples = prepare(latents, positive, ("latents", "positive"))
    prior = None
    if class_latents is not None and class_positive is not None:
        prior = prepare(class_latents, class_positive, ("class_latents", "class_positive"))
    targets = lora_targets(unet)
    initial, done = ({}, 0) if existing is None else _continued(existing, settings.algorithm, unet, targets)
    options = _options(ctx, settings, next(unet.parameters()).device)
    ctx.log.info("%s: %s rank %d on %d UNet modules, %d examples%s, %d steps (an optimizer step every %d)", NODE,
                 settings.algorithm, settings.rank, len(targets), len(examples),
                 f" + {len(prior)} class examples" if prior is not None else "", settings.steps,
                 settings.grad_accumulation_steps)
    result = train_adapters(unet, model_sampling, examples, list(targets), options, prior=prior,
                            initial=initial, on_step=ctx.progress)
    lora = _lora_model(result.adapters, targets, DTYPES[settings.lora_dtype])
    if result.losses:
        ctx.log.info("%s: loss %.4f at the first optimizer step, %.4f at the last", NODE, result.losses[0],
                     result.losses[-1])
    return TrainedLora(lora, result.losses, settings.steps + done)


def _check_algorithm(algorithm: str) -> None:
    if algorithm in TRAINABLE_ALGORITHMS:
        return
    raise LoomError(f"{NODE}: algorithm {algorithm!r} cannot be trained in Loom: its weights have no key format "
                    f"Loom's LoRA loader applies, so the result could not be used; set algorithm to one of "
                    f"{', '.join(TRAINABLE_ALGORITHMS)}")


def _options(ctx: RunContext, settings: TrainSettings, device: torch.device) -> TrainingOptions:
    return TrainingOptions(
        steps=settings.steps, batch_size=settings.batch_size, grad_accumulation_steps=settings.grad_accumulation_steps,
        learning_rate=settings.learning_rate, rank=settings.rank, optimizer=settings.optimizer,
        loss_function=settings.loss_function, seed=settings.seed, algorithm=settings.algorithm,
        gradient_checkpointing=settings.gradient_checkpointing,
        autocast_dtype=_autocast(ctx, settings.training_dtype, device), prior_loss_weight=settings.prior_loss_weight)


def _autocast(ctx: RunContext, training_dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA; float32 elsewhere (bf16 matmuls are far slower than fp32 on CPUs)."""
    if DTYPES[training_dtype] == torch.float32:
        return None
    if device.type == "cuda":
        return DTYPES[training_dtype]
    ctx.log.info("%s: training_dtype %s on %s: computing in fp32 (bf16 autocast is for CUDA; bf16 matmuls are far "
                 "slower than fp32 on CPUs)", NODE, training_dtype, device.type)
    return None


@dataclass(frozen=True)
class _Preparation:
    """A LATENT batch in the model's space with its conditioning prepared as sampling prepares it."""

    latent_format: LatentFormat
    adm: conditioning.AdmFn | None
    model_sampling: ModelSampling
    channels: int

    def __call__(self, latents: Mapping[str, Any], positive: Sequence[Any], names: tuple[str, str]) -> Examples:
        samples = latents.get("samples") if isinstance(latents, Mapping) else None
        if not isinstance(samples, Tensor) or samples.ndim != 4:
            raise LoomError(f"{NODE}: {names[0]} is not a LATENT batch [B, C, H, W]; connect a VAEEncode output")
        if samples.shape[1] != self.channels:
            raise LoomError(f"{NODE}: {names[0]} has {samples.shape[1]} channels but the model takes "
                            f"{self.channels}; encode the images with this model's VAE")
        count, entries = samples.shape[0], len(positive)
        if entries not in (1, count):
            raise LoomError(f"{NODE}: {names[1]} has {entries} conditioning entries but {names[0]} has {count} "
                            "images; give one entry (shared by every image) or one per image (entry i conditions "
                            "image i)")
        _warn_ignored(positive, names[1])
        model_latents = self.latent_format.to_model(samples.float().cpu())
        specs = conditioning.prepare(positive, tuple(model_latents.shape), device=torch.device("cpu"),
                                     dtype=torch.float32, adm=self.adm,
                                     percent_to_sigma=self.model_sampling.percent_to_sigma)
        return Examples(model_latents, tuple(spec.context for spec in specs), tuple(spec.y for spec in specs))


def _warn_ignored(positive: Sequence[Any], name: str) -> None:
    for _, extras in positive:
        ignored = sorted(key for key in ("area", "mask", "control", "gligen", "hooks") if extras.get(key) is not None)
        if ignored:
            log.warning("%s: %s carries %s; training uses the text conditioning only", NODE, name, ", ".join(ignored))
            return


def _continued(path: Path, algorithm: str, unet: UNetModel, targets: Mapping[str, str]
               ) -> tuple[dict[str, Adapter], int]:
    """The adapters of a LoRA file to continue from, by module path, and the steps its name carries."""
    parsed = read_lora(FileRef.of(path))
    shapes = adaptable_modules(unet)
    key_map = unet_key_map(list(targets), unet.config)
    device = next(unet.parameters()).device
    initial: dict[str, Adapter] = {}
    skipped: list[str] = []
    for target, parts in parsed.adapters.items():
        module = None if is_text_key(target) else key_map.get(target)
        if module is None or "weight" not in parts:
            skipped.append(target)
            continue
        tensors, alpha = _components(parts["weight"], algorithm, path.name, target)
        try:
            initial[module] = adapter_from_tensors(algorithm, shapes[module], tensors, alpha, device)
        except ValueError as exc:
            raise ModelError(f"{NODE}: existing_lora {path.name}: {target}: {exc}; it was trained for another "
                             "model, pick a LoRA of this one or [None]") from exc
    if not initial:
        raise ModelError(f"{NODE}: existing_lora {path.name} has no {algorithm} weights for this model's UNet; pick "
                         "a LoRA trained on it (SaveLoRANode's files) or [None]")
    if skipped:
        log.warning("%s: existing_lora %s: %d targets are not trained here (text encoder or unknown): %s", NODE,
                    path.name, len(skipped), ", ".join(skipped[:5]))
    fresh = len(targets) - len(initial)
    if fresh:
        log.info("%s: existing_lora %s covers %d of %d modules; the others start fresh", NODE, path.name,
                 len(initial), len(targets))
    return initial, steps_in_name(path.name)


def _components(adapter: FileAdapter, algorithm: str, file: str, target: str) -> tuple[dict[str, Tensor],
                                                                                       float | None]:
    """The trainable tensors of one target of a LoRA file, when it has the algorithm's plain layout."""
    found: dict[str, Tensor | None] = {}
    alpha: Tensor | None = None
    if isinstance(adapter, LoRAAdapter) and adapter.mid is None:
        found = {"lora_up.weight": adapter.up, "lora_down.weight": adapter.down}
        alpha = adapter.alpha
    elif isinstance(adapter, LoHaAdapter) and adapter.t1 is None and adapter.t2 is None:
        found = {"hada_w1_a": adapter.w1_a, "hada_w1_b": adapter.w1_b, "hada_w2_a": adapter.w2_a,
                 "hada_w2_b": adapter.w2_b}
        alpha = adapter.alpha
    elif isinstance(adapter, LoKrAdapter) and adapter.t2 is None:
        found = {"lokr_w1": adapter.w1, "lokr_w2_a": adapter.w2_a, "lokr_w2_b": adapter.w2_b}
        alpha = adapter.alpha
    tensors = {name: tensor for name, tensor in found.items() if tensor is not None}
    if set(tensors) != set(COMPONENTS[algorithm]):
        kind = getattr(adapter, "kind", "another")
        raise ModelError(f"{NODE}: existing_lora {file}: {target} is a {kind} weight, not {algorithm} in the layout "
                         f"this node trains ({', '.join(COMPONENTS[algorithm])}); set algorithm to match the file or "
                         "pick another existing_lora")
    return tensors, None if alpha is None else float(alpha)


def _lora_model(adapters: Mapping[str, Adapter], targets: Mapping[str, str], dtype: torch.dtype) -> LoraModel:
    lora: LoraModel = {}
    for path, adapter in adapters.items():
        for component, tensor in adapter.state(dtype).items():
            lora[f"{targets[path]}.{component}"] = tensor
    return dict(sorted(lora.items()))


# --------------------------------------------------------------------------------------------- LORA_MODEL values


def _check_lora(lora: Any, node: str) -> LoraModel:
    if not isinstance(lora, Mapping) or not lora or not all(isinstance(t, Tensor) for t in lora.values()):
        raise LoomError(f"{node}: lora is not a LORA_MODEL (a dict of tensors); connect TrainLoraNode's lora output")
    return dict(lora)


def _entries(lora: LoraModel) -> list[TensorEntry]:
    def maker(tensor: Tensor) -> Any:
        return lambda: tensor
    return [TensorEntry(key, tuple(tensor.shape), tensor.dtype, maker(tensor)) for key, tensor in sorted(lora.items())]


def _digest(lora: LoraModel) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(lora.items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{data.dtype}|{list(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def with_lora(ctx: RunContext, model: ModelHandle, lora: Any, strength: float, node: str = "LoraModelLoader"
              ) -> ModelHandle:
    """``model`` with a LORA_MODEL applied at ``strength`` (a WeightPatch of its file in the temp folder, named by
    its content, so the same LoRA is one file and one cached patch)."""
    tensors = _check_lora(lora, node)
    path = ctx.folders.temp_dir / "loras" / f"trained_lora_{_digest(tensors)[:24]}.safetensors"
    if not path.is_file():
        path = write_safetensors(path, _entries(tensors), {"format": "pt"})
    return model.with_patch(WeightPatch(FileRef.of(path), float(strength)))


def save_lora(ctx: RunContext, lora: Any, directory: Path, name: str, steps: int | None) -> Path:
    """Write a LORA_MODEL to ``{name}_{steps}_steps_{counter:05}_.safetensors`` (``{name}_{counter:05}_`` without
    steps) in ``directory``: atomically, never over another file."""
    tensors = _check_lora(lora, "SaveLoRANode")
    stem = name if steps is None else f"{name}_{steps}_steps"
    path = directory / f"{stem}_{next_counter(directory, stem):05}_{SUFFIX}"
    metadata = {"format": "pt"} | ({"ss_steps": str(steps)} if steps is not None else {})
    return write_safetensors(path, _entries(tensors), metadata, check=ctx.check_interrupted)
