"""The node SDK: the one surface that nodes (Loom's and, through the adapter, custom packs') import
from the engine.

This module is torch-free and is imported at the top of a node module: declarations (Node, Input,
Output, socket types), the RunContext a node runs with, the model handles on MODEL/CLIP/VAE/
CONTROL_NET edges, the ModelProvider behind ``ctx.models``, errors and the names nodes list in their
combos. So registering nodes and answering ``/object_info`` never loads torch.

The tensor work nodes hand over lives behind torch-backed SDK modules that a node imports *inside*
``run`` (the first prompt pays for torch, not the server's start):

* :mod:`engine.sdk.ops`: sampling, VAE, text encoding, conditioning and previews;
* :mod:`engine.sdk.imaging`: image, mask and latent arithmetic;
* :mod:`engine.sdk.files`: checking and reading checkpoints, LoRAs and ControlNets, image and latent files;
* :mod:`engine.sdk.compositing`: Porter-Duff compositing, alpha split/join and mask editing;
* :mod:`engine.sdk.image_edit`: image transforms and filters (crop, rotate, stitch, blur, blend, ...);
* :mod:`engine.sdk.latent_edit`: latent transforms, rebatching and latent operations.

``import-linter`` (pyproject.toml) enforces that nodes import the engine only through this package
and that this module stays torch-free.
"""

from __future__ import annotations

from engine.backend.names import SAMPLER_NAMES, SCHEDULER_NAMES
from engine.backend.prompt_grammar import EMBEDDING_PREFIX
from engine.context import RunContext
from engine.errors import Interrupted, LoomError, ModelError, PathOutsideRoot
from engine.expansion import GraphBuilder
from engine.files import next_counter
from engine.folders import Folders, split_annotation
from engine.jsonutil import dumps_compact
from engine.models import hooks
from engine.models.families import ModelFamily
from engine.models.handles import (
    ClipHandle,
    ControlNetHandle,
    FileRef,
    MergeRule,
    ModelHandle,
    VaeHandle,
    WeightPatch,
)
from engine.node import SEED_MAX, Input, Node, NodeOutput, Output
from engine.providers import ModelProvider, NoModels
from engine.registry import NodeRegistry
from engine.types import (
    ANY,
    BOOLEAN,
    CLIP,
    COMBO,
    CONDITIONING,
    CONTROL_NET,
    FLOAT,
    GUIDER,
    IMAGE,
    INT,
    LATENT,
    MASK,
    MODEL,
    NOISE,
    SAMPLER,
    SIGMAS,
    STRING,
    VAE,
)
from engine.vae_approx import TINY_VAES, approx_file, tiny_vae_names

__all__ = [
    "ANY", "BOOLEAN", "CLIP", "COMBO", "CONDITIONING", "CONTROL_NET", "EMBEDDING_PREFIX", "FLOAT", "GUIDER",
    "IMAGE", "INT", "LATENT", "MASK", "MODEL", "NOISE", "SAMPLER", "SAMPLER_NAMES", "SCHEDULER_NAMES", "SEED_MAX",
    "SIGMAS", "STRING", "TINY_VAES", "VAE", "approx_file", "tiny_vae_names",
    "ClipHandle", "ControlNetHandle", "FileRef", "Folders", "GraphBuilder", "Input", "Interrupted", "LoomError",
    "MergeRule", "ModelError", "ModelFamily", "ModelHandle", "ModelProvider", "Node", "NodeOutput", "NodeRegistry",
    "NoModels", "Output", "PathOutsideRoot", "RunContext", "VaeHandle", "WeightPatch", "dumps_compact",
    "hooks", "next_counter", "split_annotation",
]
