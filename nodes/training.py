"""In-graph LoRA training: TrainLoraNode, LoraModelLoader, SaveLoRANode, LossGraphNode and the dataset loaders
LoadImageSetFromFolderNode / LoadImageTextSetFromFolderNode (ComfyUI's comfy_extras/nodes_train.py names,
inputs and defaults).

A typical graph: LoadImageTextSetFromFolderNode (images + one caption conditioning per image) -> VAEEncode ->
TrainLoraNode -> SaveLoRANode and LossGraphNode; TrainLoraNode's ``model_with_lora`` samples with the LoRA at
once. Training never changes the loaded model: the LoRA is a new patch on the MODEL handle, like LoraLoader's.

Loom's additions: TrainLoraNode's optional ``class_latents`` / ``class_positive`` / ``prior_loss_weight`` for
DreamBooth-style subject training with class prior preservation (each step also trains on a batch of the class
images and adds ``prior_loss_weight`` times that loss). ``algorithm`` LoRA, LoHa and LoKr train (files in the
key formats Loom's LoRA loader reads); OFT is refused with an error, since Loom could not apply the result.
``training_dtype`` bf16 computes in fp32 on a CPU (bf16 matmuls are far slower there) and under bf16 autocast
on CUDA. ``steps`` counts micro-steps (ComfyUI's), with an optimizer step every ``grad_accumulation_steps``.
The tensor work: engine/backend/lora_training.py; the glue: engine/sdk/training.py and engine/sdk/datasets.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.sdk import (
    BOOLEAN,
    CLIP,
    COMBO,
    CONDITIONING,
    FLOAT,
    IMAGE,
    INT,
    LATENT,
    MODEL,
    SEED_MAX,
    STRING,
    ClipHandle,
    Folders,
    Input,
    LoomError,
    ModelHandle,
    Node,
    NodeOutput,
    Output,
    PathOutsideRoot,
    RunContext,
)
from nodes.image_io import expand_prefix, save_images
from nodes.model_loaders import file_fingerprint

if TYPE_CHECKING:
    from torch import Tensor

LORA_MODEL = "LORA_MODEL"
LOSS_MAP = "LOSS_MAP"
NO_LORA = "[None]"
PYTHON_MODULE = "comfy_extras.nodes_train"
DTYPE_CHOICES = ("bf16", "fp32")
ALGORITHMS = ("LoRA", "LoHa", "LoKr", "OFT")
RESIZE_METHODS = ("None", "Stretch", "Crop", "Pad")


def _existing_loras(folders: Folders) -> list[str]:
    return [*folders.list_models("loras"), NO_LORA]


def dataset_folders(folders: Folders) -> list[str]:
    """The input folder's subfolders (the datasets the folder loaders offer), sorted."""
    root = folders.root("input")
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()
                  if entry.is_dir() and not entry.name.startswith(".") and entry.name != "clipspace")


def dataset_path(folders: Folders, folder: str, node: str) -> Path:
    """The dataset folder ``folder`` inside the input folder; a clear error when it is missing or outside."""
    try:
        path = folders.file_path("input", folder)
    except PathOutsideRoot as exc:
        raise PathOutsideRoot(f"{node}: folder {folder!r} is outside the input folder: {exc}; pick one from the "
                              "list") from exc
    if not path.is_dir():
        raise LoomError(f"{node}: folder {folder!r} is not a folder of the input folder {folders.root('input')}; "
                        "put the dataset there (one folder of images) or pick one from the list")
    return path


def folder_fingerprint(folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    """Names, sizes and modification times of every file in the dataset folder (two levels deep)."""
    folder = inputs.get("folder")
    if not isinstance(folder, str):
        return None
    try:
        root = folders.file_path("input", folder)
    except PathOutsideRoot:
        return "outside"
    digest = hashlib.sha256()
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        depth = len(Path(directory).relative_to(root).parts)
        if depth >= 1:
            subdirectories.clear()
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(directory, name))
            except OSError:
                continue  # gone meanwhile: the run reads what is there
            digest.update(f"{Path(directory, name).relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- training


class TrainLoraNode(Node):
    """Train a LoRA of the diffusion model on latents and their conditioning, in the graph."""

    display_name = "Train LoRA"
    category = "training"
    python_module = PYTHON_MODULE
    inputs = (
        Input("model", MODEL, tooltip="The model to train the LoRA on."),
        Input("latents", LATENT, tooltip="The latents to train on (the dataset, VAE-encoded)."),
        Input("positive", CONDITIONING,
              tooltip="The conditioning: one entry for every image, or one entry per image."),
        Input("batch_size", INT, default=1, min=1, max=10000, step=1, tooltip="The batch size for training."),
        Input("grad_accumulation_steps", INT, default=1, min=1, max=1024, step=1,
              tooltip="The number of steps to accumulate gradients over before an optimizer step."),
        Input("steps", INT, default=16, min=1, max=100000, tooltip="The number of steps to train the LoRA for."),
        Input("learning_rate", FLOAT, default=0.0005, min=0.0000001, max=1.0, step=0.000001,
              tooltip="The learning rate."),
        Input("rank", INT, default=8, min=1, max=128, tooltip="The rank of the LoRA layers."),
        Input("optimizer", COMBO, choices=("AdamW", "Adam", "SGD", "RMSprop"), default="AdamW",
              tooltip="The optimizer."),
        Input("loss_function", COMBO, choices=("MSE", "L1", "Huber", "SmoothL1"), default="MSE",
              tooltip="The loss function."),
        Input("seed", INT, default=0, min=0, max=SEED_MAX, tooltip="The seed (LoRA initialisation and noise)."),
        Input("training_dtype", COMBO, choices=DTYPE_CHOICES, default="bf16",
              tooltip="The dtype to train in (bf16 computes in fp32 on a CPU)."),
        Input("lora_dtype", COMBO, choices=DTYPE_CHOICES, default="bf16", tooltip="The dtype of the LoRA weights."),
        Input("algorithm", COMBO, choices=ALGORITHMS, default="LoRA",
              tooltip="The adapter to train: LoRA, LoHa or LoKr (OFT is not supported in Loom)."),
        Input("gradient_checkpointing", BOOLEAN, default=True,
              tooltip="Recompute the UNet blocks' activations in the backward pass (less memory, more time)."),
        Input("existing_lora", COMBO, choices=_existing_loras, default=NO_LORA, file_folder="loras",
              tooltip="A LoRA from models/loras to continue training; [None] starts a new one."),
        Input("class_latents", LATENT, optional=True,
              tooltip="Loom: class images' latents for prior preservation (DreamBooth)."),
        Input("class_positive", CONDITIONING, optional=True,
              tooltip="Loom: the class images' conditioning (one entry, or one per class image)."),
        Input("prior_loss_weight", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, optional=True,
              tooltip="Loom: how much the class images' loss counts."),
    )
    outputs = (Output(MODEL, "model_with_lora"), Output(LORA_MODEL, "lora"), Output(LOSS_MAP, "loss"),
               Output(INT, "steps"))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        name = inputs.get("existing_lora")
        if not isinstance(name, str) or name == NO_LORA:
            return None
        try:
            return file_fingerprint(folders, "loras", name)
        except (OSError, PathOutsideRoot) as exc:
            return f"unreadable:{type(exc).__name__}"

    def run(self, ctx: RunContext, model: ModelHandle, latents: dict[str, Any], positive: list[Any],
            batch_size: int, grad_accumulation_steps: int, steps: int, learning_rate: float, rank: int,
            optimizer: str, loss_function: str, seed: int, training_dtype: str, lora_dtype: str, algorithm: str,
            gradient_checkpointing: bool, existing_lora: str, class_latents: dict[str, Any] | None = None,
            class_positive: list[Any] | None = None, prior_loss_weight: float = 1.0
            ) -> tuple[ModelHandle, dict[str, Tensor], dict[str, list[float]], int]:
        from engine.sdk import training

        settings = training.TrainSettings(
            batch_size=batch_size, grad_accumulation_steps=grad_accumulation_steps, steps=steps,
            learning_rate=learning_rate, rank=rank, optimizer=optimizer, loss_function=loss_function, seed=seed,
            training_dtype=training_dtype, lora_dtype=lora_dtype, algorithm=algorithm,
            gradient_checkpointing=gradient_checkpointing, prior_loss_weight=prior_loss_weight)
        existing = None if existing_lora == NO_LORA else ctx.folders.model_path("loras", existing_lora)
        trained = training.train_lora(ctx, model, latents, positive, settings, class_latents=class_latents,
                                      class_positive=class_positive, existing=existing)
        patched = training.with_lora(ctx, model, trained.lora, 1.0, node="TrainLoraNode")
        return patched, trained.lora, {"loss": trained.losses}, trained.steps


class LoraModelLoader(Node):
    """Apply a trained LoRA (a LORA_MODEL from TrainLoraNode) to a model."""

    display_name = "Load LoRA Model"
    category = "loaders"
    python_module = PYTHON_MODULE
    inputs = (
        Input("model", MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        Input("lora", LORA_MODEL, tooltip="The LoRA model to apply to the diffusion model."),
        Input("strength_model", FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01,
              tooltip="How strongly to modify the diffusion model; 0 leaves it unchanged, negative values invert "
                      "the LoRA."),
    )
    outputs = (Output(MODEL, tooltip="The modified diffusion model."),)

    def run(self, ctx: RunContext, model: ModelHandle, lora: dict[str, Tensor], strength_model: float
            ) -> tuple[ModelHandle]:
        if strength_model == 0:
            return (model,)
        from engine.sdk import training

        return (training.with_lora(ctx, model, lora, strength_model),)


class SaveLoRANode(Node):
    """Save a trained LoRA (a LORA_MODEL) as a safetensors file; a loras/ prefix saves into the loras folder."""

    display_name = "Save LoRA Weights"
    category = "loaders"
    python_module = PYTHON_MODULE
    aliases = ("SaveLoRA",)
    output_node = True
    outputs = ()
    inputs = (
        Input("lora", LORA_MODEL, tooltip="The LoRA model to save."),
        Input("prefix", STRING, default="loras/ComfyUI_trained_lora",
              tooltip="The prefix of the saved file; loras/... saves into the loras model folder."),
        Input("steps", INT, optional=True, socket_only=True,
              tooltip="The steps the LoRA was trained for, put into the file name."),
    )

    def run(self, ctx: RunContext, lora: dict[str, Tensor], prefix: str, steps: int | None = None) -> NodeOutput:
        from engine.sdk import training

        directory, name = ctx.folders.model_save_dir(expand_prefix(prefix, 0, 0))
        path = training.save_lora(ctx, lora, directory, name, steps)
        ctx.log.info("SaveLoRANode: saved %d tensors to %s", len(lora), path)
        return NodeOutput(ui={"models": [{"filename": path.name, "folder": str(path.parent)}]})


class LossGraphNode(Node):
    """Plot a training loss curve (TrainLoraNode's loss) and show it."""

    display_name = "Plot Loss Graph"
    category = "training"
    python_module = PYTHON_MODULE
    output_node = True
    outputs = ()
    inputs = (
        Input("loss", LOSS_MAP, tooltip="Loss map from the training node."),
        Input("filename_prefix", STRING, default="loss_graph", tooltip="Prefix for the saved loss graph image."),
    )

    def run(self, ctx: RunContext, loss: Mapping[str, Any], filename_prefix: str) -> NodeOutput:
        from engine.sdk import training

        values = loss.get("loss") if isinstance(loss, Mapping) else None
        if not isinstance(values, list | tuple):
            raise LoomError("LossGraphNode: loss is not a LOSS_MAP ({'loss': [values]}); connect TrainLoraNode's "
                            "loss output")
        image = training.loss_graph_image([float(v) for v in values])
        return NodeOutput(ui={"images": save_images(ctx, image, filename_prefix, "temp", compress_level=1)})


# --------------------------------------------------------------------------------------------- datasets


def _folder_input() -> Input:
    # No file_folder: it names a folder, which a cluster front cannot ship (it ships input files).
    return Input("folder", COMBO, choices=dataset_folders,
                 tooltip="The folder of the input folder to load images from.")


def _resize_input() -> Input:
    return Input("resize_method", COMBO, choices=RESIZE_METHODS, default="None", optional=True,
                 tooltip="How images of another size than the first are made to fit.")


class LoadImageSetFromFolderNode(Node):
    """Load every image of a folder of the input folder as one IMAGE batch (for training)."""

    display_name = "Load Image Dataset from Folder"
    category = "loaders"
    python_module = PYTHON_MODULE
    inputs = (_folder_input(), _resize_input())
    outputs = (Output(IMAGE),)

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return folder_fingerprint(folders, inputs)

    def run(self, ctx: RunContext, folder: str, resize_method: str = "None") -> tuple[Tensor]:
        from engine.sdk import datasets

        node = "LoadImageSetFromFolderNode"
        loaded = datasets.read_image_set(dataset_path(ctx.folders, folder, node), resize_method, node=node)
        ctx.log.info("%s: %d images from %s", node, len(loaded.files), folder)
        return (loaded.images,)


class LoadImageTextSetFromFolderNode(Node):
    """Load a folder's images with their captions (``name.txt``) encoded as one conditioning entry per image;
    kohya-style ``N_name`` subfolders are read N times."""

    display_name = "Load Image and Text Dataset from Folder"
    category = "loaders"
    python_module = PYTHON_MODULE
    inputs = (
        _folder_input(),
        Input("clip", CLIP, tooltip="The CLIP model used for encoding the text."),
        _resize_input(),
        Input("width", INT, default=-1, min=-1, max=10000, step=1, optional=True,
              tooltip="The width to resize every image to (-1: keep)."),
        Input("height", INT, default=-1, min=-1, max=10000, step=1, optional=True,
              tooltip="The height to resize every image to (-1: keep)."),
    )
    outputs = (Output(IMAGE), Output(CONDITIONING))

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        return folder_fingerprint(folders, inputs)

    def run(self, ctx: RunContext, folder: str, clip: ClipHandle, resize_method: str = "None", width: int = -1,
            height: int = -1) -> tuple[Tensor, list[Any]]:
        from engine.sdk import datasets

        node = "LoadImageTextSetFromFolderNode"
        loaded = datasets.read_image_set(dataset_path(ctx.folders, folder, node), resize_method, node=node,
                                         subfolders=True, width=width, height=height)
        captioned = sum(1 for caption in loaded.captions if caption)
        ctx.log.info("%s: %d images (%d captioned) from %s", node, len(loaded.files), captioned, folder)
        return loaded.images, datasets.encode_captions(ctx, clip, loaded.captions)


TRAINING_NODES: tuple[type[Node], ...] = (TrainLoraNode, LoraModelLoader, SaveLoRANode, LossGraphNode,
                                          LoadImageSetFromFolderNode, LoadImageTextSetFromFolderNode)
