"""Memory benchmark on full-size SD1.5 (random weights, bench/_sd15.py): prints one JSON object.

Each phase runs in a fresh Python process, so a peak is that phase's own:

* ``txt2img_256``: peak RSS (VmHWM) to load the checkpoint and run a 256x256 txt2img (10 euler steps)
  through the executor, as ``python main.py run`` does (bench/sampling.py's txt2img phase);
* ``switches``: two checkpoints (the random SD1.5 file and a copy under another name, so two different
  files) used alternately by a small txt2img, ``--switches`` times through one executor and model
  manager, as a server that switches checkpoints for days would; RSS after each run, and the growth
  between the second run and the last (flat means no leak: every part is held once, the manager's
  LRU bounds how many are held); once more with ``ram_budget`` 5 GiB (``--ram-budget``), where idle
  parts of the other checkpoint are dropped from RAM and read again when next used;
* with CUDA: peak VRAM of the 512x512 txt2img per ``--vram`` mode (not measured on the development CPU).

    python bench/memory.py [--switches 10] [--workdir DIR] > result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.memory")
SECOND_NAME = "sd15-random-copy.safetensors"


def run_child(args: list[str]) -> dict[str, Any]:
    """Run a phase in a fresh interpreter; its JSON from stdout."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def phase_switches(checkpoints: list[Path], switches: int, ram_budget: int | None) -> dict[str, Any]:
    from bench.sampling import peak_rss, rss_now_gib, txt2img_prompt
    from engine.cache import OutputCache
    from engine.events import ListSink
    from engine.executor import Executor
    from engine.folders import Folders
    from engine.models.manager import ModelManager
    from main import build_registry

    baseline = rss_now_gib()
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="loom-bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        folders = Folders(input_dir=tmp / "input", output_dir=tmp / "output", temp_dir=tmp / "temp",
                          model_roots=(checkpoints[0].parent.parent,))
        folders.ensure()
        manager = ModelManager("cpu", ram_budget=ram_budget)
        executor = Executor(build_registry(), folders, OutputCache(1 << 30, 256), manager)
        for index in range(switches):
            checkpoint = checkpoints[index % len(checkpoints)]
            outcome = executor.execute(txt2img_prompt(checkpoint.name, 64, 1), f"switch-{index}", ListSink())
            if outcome.status_str != "success":
                raise RuntimeError(f"switch {index} failed: {outcome.error.message if outcome.error else ''}")
            rss.append(round(rss_now_gib(), 3))
        loaded = manager.loaded()
    return {"switches": switches, "ram_budget_gib": None if ram_budget is None else round(ram_budget / 2**30, 3),
            "rss_after_imports_gib": round(baseline, 3), "rss_after_each_gib": rss,
            "growth_second_to_last_gib": round(rss[-1] - rss[min(1, len(rss) - 1)], 3),
            "peak": peak_rss(), "loaded_parts_at_end": [f"{e['file']}:{e['part']}" for e in loaded]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "loom-bench-sd15")
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--phase", choices=("switches",), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, action="append", help=argparse.SUPPRESS)
    parser.add_argument("--ram-budget", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.phase == "switches":
        json.dump(phase_switches(args.checkpoint, args.switches, args.ram_budget), sys.stdout)
        return
    from bench._sd15 import ensure_checkpoint

    first = ensure_checkpoint(args.workdir)
    second = first.with_name(SECOND_NAME)
    if not second.is_file() or second.stat().st_size != first.stat().st_size:
        log.info("copying %s to %s (a second, distinct checkpoint file)", first.name, second.name)
        shutil.copyfile(first, second)
    report: dict[str, Any] = {
        "txt2img_256": run_child(["bench/sampling.py", "--phase", "txt2img", "--checkpoint", str(first),
                                  "--size", "256", "--steps", "10"]),
    }
    switch_args = ["bench/memory.py", "--phase", "switches", "--switches", str(args.switches),
                   "--checkpoint", str(first), "--checkpoint", str(second)]
    report["switches"] = run_child(switch_args)
    report["switches_ram_budget_5gib"] = run_child([*switch_args, "--ram-budget", str(5 * 2**30)])
    import torch

    report["gpu"] = "not measured: no CUDA device" if not torch.cuda.is_available() else "see bench/sampling.py"
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
