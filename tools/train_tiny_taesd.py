"""Distil the tiny-shapes demo VAE into a TAESD (Loom's ``engine.backend.taesd``), saved in TAESD's key layout.

The teacher is the shipped checkpoint's VAE. The student decoder learns to map *model-space*
latents (the VAE latent times SD1's 0.18215) to the teacher's decoded image in 0..1; the student
encoder learns the teacher's posterior mean times 0.18215 from images in 0..1. Besides the clean
latents of rendered images, the decoder sees blends of two latents and noised latents (what a
sampler's denoised estimate looks like early on), each with the teacher's decode as its target.
Saved as ``models/vae_approx/taesd_decoder.safetensors`` and ``taesd_encoder.safetensors``: the
file names ComfyUI looks for for SD1 models, with bare index keys (``1.weight``, ``3.conv.0.weight``,
...). The width is 16 channels, not the published 64: Loom reads the width from the weights.

    python -m tools.train_tiny_taesd --seed 0 --threads 1
    python -m tools.train_tiny_taesd --steps 20 --dataset-size 128 --out-dir /tmp/taesd   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.backend.taesd import build_decoder, build_encoder, load_decoder, load_encoder
from engine.backend.vae import SD1_SCALE_FACTOR, AutoencoderKL
from tools.tiny_shapes_base import DEFAULT_BASE, load_base
from tools.tiny_shapes_data import make_dataset
from tools.train_tiny_shapes import Progress, lr_at, set_lr, to_tensor

log = logging.getLogger("tools.train_tiny_taesd")


@dataclasses.dataclass(frozen=True)
class TaesdHyper:
    """Distillation hyperparameters (the defaults are the shipped files')."""

    seed: int = 0
    steps: int = 1200
    batch: int = 32
    crop: int = 4
    crop_fraction: float = 0.75
    width: int = 16
    lr: float = 2e-3
    warmup: int = 30
    dataset_size: int = 1200


@torch.no_grad()
def teacher_pairs(vae: AutoencoderKL, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(model-space latents, teacher decodes in 0..1): clean latents, blends of two and noised ones."""
    clean = torch.cat([vae.encode(images[i:i + 256]) for i in range(0, len(images), 256)]) * SD1_SCALE_FACTOR
    other = clean[torch.randperm(len(clean), generator=generator)]
    weight = torch.rand(len(clean), 1, 1, 1, generator=generator)
    blends = torch.lerp(clean, other, weight * 0.5)
    noised = clean + torch.randn(clean.shape, generator=generator) * torch.rand(len(clean), 1, 1, 1,
                                                                               generator=generator) * 0.8
    latents = torch.cat([clean, blends, noised])
    decoded = torch.cat([vae.decode(latents[i:i + 256] / SD1_SCALE_FACTOR) for i in range(0, len(latents), 256)])
    return latents, ((decoded + 1.0) / 2.0).clamp(0.0, 1.0)


def crop_pair(inputs: Tensor, targets: Tensor, cells: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random window of ``cells`` x ``cells`` latent cells from inputs and targets (one of them is
    the latent, 8x smaller than the other)."""
    grid = min(inputs.shape[-1], targets.shape[-1])
    oy, ox = (int(v) for v in torch.randint(0, grid - cells + 1, (2,), generator=generator))

    def window(t: Tensor) -> Tensor:
        k = t.shape[-1] // grid
        return t[..., oy * k:(oy + cells) * k, ox * k:(ox + cells) * k]
    return window(inputs), window(targets)


def train_part(student: nn.Module, inputs: Tensor, targets: Tensor, hyper: TaesdHyper, name: str,
               log_every: int) -> Progress:
    """Adam on L1 + MSE between the student's output for ``inputs`` and ``targets``: windows of
    ``hyper.crop`` latent cells for the first ``crop_fraction`` of the steps (4x cheaper), then whole images."""
    generator = torch.Generator().manual_seed(hyper.seed + len(name))
    optimizer = torch.optim.Adam(student.parameters(), lr=hyper.lr)
    progress = Progress(name, hyper.steps, log_every)
    student.train()
    for step in range(hyper.steps):
        set_lr(optimizer, lr_at(step, hyper.steps, hyper.lr, hyper.warmup))
        index = torch.randint(0, len(inputs), (hyper.batch,), generator=generator)
        x, y = inputs[index], targets[index]
        if step < hyper.steps * hyper.crop_fraction:
            x, y = crop_pair(x, y, hyper.crop, generator)
        out = student(x)
        loss = F.l1_loss(out, y) + F.mse_loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.step(step, float(loss.detach()))
    student.eval()
    return progress


def save_part(module: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "source": "tools/train_tiny_taesd.py"})


@torch.no_grad()
def evaluate(vae: AutoencoderKL, images: Tensor, out_dir: Path) -> dict[str, float]:
    """Read the saved files back as Loom loads them; mean |difference| from the teacher on held-back images."""
    from safetensors.torch import load_file

    decoder = load_decoder(load_file(str(out_dir / "taesd_decoder.safetensors")))
    encoder = load_encoder(load_file(str(out_dir / "taesd_encoder.safetensors")))
    latents = vae.encode(images)
    teacher = ((vae.decode(latents) + 1.0) / 2.0).clamp(0.0, 1.0)
    student = decoder(latents * SD1_SCALE_FACTOR).clamp(0.0, 1.0)
    encoded = encoder((images + 1.0) / 2.0)
    return {"decoder_mae_0_1": round(float((student - teacher).abs().mean()), 4),
            "encoder_mae_model_space": round(float((encoded - latents * SD1_SCALE_FACTOR).abs().mean()), 4),
            "model_space_latent_std": round(float((latents * SD1_SCALE_FACTOR).std()), 4)}


def distil(hyper: TaesdHyper, base: Path, out_dir: Path, log_every: int) -> dict[str, Any]:
    torch.manual_seed(hyper.seed)
    started = time.perf_counter()
    vae = load_base(base, torch.device("cpu"))[0]
    images = to_tensor(make_dataset(hyper.dataset_size + 64, hyper.seed)[0], torch.device("cpu"))
    train_images, held_back = images[:-64], images[-64:]
    latents, decoded = teacher_pairs(vae, train_images, torch.Generator().manual_seed(hyper.seed))
    log.info("teacher pairs: %d latents", len(latents))
    decoder, encoder = build_decoder(hyper.width), build_encoder(hyper.width)
    dec_progress = train_part(decoder, latents, decoded, hyper, "decoder", log_every)
    with torch.no_grad():
        targets = vae.encode(train_images) * SD1_SCALE_FACTOR
    enc_progress = train_part(encoder, (train_images + 1.0) / 2.0, targets, hyper, "encoder", log_every)
    save_part(decoder, out_dir / "taesd_decoder.safetensors")
    save_part(encoder, out_dir / "taesd_encoder.safetensors")
    return {"out_dir": str(out_dir), "width": hyper.width, "steps": hyper.steps,
            "decoder_s_per_step": round(dec_progress.seconds_per_step(), 3),
            "encoder_s_per_step": round(enc_progress.seconds_per_step(), 3),
            "kilobytes": {p.name: round(p.stat().st_size / 1e3, 1) for p in sorted(out_dir.glob("taesd_*"))},
            **evaluate(vae, held_back, out_dir), "minutes": round((time.perf_counter() - started) / 60, 1),
            "threads": torch.get_num_threads()}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = TaesdHyper()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--out-dir", type=Path, default=Path("models/vae_approx"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    hyper = TaesdHyper(seed=args.seed, steps=args.steps, batch=args.batch, width=args.width,
                       dataset_size=args.dataset_size)
    report = distil(hyper, args.base, args.out_dir, args.log_every)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
