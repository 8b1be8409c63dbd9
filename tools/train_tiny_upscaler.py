"""Train the tiny 2x upscaler for the tiny-shapes demo images: ``models/upscale_models/tiny-shapes-2x.safetensors``.

The network is Real-ESRGAN's compact SRVGGNet (spandrel's ``Compact`` architecture: ``body.N`` convolutions
and PReLUs, a pixel shuffle, plus the nearest-neighbour upscaled input), 32 features, 8 convolutions,
2x; spandrel detects it from the file like any ``realesr-general`` model. Training pairs are Tiny Shapes
images drawn at 128x128 (the target) and at 64x64 (the input, as the demo model's images are drawn),
the input with a little noise and, half of the time, a slight blur (VAE-decoded images are softer);
each step takes one aligned 32x32 input crop of a batch. L1 loss, Adam with a cosine schedule. At the end
it prints JSON: the PSNR of the model and of bicubic upscaling on held-out images.

    python -m tools.train_tiny_upscaler --seed 0 --threads 2
    python -m tools.train_tiny_upscaler --steps 20 --out /tmp/up.safetensors   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.models.upscale import import_spandrel, model_from_state_dict
from tools.tiny_shapes_data import render, sample_free_spec

log = logging.getLogger("tools.train_tiny_upscaler")

OUT = Path("models/upscale_models/tiny-shapes-2x.safetensors")
FEATURES, CONVS, SCALE = 32, 8, 2


def build_network() -> nn.Module:
    import_spandrel()
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=FEATURES, num_conv=CONVS, upscale=SCALE,
                           act_type="prelu")


def make_pairs(count: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``count`` (input 64x64, target 128x128) pairs as float [N, 3, H, W] in 0..1."""
    specs = [sample_free_spec(rng) for _ in range(count)]
    low = np.stack([render(spec, 64) for spec in specs])
    high = np.stack([render(spec, 128) for spec in specs])
    def to_tensor(images: np.ndarray) -> Tensor:
        return torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2).contiguous()
    return to_tensor(low), to_tensor(high)


def degrade(low: Tensor, generator: torch.Generator) -> Tensor:
    """Noise (sigma up to 2/255) and, on half of the images, a 3x3 blur of random strength."""
    batch = low.shape[0]
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = F.conv2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    amount = torch.rand(batch, 1, 1, 1, generator=generator) * (torch.rand(batch, 1, 1, 1, generator=generator) < 0.5)
    mixed = low + amount * (blurred - low)
    noise = torch.randn(low.shape, generator=generator) * torch.rand(batch, 1, 1, 1, generator=generator) * 2 / 255
    return (mixed + noise).clamp(0, 1)


def psnr(output: Tensor, target: Tensor) -> float:
    mse = F.mse_loss(output.clamp(0, 1), target).item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train(args: argparse.Namespace) -> dict[str, float | int | str]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    network = build_network()
    low, high = make_pairs(args.dataset_size, rng)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        index = torch.randint(0, low.shape[0], (args.batch,), generator=generator)
        top, left = (int(v) for v in torch.randint(0, 64 - args.crop + 1, (2,), generator=generator))
        source = low[index, :, top:top + args.crop, left:left + args.crop]
        target = high[index, :, SCALE * top:SCALE * (top + args.crop), SCALE * left:SCALE * (left + args.crop)]
        loss = F.l1_loss(network(degrade(source, generator)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.info("step %d/%d loss %.4f (%.0fs)", step + 1, args.steps, loss.item(), time.perf_counter() - start)
    return evaluate(network.eval(), args, time.perf_counter() - start)


def evaluate(network: nn.Module, args: argparse.Namespace, seconds: float) -> dict[str, float | int | str]:
    """Save the weights, load them back through spandrel, and compare with bicubic on held-out images."""
    state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    loaded = model_from_state_dict(state, args.out.name)
    low, high = make_pairs(64, np.random.default_rng(args.seed + 1000))
    with torch.inference_mode():
        upscaled = loaded(low)
    bicubic = F.interpolate(low, scale_factor=SCALE, mode="bicubic", align_corners=False)
    return {"file": str(args.out), "bytes": args.out.stat().st_size, "architecture": loaded.architecture.name,
            "scale": loaded.scale, "steps": args.steps, "seconds": round(seconds, 1),
            "psnr_model": round(psnr(upscaled, high), 2), "psnr_bicubic": round(psnr(bicubic, high), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=32, help="input crop side (of the 64x64 images)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dataset-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.stdout.write(json.dumps(train(args), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raise SystemExit(main())
