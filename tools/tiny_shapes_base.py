"""What the add-on trainers (ControlNet, LoRA) share: the trained base model as trainable torch
modules, the encoded latents of a rendered dataset, their command line and their report.

The base checkpoint is read back from its SD1-layout .safetensors file (the shipped
``models/checkpoints/tiny-shapes.safetensors``), so an add-on is always trained against exactly the
weights users load.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import CLIPTextModel

from engine.backend.unet import UNetModel
from engine.backend.vae import AutoencoderKL
from tools.train_tiny_shapes import (
    TEXT_PREFIX,
    UNET_CONFIG,
    UNET_PREFIX,
    VAE_CONFIG,
    VAE_PREFIX,
    text_config,
    to_tensor,
)

log = logging.getLogger("tools.tiny_shapes_base")

DEFAULT_BASE = Path("models/checkpoints/tiny-shapes.safetensors")


def addon_arguments(description: str, defaults: Any, out: Path) -> argparse.ArgumentParser:
    """The options every add-on trainer takes; ``defaults`` is its hyperparameter dataclass."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the base checkpoint")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=50)
    return parser


def training_report(out: Path, parameters: int, progress: Any, elapsed: float, **extra: Any) -> dict[str, Any]:
    """What a trainer prints when done: the file, its size, the speed and the last losses."""
    return {"out": str(out), "megabytes": round(out.stat().st_size / 1e6, 3), **extra, "parameters": parameters,
            "s_per_step": round(progress.seconds_per_step(), 3),
            "final_loss": round(float(np.mean(progress.losses[-50:])), 4),
            "train_minutes": round(elapsed / 60, 1), "threads": torch.get_num_threads()}


def load_base(path: Path, device: torch.device) -> tuple[AutoencoderKL, UNetModel, CLIPTextModel]:
    """The base checkpoint's VAE, UNet and text encoder in fp32, frozen, in eval mode."""
    state = load_file(str(path))

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}

    vae, unet, text = AutoencoderKL(VAE_CONFIG), UNetModel(UNET_CONFIG), CLIPTextModel(text_config())
    vae.load_state_dict(part(VAE_PREFIX))
    unet.load_state_dict(part(UNET_PREFIX))
    text_state = {k: v for k, v in part(TEXT_PREFIX).items() if k != "embeddings.position_ids"}
    text.load_state_dict(text_state, strict=False)
    missing = set(text.state_dict()) - set(text_state) - {"embeddings.position_ids"}
    if missing:
        raise RuntimeError(f"{path}: text encoder weights missing: {sorted(missing)[:5]}")
    for module in (vae, unet, text):
        module.to(device).requires_grad_(False).eval()
    log.info("loaded base model %s", path)
    return vae, unet, text


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: np.ndarray, device: torch.device,
                  chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior (mean, std) of uint8 images ``[N, H, W, 3]``, chunk by chunk, on the CPU."""
    means, stds = [], []
    for start in range(0, len(images), chunk):
        mean, logvar = vae.encode_moments(to_tensor(images[start:start + chunk], device))
        means.append(mean.float().cpu())
        stds.append(torch.exp(0.5 * logvar).float().cpu())
    return torch.cat(means), torch.cat(stds)


def hint_tensor(hints: np.ndarray) -> Tensor:
    """uint8 hint images ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in 0..1 (what ControlNets read)."""
    return torch.from_numpy(hints).permute(0, 3, 1, 2).float().div(255.0)
