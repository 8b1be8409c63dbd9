"""Controls benchmark on full-size SD1.5 (random fp32 weights, in memory): prints one JSON object.

``lora``: a kohya rank-32 LoRA on every attention / feed-forward linear and every ``proj_in``/``proj_out``
(192 targets, the usual SD1.5 LoRA) is written to a temporary file and applied through
:class:`~engine.models.patching.LoraPatcher`, the ModelManager's patcher:

* ``first_apply_s``: read + parse + resolve + apply (fresh memory for the patched weights);
* ``apply_remove_s``: median of ``--repeats`` strength changes, each applied and then removed
  (a user moving a strength slider); target <= 1 s on the 2-core development CPU;
* ``reference_s``: one ``torch.add`` over the same weights (a memory-bound pass), and the ratio.

``controlnet``: one sampling step's model call (cond + uncond batch of 2, 64x64 latent = 512x512 px)
with a full-size SD1.5 ControlNet (LDM layout, built from the UNet) against the same call without it,
median of ``--repeats``; target ratio <= 1.4. The hint block's features are computed once, as Loom's
sampler does (they depend on the hint image alone).

    python bench/controls.py [--repeats N] [--only lora|controlnet] > result.json

The machine may be shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RANK = 32
LORA_TARGET_S = 1.0
CONTROLNET_TARGET_RATIO = 1.4


def random_sd15_unet() -> Any:
    import torch

    from engine.backend.unet import UNetConfig, UNetModel

    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        unet = UNetModel(UNetConfig.SD15)
    unet = unet.to_empty(device="cpu").requires_grad_(False).eval()
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0, 0.02, generator=generator)
    return unet


def lora(repeats: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from engine.backend.unet import UNetConfig
    from engine.models.handles import FileRef, WeightPatch
    from engine.models.patching import LoraPatcher, kohya_unet_key

    unet = random_sd15_unet()
    generator = torch.Generator().manual_seed(1)
    targets = [(name, module) for name, module in unet.named_modules()
               if name.endswith(("proj_in", "proj_out")) or (".transformer_blocks." in name and isinstance(
                   module, torch.nn.Linear))]
    tensors = {}
    for name, module in targets:
        key = kohya_unet_key(name, UNetConfig.SD15)
        weight = module.weight
        tensors[f"{key}.lora_down.weight"] = (torch.randn(RANK, weight[0].numel(), generator=generator) * 0.01).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(weight.shape[0], RANK, generator=generator) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(RANK / 2).half()
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "sd15-rank32.safetensors"
        save_file(tensors, str(path))
        ref = FileRef.of(path)
        patcher = LoraPatcher()
        start = time.perf_counter()
        patcher.apply(unet, [WeightPatch(ref, 1.0)], "SD1.x")
        first = time.perf_counter() - start
        patcher.apply(unet, [], "SD1.x")
        cycles = []
        for index in range(repeats):
            start = time.perf_counter()
            patcher.apply(unet, [WeightPatch(ref, 0.1 * (index + 1))], "SD1.x")
            patcher.apply(unet, [], "SD1.x")
            cycles.append(time.perf_counter() - start)
    weights = [module.weight for _, module in targets]
    start = time.perf_counter()
    for weight in weights:
        torch.add(weight, weight)
    reference = time.perf_counter() - start
    median = statistics.median(cycles)
    return {
        "targets": len(targets), "rank": RANK, "threads": torch.get_num_threads(),
        "patched_gib": sum(w.numel() * w.element_size() for w in weights) / 2**30,
        "first_apply_s": round(first, 3), "apply_remove_s": round(median, 3),
        "apply_remove_all_s": [round(c, 3) for c in cycles], "reference_s": round(reference, 3),
        "ratio_to_reference": round(median / reference, 2), "target_s": LORA_TARGET_S,
        "meets_target": median <= LORA_TARGET_S,
    }


def controlnet(repeats: int) -> dict[str, Any]:
    import torch

    from engine.backend.controlnet import ControlNet

    unet = random_sd15_unet()
    net = ControlNet.from_unet(unet).requires_grad_(False).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in (*net.zero_convs.parameters(), *net.middle_block_out.parameters(),
                      *net.input_hint_block.parameters()):
            param.normal_(0, 0.02, generator=generator)
    x = torch.randn(2, 4, 64, 64, generator=generator)
    t = torch.full((2,), 500.0)
    context = torch.randn(2, 77, 768, generator=generator)
    hint = torch.rand(2, 3, 512, 512, generator=generator)

    def plain() -> None:
        unet(x, t, context)

    features = net.encode_hint(hint)  # once per sampling run, as the sampler does

    def controlled() -> None:
        unet(x, t, context, control=net(x, None, t, context, hint_features=features))

    timings: dict[str, list[float]] = {"plain": [], "controlnet": []}
    with torch.inference_mode():
        plain()
        controlled()
        for _ in range(repeats):  # interleaved, so drifting machine load affects both alike
            for name, call in (("plain", plain), ("controlnet", controlled)):
                start = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - start)
    plain_s, control_s = statistics.median(timings["plain"]), statistics.median(timings["controlnet"])
    return {"latent": [2, 4, 64, 64], "threads": torch.get_num_threads(), "plain_step_s": round(plain_s, 3),
            "controlnet_step_s": round(control_s, 3), "ratio": round(control_s / plain_s, 3),
            "target_ratio": CONTROLNET_TARGET_RATIO, "meets_target": control_s / plain_s <= CONTROLNET_TARGET_RATIO}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("lora", "controlnet"), default=None)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    if args.only in (None, "lora"):
        report["lora"] = lora(args.repeats)
    if args.only in (None, "controlnet"):
        report["controlnet"] = controlnet(args.repeats)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
