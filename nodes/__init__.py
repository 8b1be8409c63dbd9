"""Loom's built-in nodes. Nothing registers at import time: call :func:`register_builtin_nodes`."""

from __future__ import annotations

from engine.sdk import Node, NodeRegistry


def register_builtin_nodes(registry: NodeRegistry) -> None:
    """Register every built-in node class into ``registry``."""
    from nodes.checkpoint_save import CHECKPOINT_SAVE_NODES
    from nodes.clip_vision import CLIP_VISION_NODES
    from nodes.compositing import COMPOSITING_NODES
    from nodes.conditioning import CONDITIONING_NODES
    from nodes.controlnet import CONTROLNET_NODES
    from nodes.custom_sampling import CUSTOM_SAMPLING_NODES
    from nodes.diff_controlnet import DIFF_CONTROLNET_NODES
    from nodes.flow_models import FLOW_MODEL_NODES
    from nodes.flow_text import FLOW_TEXT_NODES
    from nodes.gligen import GLIGEN_NODES
    from nodes.guidance import GUIDANCE_NODES
    from nodes.hooks import HOOK_NODES
    from nodes.hypernetwork import HYPERNETWORK_NODES
    from nodes.image_conditioning import IMAGE_CONDITIONING_NODES
    from nodes.image_filters import IMAGE_FILTER_NODES
    from nodes.image_io import IMAGE_IO_NODES
    from nodes.image_ops import IMAGE_OPS_NODES
    from nodes.image_outputs import IMAGE_OUTPUT_NODES
    from nodes.image_transform import IMAGE_TRANSFORM_NODES
    from nodes.inpaint import INPAINT_NODES
    from nodes.latent_io import LATENT_IO_NODES
    from nodes.latent_operations import LATENT_OPERATION_NODES
    from nodes.latent_ops import LATENT_NODES
    from nodes.latent_transform import LATENT_TRANSFORM_NODES
    from nodes.lora import LORA_NODES
    from nodes.masks import MASK_NODES
    from nodes.model_loaders import MODEL_LOADER_NODES
    from nodes.model_merging import MODEL_MERGING_NODES
    from nodes.model_saving import MODEL_SAVING_NODES
    from nodes.part_loaders import PART_LOADER_NODES
    from nodes.photomaker import PHOTOMAKER_NODES
    from nodes.preprocess import PREPROCESS_NODES
    from nodes.primitives import PRIMITIVE_NODES
    from nodes.safety import SAFETY_NODES
    from nodes.sampling import SAMPLING_NODES
    from nodes.schedulers import SCHEDULER_NODES
    from nodes.strings import STRING_NODES
    from nodes.training import TRAINING_NODES
    from nodes.unet_patches import UNET_PATCH_NODES
    from nodes.upscale_model import UPSCALE_MODEL_NODES
    from nodes.vae import VAE_NODES

    groups: tuple[tuple[type[Node], ...], ...] = (
        MODEL_LOADER_NODES, PART_LOADER_NODES, FLOW_MODEL_NODES, FLOW_TEXT_NODES,
        CONDITIONING_NODES, SAMPLING_NODES, VAE_NODES, IMAGE_IO_NODES, IMAGE_OPS_NODES,
        LATENT_NODES, LATENT_IO_NODES, INPAINT_NODES, MASK_NODES, CONTROLNET_NODES, PREPROCESS_NODES, LORA_NODES,
        DIFF_CONTROLNET_NODES,
        PRIMITIVE_NODES, STRING_NODES, IMAGE_TRANSFORM_NODES, IMAGE_FILTER_NODES, COMPOSITING_NODES,
        IMAGE_OUTPUT_NODES, LATENT_TRANSFORM_NODES, LATENT_OPERATION_NODES, SCHEDULER_NODES, CUSTOM_SAMPLING_NODES,
        GUIDANCE_NODES, UNET_PATCH_NODES, SAFETY_NODES, HYPERNETWORK_NODES, CLIP_VISION_NODES,
        UPSCALE_MODEL_NODES, IMAGE_CONDITIONING_NODES, PHOTOMAKER_NODES, GLIGEN_NODES, MODEL_MERGING_NODES,
        CHECKPOINT_SAVE_NODES, HOOK_NODES, MODEL_SAVING_NODES, TRAINING_NODES)
    for group in groups:
        for cls in group:
            registry.register(cls)
