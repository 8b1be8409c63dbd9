"""Peak memory of merging two full-size SD1.5 checkpoints (random weights) and saving the result. One JSON object.

Issue 19's limit: merging and saving must not hold more than one extra copy of the weights. The phase runs in a
fresh Python process (its peak is its own): ``ModelMergeSimple`` (ratio 0.5) and ``CLIPMergeSimple`` (0.5) of the
random SD1.5 checkpoint (bench/_sd15.py) and a copy of it under another name, then ``CheckpointSave`` (fp16) of the
merged model, merged text encoder and the first file's VAE, through the nodes and a ModelManager on the CPU.

Reported: the RSS after imports (``baseline_gib``), the peak (VmHWM), the peak above the baseline, and for
comparison one copy of the model's weights as Loom holds them on the CPU (fp32: UNet, text encoder, VAE) and the
fp16 file size; ``extra_copies`` = (peak - baseline) / one fp32 copy. The merged UNet is built one weight at a time
(two source tensors at a time, never a source model); the text encoders are merged module by module (the two
inputs' encoders exist together briefly); the file is written tensor by tensor.

    python bench/merge_save.py [--workdir DIR] > /tmp/bench_merge_save.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.merge_save")
GIB = 1024**3
COPY_NAME = "sd15-random-copy.safetensors"


def phase(checkpoint: Path) -> dict[str, Any]:
    """Merge and save in this process; the memory it took."""
    import threading

    from bench.sampling import peak_rss, reset_peak_rss, rss_now_gib
    from engine.context import RunContext
    from engine.events import ListSink
    from engine.folders import Folders
    from engine.models.manager import ModelManager
    from engine.sdk import saving  # noqa: F401  (imported as a saving node's run imports it, before the baseline)
    from nodes.checkpoint_save import CheckpointSave
    from nodes.model_loaders import CheckpointLoaderSimple
    from nodes.model_merging import CLIPMergeSimple, ModelMergeSimple

    with tempfile.TemporaryDirectory(prefix="loom-bench-merge-") as tmp_name:
        tmp = Path(tmp_name)
        folders = Folders(tmp / "input", tmp / "output", tmp / "temp", (checkpoint.parent.parent,))
        folders.ensure()
        manager = ModelManager("cpu")
        ctx = RunContext("save", "bench", folders, ListSink(), threading.Event(), models=manager)
        reset_peak_rss()
        baseline = rss_now_gib()
        start = time.perf_counter()
        model1, clip1, vae = CheckpointLoaderSimple().run(ctx, checkpoint.name)
        model2, clip2, _ = CheckpointLoaderSimple().run(ctx, COPY_NAME)
        [model] = ModelMergeSimple().run(ctx, model1, model2, 0.5)
        [clip] = CLIPMergeSimple().run(ctx, clip1, clip2, 0.5)
        output = CheckpointSave().run(ctx, model, clip, vae, "merged/sd15-merge")
        seconds = time.perf_counter() - start
        assert output.ui is not None
        [saved] = output.ui["models"]
        path = Path(saved["folder"]) / saved["filename"]
        peak = peak_rss()
        loaded = manager.loaded()
        size = path.stat().st_size
        path.unlink()
        return {"baseline_gib": round(baseline, 3), **peak, "seconds": round(seconds, 1),
                "saved_file_gib": round(size / GIB, 3),
                "loaded_parts": [{k: part[k] for k in ("file", "part", "bytes", "dtype")} for part in loaded],
                "one_fp32_copy_gib": round(sum(part["bytes"] for part in loaded) / GIB, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "loom-bench",
                        help="where the random SD1.5 checkpoint is built once and kept")
    parser.add_argument("--phase", type=Path, help=argparse.SUPPRESS)  # internal: run the phase in this process
    args = parser.parse_args(argv)
    if args.phase is not None:
        sys.stdout.write(json.dumps(phase(args.phase)) + "\n")
        return 0
    from bench._sd15 import ensure_checkpoint

    original = ensure_checkpoint(args.workdir)
    copy = original.with_name(COPY_NAME)
    if not copy.is_file() or copy.stat().st_size != original.stat().st_size:
        shutil.copyfile(original, copy)
    result = subprocess.run([sys.executable, __file__, "--phase", str(original)], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the merge phase failed:\n{result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(result.stdout)
    above = measured["vmhwm_gib"] - measured["baseline_gib"]
    measured["peak_above_baseline_gib"] = round(above, 3)
    measured["extra_copies"] = round(above / measured["one_fp32_copy_gib"], 3)
    sys.stdout.write(json.dumps({"bench": "merge_save", **measured}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise SystemExit(main())
