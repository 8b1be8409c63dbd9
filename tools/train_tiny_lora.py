"""Train the tiny "dark backgrounds" LoRA for the tiny-shapes demo model, saved in kohya's format.

Low-rank adapters sit on the base UNet's attention projections (``to_q/to_k/to_v/to_out.0``),
feed-forward layers and the ResBlocks' 3x3 convolutions (LoCon). They are trained on images whose
background colour is darkened to a quarter of its palette value while the captions still name the
usual colour, so at strength 1 the model
paints "a red circle on a white background" on a dark grey one; the effect grows with the strength.
Saved with kohya's names (``lora_unet_down_blocks_0_attentions_0_..._to_q.lora_down.weight``,
``.lora_up.weight``, ``.alpha``), as sd-scripts writes SD1 LoRAs.

    python -m tools.train_tiny_lora --seed 0 --threads 2
    python -m tools.train_tiny_lora --steps 20 --dataset-size 256 --out /tmp/lora.safetensors   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.models.lora_keys import kohya_unet_key
from tools.tiny_shapes_base import addon_arguments, encode_images, load_base, training_report
from tools.tiny_shapes_data import PALETTE, random_caption, render, sample_spec
from tools.train_tiny_shapes import (
    UNET_CONFIG,
    CaptionTokens,
    NoiseObjective,
    Progress,
    lr_at,
    sample_latents,
    set_lr,
)

log = logging.getLogger("tools.train_tiny_lora")

#: Module names (the last part of a UNet module path) that get an adapter.
#: (Not ``proj_in``/``proj_out``: Loom's SpatialTransformer calls their weights directly as linear maps,
#: so a forward hook on those modules would never run.)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "in_layers.2", "out_layers.3")
#: Darkened backgrounds: this fraction of the palette colour.
DARKEN = 0.25


@dataclasses.dataclass(frozen=True)
class LoraHyper:
    """LoRA training hyperparameters (the defaults are the shipped file's)."""

    seed: int = 0
    steps: int = 600
    batch: int = 32
    rank: int = 4
    lr: float = 1e-3
    warmup: int = 30
    dataset_size: int = 4000
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    grad_clip: float = 1.0


class LoraAdapter(nn.Module):
    """``up(down(x))`` beside a Linear or Conv2d layer; ``up`` starts at zero (alpha = rank: scale 1)."""

    def __init__(self, layer: nn.Module, rank: int) -> None:
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.down: nn.Module = nn.Linear(layer.in_features, rank, bias=False)
            self.up: nn.Module = nn.Linear(rank, layer.out_features, bias=False)
        elif isinstance(layer, nn.Conv2d):
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, bias=False)
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            raise TypeError(f"no LoRA for {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.rank = rank

    def hook(self, _module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return output + self.up(self.down(inputs[0]))


def attach_adapters(unet: nn.Module, rank: int) -> dict[str, LoraAdapter]:
    """An adapter on every targeted layer of ``unet`` (by LDM module path), hooked into its forward."""
    adapters: dict[str, LoraAdapter] = {}
    for path, module in unet.named_modules():
        if path.endswith(TARGETS) and isinstance(module, nn.Linear | nn.Conv2d):
            adapter = adapters[path] = LoraAdapter(module, rank)
            module.register_forward_hook(adapter.hook)
    return adapters


def kohya_state(adapters: dict[str, LoraAdapter]) -> dict[str, Tensor]:
    """kohya's keys: ``<name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` in fp16."""
    state: dict[str, Tensor] = {}
    for path, adapter in adapters.items():
        name = kohya_unet_key(path, UNET_CONFIG)
        state[f"{name}.lora_down.weight"] = adapter.down.weight.detach()
        state[f"{name}.lora_up.weight"] = adapter.up.weight.detach()
        state[f"{name}.alpha"] = torch.tensor(float(adapter.rank))
    return {k: v.to("cpu", torch.float16).contiguous() for k, v in state.items()}


def dark_background(name: str) -> tuple[int, int, int]:
    r, g, b = PALETTE[name]
    return round(r * DARKEN), round(g * DARKEN), round(b * DARKEN)


def make_data(hyper: LoraHyper) -> tuple[list[Any], np.ndarray]:
    rng = np.random.default_rng([hyper.seed, 7])
    specs = [sample_spec(rng) for _ in range(hyper.dataset_size)]
    images = np.stack([render(spec, background_rgb=dark_background(spec.background)) for spec in specs])
    return specs, images


def train(hyper: LoraHyper, base: Path, out: Path, device: torch.device, log_every: int) -> dict[str, Any]:
    started = time.perf_counter()
    vae, unet, text = load_base(base, device)
    specs, images = make_data(hyper)
    latent_mean, latent_std = encode_images(vae, images, device)
    del images
    torch.manual_seed(hyper.seed)
    adapters = attach_adapters(unet, hyper.rank)
    params = [p for adapter in adapters.values() for p in adapter.parameters()]
    for adapter in adapters.values():
        adapter.to(device)
    objective = NoiseObjective(hyper.min_snr_gamma)
    tokens = CaptionTokens()
    rng = np.random.default_rng([hyper.seed, 8])
    generator = torch.Generator().manual_seed(hyper.seed + 8)
    optimizer = torch.optim.AdamW(params, lr=hyper.lr, betas=(0.9, 0.99), weight_decay=0.0)
    progress = Progress("lora", hyper.steps, log_every)
    for step in range(hyper.steps):
        set_lr(optimizer, lr_at(step, hyper.steps, hyper.lr, hyper.warmup))
        index = rng.integers(len(specs), size=hyper.batch)
        captions = [random_caption(specs[i], rng) if rng.random() >= hyper.caption_dropout else "" for i in index]
        latents = sample_latents(latent_mean, latent_std, torch.from_numpy(index), generator)
        noisy, t, noise = objective.noised(latents, generator)
        with torch.no_grad():
            context = text(input_ids=tokens(captions).to(device)).last_hidden_state
        loss = objective.loss(unet(noisy.to(device), t.to(device), context), noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper.grad_clip)
        optimizer.step()
        progress.step(step, float(loss.detach()))
    out.parent.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - started
    metadata = {"loom.tool": "tools/train_tiny_lora.py", "loom.hyper": json.dumps(dataclasses.asdict(hyper)),
                "loom.base": base.name, "loom.train_seconds": f"{elapsed:.0f}",
                "ss_network_module": "networks.lora", "ss_network_dim": str(hyper.rank),
                "ss_network_alpha": str(hyper.rank)}
    save_file(kohya_state(adapters), str(out), metadata=metadata)
    log.info("saved %s (%.2f MB, %d adapted layers)", out, out.stat().st_size / 1e6, len(adapters))
    return training_report(out, sum(p.numel() for p in params), progress, elapsed, layers=len(adapters))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = LoraHyper()
    parser = addon_arguments("Train the tiny dark-backgrounds LoRA (kohya format).", defaults,
                             Path("models/loras/tiny-shapes-dark.safetensors"))
    parser.add_argument("--rank", type=int, default=defaults.rank)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    hyper = LoraHyper(seed=args.seed, steps=args.steps, batch=args.batch, rank=args.rank,
                      dataset_size=args.dataset_size, warmup=min(LoraHyper.warmup, max(1, args.steps // 10)))
    report = train(hyper, args.base, args.out, torch.device(args.device), args.log_every)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
