"""LoRA patch benchmark on a full-size SD1.5 UNet (random fp32 weights, in memory): prints one JSON object.

A kohya rank-32 LoRA on every attention / feed-forward linear and every ``proj_in``/``proj_out`` (192
targets, the usual SD1.5 LoRA) is written to a temporary file and applied through
:class:`~engine.models.patching.LoraPatcher`, the ModelManager's patcher:

* ``first_apply_s``: read + parse + resolve + apply (fresh memory for the patched weights);
* ``apply_remove_s``: median of ``--repeats`` strength changes, each applied and then removed
  (the case of a user moving a strength slider); target <= 1 s on the 2-core development CPU;
* ``reference_s``: one ``torch.add`` over the same weights (a memory-bound pass), and the ratio.

    python bench/lora.py [--repeats N] > result.json

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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RANK = 32
TARGET_S = 1.0


def main(argv: list[str] | None = None) -> None:
    import torch
    from safetensors.torch import save_file

    from engine.backend.unet import UNetConfig, UNetModel
    from engine.models.handles import FileRef, WeightPatch
    from engine.models.patching import LoraPatcher, kohya_unet_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        unet = UNetModel(UNetConfig.SD15)
    unet = unet.to_empty(device="cpu").requires_grad_(False)
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0, 0.02, generator=generator)
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
        for index in range(args.repeats):
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
    json.dump({
        "targets": len(targets), "rank": RANK, "threads": torch.get_num_threads(),
        "patched_gib": sum(w.numel() * w.element_size() for w in weights) / 2**30,
        "first_apply_s": round(first, 3), "apply_remove_s": round(median, 3),
        "apply_remove_all_s": [round(c, 3) for c in cycles], "reference_s": round(reference, 3),
        "ratio_to_reference": round(median / reference, 2), "target_s": TARGET_S, "meets_target": median <= TARGET_S,
    }, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
