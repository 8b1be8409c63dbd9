"""Cost of ImageUpscaleWithModel: a 512x512 image upscaled 4x by a full-size ESRGAN. Prints one JSON object.

The model is spandrel's RRDBNet at ESRGAN x4's size (23 RRDB blocks, 64 filters) with random weights (the
speed of a network does not depend on its values), fp32, on the CPU unless ``--device`` says otherwise.
Two measurements in the same run, each the best of ``--repeats`` (run alternately, ABBA):

* ``loom_tiled_s``: Loom's path (``engine.sdk.upscale.upscale_image``: IMAGE in, 512px tiles overlapping
  by 32px, blending, clamping, IMAGE out) on the whole image;
* ``spandrel_tile_s``: spandrel's own forward (``ImageModelDescriptor.__call__``) on one 512x512 tile.

At 512x512 the image is one tile, so ``overhead`` (loom / spandrel) is what the node adds around the model.
``--quick`` uses a tiny RRDBNet (1 block, 8 filters) on 64x64 (a smoke run, not a measurement).

    python bench/upscale.py [--size 512] [--repeats 2] [--quick] > /tmp/bench_upscale.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._timing import best_alternating  # noqa: E402  (after the path setup)

log = logging.getLogger("bench.upscale")


def _write_model(path: Path, blocks: int, filters: int) -> None:
    import torch
    from safetensors.torch import save_file

    from engine.models.upscale import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def measure(size: int, blocks: int, filters: int, device: str, repeats: int) -> dict[str, Any]:
    """Seconds of Loom's tiled upscale and of spandrel's forward on one tile, same model, same image."""
    import torch

    from engine.models.handles import FileRef
    from engine.models.upscale import load_upscale_model, place
    from engine.sdk.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, tile_count, upscale_image

    torch.manual_seed(1)
    image = torch.rand(1, size, size, 3)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "esrgan-x4.safetensors"
        _write_model(path, blocks, filters)
        ref = FileRef.of(path)
        model = load_upscale_model(ref)
        target = torch.device(device)
        place(model, target, torch.float32)
        tile = image[:, :DEFAULT_TILE, :DEFAULT_TILE].movedim(-1, 1).to(target).contiguous()
        with torch.inference_mode():
            model(tile[..., :32, :32])  # warm-up
        spandrel_s, loom_s = best_alternating(lambda: model(tile),
                                               lambda: upscale_image(ref, image, target, torch.float32), repeats)
    return {
        "image": [size, size], "scale": 4, "output": [size * 4, size * 4],
        "model": {"arch": "RRDBNet (ESRGAN)", "blocks": blocks, "filters": filters, "weights": "random"},
        "tile": DEFAULT_TILE, "overlap": DEFAULT_OVERLAP, "tiles": tile_count(size, size, DEFAULT_TILE,
                                                                             DEFAULT_OVERLAP),
        "loom_tiled_s": round(loom_s, 3), "spandrel_tile_s": round(spandrel_s, 3),
        "overhead": round(loom_s / spandrel_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best counts (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quick", action="store_true", help="a tiny RRDBNet on 64x64: a smoke run")
    args = parser.parse_args(argv)
    import torch

    size, blocks, filters = (64, 1, 8) if args.quick else (args.size, 23, 64)
    result = {"bench": "upscale", "quick": args.quick, "device": args.device, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              **measure(size, blocks, filters, args.device, args.repeats)}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
