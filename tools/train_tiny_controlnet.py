"""Train the tiny edge ControlNet for the tiny-shapes demo model, saved in the LDM ControlNet layout.

The ControlNet (``control_model.*``: a trainable copy of the base UNet's encoder, the LDM hint block
and zero convolutions; Loom's :class:`~engine.backend.controlnet.ControlNet`) learns to put the shape
where a white-on-black outline (:func:`tools.tiny_shapes_data.edge_map`, which looks like a Canny edge
map or a scribble) draws it. Training images have their shape anywhere in the frame, not only on the
3x3 grid of the base model's captions, and most captions leave the position out, so the location
must come from the hint. The base UNet and text encoder are frozen; the objective is the base
model's (eps prediction, Min-SNR weights), with the ControlNet's residuals added to the UNet.

    python -m tools.train_tiny_controlnet --seed 0 --threads 2
    python -m tools.train_tiny_controlnet --steps 20 --dataset-size 256 --out /tmp/cn.safetensors   # smoke run
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

import numpy as np
import torch
from safetensors.torch import save_file

from engine.backend.controlnet import ControlNet
from tools.tiny_shapes_base import addon_arguments, encode_images, hint_tensor, load_base, training_report
from tools.tiny_shapes_data import edge_map, random_caption, render_batch, sample_free_spec
from tools.train_tiny_shapes import CaptionTokens, Ema, NoiseObjective, Progress, lr_at, sample_latents, set_lr

log = logging.getLogger("tools.train_tiny_controlnet")

PREFIX = "control_model."


@dataclasses.dataclass(frozen=True)
class ControlHyper:
    """ControlNet training hyperparameters (the defaults are the shipped file's)."""

    seed: int = 0
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 50
    dataset_size: int = 6000
    drop_position: float = 0.8
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    grad_clip: float = 1.0


def make_data(hyper: ControlHyper) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Specs with free positions, their images and their edge maps (uint8)."""
    rng = np.random.default_rng([hyper.seed, 5])
    specs = [sample_free_spec(rng) for _ in range(hyper.dataset_size)]
    hints = np.stack([edge_map(spec) for spec in specs])
    return specs, render_batch(specs), hints


def train(hyper: ControlHyper, base: Path, out: Path, device: torch.device, log_every: int) -> dict[str, Any]:
    started = time.perf_counter()
    vae, unet, text = load_base(base, device)
    specs, images, hints = make_data(hyper)
    latent_mean, latent_std = encode_images(vae, images, device)
    del images
    hint_images = hint_tensor(hints)
    torch.manual_seed(hyper.seed)
    net = ControlNet.from_unet(unet)
    objective = NoiseObjective(hyper.min_snr_gamma)
    tokens = CaptionTokens()
    rng = np.random.default_rng([hyper.seed, 6])
    generator = torch.Generator().manual_seed(hyper.seed + 6)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hyper.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = Ema(net, hyper.ema_decay)
    progress = Progress("controlnet", hyper.steps, log_every)
    for step in range(hyper.steps):
        set_lr(optimizer, lr_at(step, hyper.steps, hyper.lr, hyper.warmup))
        index = rng.integers(len(specs), size=hyper.batch)
        captions = [random_caption(specs[i], rng, drop_position=hyper.drop_position)
                    if rng.random() >= hyper.caption_dropout else "" for i in index]
        torch_index = torch.from_numpy(index)
        latents = sample_latents(latent_mean, latent_std, torch_index, generator)
        noisy, t, noise = objective.noised(latents, generator)
        with torch.no_grad():
            context = text(input_ids=tokens(captions).to(device)).last_hidden_state
        noisy, t_dev = noisy.to(device), t.to(device)
        control = net(noisy, hint_images[torch_index].to(device), t_dev, context)
        loss = objective.loss(unet(noisy, t_dev, context, control=control), noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper.grad_clip)
        optimizer.step()
        ema.update(net)
        progress.step(step, float(loss.detach()))
    ema.copy_to(net)
    state = {PREFIX + key: tensor.detach().to("cpu", torch.float16).contiguous()
             for key, tensor in net.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - started
    metadata = {"loom.tool": "tools/train_tiny_controlnet.py", "loom.hyper": json.dumps(dataclasses.asdict(hyper)),
                "loom.base": base.name, "loom.train_seconds": f"{elapsed:.0f}"}
    save_file(state, str(out), metadata=metadata)
    log.info("saved %s (%.2f MB)", out, out.stat().st_size / 1e6)
    return training_report(out, sum(p.numel() for p in net.parameters()), progress, elapsed)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = addon_arguments("Train the tiny edge ControlNet (LDM layout) for tiny-shapes.", ControlHyper(),
                             Path("models/controlnet/tiny-shapes-edges.safetensors"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    hyper = ControlHyper(seed=args.seed, steps=args.steps, batch=args.batch, dataset_size=args.dataset_size,
                         warmup=min(ControlHyper.warmup, max(1, args.steps // 10)))
    report = train(hyper, args.base, args.out, torch.device(args.device), args.log_every)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
