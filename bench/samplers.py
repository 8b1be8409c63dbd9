"""Cost of every sampler: model evaluations per step and seconds per step. Prints one JSON object.

For each sampler name of ``engine/backend/names.py`` (read at run time, so new samplers are measured
without editing this file), one txt2img KSampler run through the real sampling stack (``ksample`` +
``CFGDenoiser`` + ``UNetApply`` on Loom's ``UNetModel``): cfg 7 (uncond and cond in one batch), the
``normal`` schedule, a random text context. Measured per sampler:

* ``model_evals``: calls of the guided model function (one call = one UNet forward of the CFG batch);
  ``evals_per_step`` divides by the steps asked for;
* ``seconds_per_step``: wall time of the run / steps (one UNet warm-up call before all runs);
* ``capped``: the run stopped at ``--max-evals-per-step`` x steps evaluations (dpm_adaptive's count
  depends on its error estimates, which random weights make large); its seconds are then per
  evaluation budget used, not a finished run.

The network is the full-size SD1.5 UNet (``UNetConfig.SD15``, fp32, CPU unless CUDA is there) with
random weights (``N(0, 0.02)``, norm weights 1 and biases 0: the speed of a network does not depend
on its values) at 256x256 (a 32x32 latent). ``--quick`` uses a tiny UNet at 64x64 and 2 steps (a
smoke run, seconds in all), not a measurement.

    python bench/samplers.py [--steps 10] [--samplers euler,heun,...] [--quick] > /tmp/bench_samplers.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.samplers")

CFG = 7.0
SEED = 0
INIT_STD = 0.02
TINY_UNET: dict[str, Any] = {
    "model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": (1, 1), "transformer_depth": (1, 0),
    "transformer_depth_middle": 0, "transformer_depth_output": (0, 0, 1, 1), "context_dim": 32, "num_heads": 4,
}


class EvalBudgetSpent(Exception):
    """Raised by the counting model function when a sampler used its whole evaluation budget."""


class CountingModel:
    """Wraps a model function ``(x, sigma, conds, **kw) -> denoised``; counts calls, stops at ``limit``."""

    def __init__(self, model_fn: Callable[..., Any], limit: int) -> None:
        self.model_fn = model_fn
        self.limit = limit
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls >= self.limit:
            raise EvalBudgetSpent
        self.calls += 1
        return self.model_fn(*args, **kwargs)


def build_unet(quick: bool, device: Any) -> Any:
    """Loom's SD1.5 UNet (or the tiny one) filled with random weights, in eval mode on ``device``."""
    import torch

    from engine.backend.unet import UNetConfig, UNetModel

    config = UNetConfig(**TINY_UNET) if quick else UNetConfig.SD15
    generator = torch.Generator().manual_seed(SEED)
    unet = UNetModel(config).eval()
    with torch.no_grad():
        for module in unet.modules():
            is_norm = isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm)
            for leaf, param in module.named_parameters(recurse=False):
                if is_norm:
                    param.fill_(1.0 if leaf == "weight" else 0.0)
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)
    return unet.to(device)


def measure_sampler(name: str, unet: Any, steps: int, latent_size: int, max_evals_per_step: int,
                    device: Any) -> dict[str, Any]:
    """One KSampler run of sampler ``name``: evaluations and seconds."""
    import torch

    from engine.backend.conditioning import CondSpec, UNetApply
    from engine.backend.guidance import CFGDenoiser, ParameterizedModel
    from engine.backend.ksampler import ksample
    from engine.backend.model_sampling import ModelSampling
    from engine.backend.samplers import MODEL_SAMPLING_SAMPLERS, needs_uncond
    from engine.backend.schedules import sigmas_for

    ms = ModelSampling.from_betas().to(device)
    sigmas = sigmas_for(ms, "normal", name, steps).to(device)
    generator = torch.Generator().manual_seed(SEED)
    context_dim = unet.config.context_dim
    cond, uncond = (torch.randn(1, 77, context_dim, generator=generator).to(device) for _ in range(2))
    noise = torch.randn(1, 4, latent_size, latent_size, generator=generator).to(device)
    counter = CountingModel(ParameterizedModel(UNetApply(unet), ms), max_evals_per_step * steps)
    denoiser = CFGDenoiser(counter, [CondSpec(cond)], [CondSpec(uncond)], CFG, needs_uncond=needs_uncond(name))
    options = {"model_sampling": ms} if name in MODEL_SAMPLING_SAMPLERS else None
    capped, error = False, None
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            out = ksample(denoiser, ms, name, sigmas, noise, torch.zeros_like(noise), seed=SEED,
                          sampler_options=options)
        finite = bool(torch.isfinite(out).all())
    except EvalBudgetSpent:
        capped, finite = True, True
    except (RuntimeError, ValueError, TypeError) as exc:  # one sampler failing must not end the table
        log.exception("sampler %s failed", name)
        error, finite = f"{type(exc).__name__}: {exc}", False
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "model_evals": counter.calls, "evals_per_step": round(counter.calls / steps, 3),
        "seconds": round(seconds, 4), "seconds_per_step": round(seconds / steps, 4),
        "seconds_per_eval": round(seconds / counter.calls, 4) if counter.calls else None,
        "capped": capped, "finite": finite,
    }
    if error:
        result["error"] = error
    return result


def sampler_names(requested: str | None) -> list[str]:
    """The samplers to measure: all of names.py, or the comma-separated ``requested`` ones (checked)."""
    from engine.backend.names import SAMPLER_NAMES

    if not requested:
        return list(SAMPLER_NAMES)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in names if name not in SAMPLER_NAMES]
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(unknown)}; known: {', '.join(SAMPLER_NAMES)}")
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    names = sampler_names(args.samplers)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    size = 64 if args.quick else 256
    unet = build_unet(args.quick, device)
    latent_size = size // 8
    warm = measure_sampler("euler", unet, 1, latent_size, 1, device)  # first-call overhead, not reported
    log.info("warm-up step %.3f s", warm["seconds"])
    table: dict[str, Any] = {}
    for name in names:
        table[name] = measure_sampler(name, unet, steps, latent_size, args.max_evals_per_step, device)
        log.info("%-32s %s evals, %.3f s/step", name, table[name]["model_evals"], table[name]["seconds_per_step"])
    return {
        "model": "tiny UNet (--quick)" if args.quick else "SD1.5 UNet, random weights", "size": size,
        "steps": steps, "scheduler": "normal", "cfg": CFG, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "samplers": table,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 10; 2 with --quick)")
    parser.add_argument("--samplers", default=None, help="comma-separated sampler names (default: all of names.py)")
    parser.add_argument("--quick", action="store_true", help="tiny UNet at 64x64: a smoke run, not a measurement")
    parser.add_argument("--max-evals-per-step", type=int, default=20, help="stop a run after steps x this many evals")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is available")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    result = run(parse_args(argv))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
