"""Full-size SD3.5 medium and Flux.1 dev on the CPU, random weights: prints one JSON object.

Issue 22 item 7: memory and speed of the rectified-flow transformers at full size on this machine. Each phase
runs in a fresh Python process, so a peak is that phase's own:

* ``make``: writes random-weight files in the real single-file layouts, one tensor at a time
  (engine/models/safetensors_writer.py, so a 12B model is never held in RAM): the SD3.5 medium MMDiT
  (``model.diffusion_model.*``, every tensor fp16, ~4.9 GB) and Flux.1 dev as a UNETLoader file (bare keys,
  the Linear weights in float8_e4m3fn like ``flux1-dev-fp8``, biases and norm scales in bf16, ~12 GB). Key names
  and shapes are the modules' own (built on the meta device). Weights are ``N(0, 0.02)`` (norm scales 1, norm
  biases 0); speed does not depend on the values. Files that already exist with the right header and size are
  reused; free disk is checked before anything is written; the files are deleted at the end unless ``--keep``.
* ``run`` (one per model, and for Flux once more with ``vram="low"``): the model loaded through
  ``unet_handle`` (as UNETLoader does) and ``ModelManager("cpu")``, then ``pipeline.sample`` at ``--size``
  (a 16-channel latent of size/8) with ``--steps`` euler steps: SD3.5 at cfg 4.5 (two passes per step: cond and
  uncond), Flux dev at cfg 1 (one pass) with guidance 3.5; the conditioning is random tensors of the real
  shapes (SD3: 77 CLIP + 77 T5 tokens = 154 x 4096 and a 2048 pooled vector; Flux: 256 T5 tokens x 4096 and a
  768 pooled CLIP vector). Load seconds, seconds per step, peak RSS (VmHWM) of load and of sampling, RSS
  after load, the model's weight bytes by dtype, an RSS trace sampled every 0.2 s, FLOPs per pass (counted on
  the meta device) and, for float8 weights, what casting them to fp32 costs per pass.
* ``vae``: the 16-channel SD3/Flux VAE (``VAEConfig.SD3``, random weights built in memory) decoding one
  size/8 latent.

The text encoders (CLIP-L, CLIP-G and T5-XXL; T5-XXL alone is 4.7B parameters, 19 GB in fp32) are not part of
the measurement: on this machine they would run as a separate step before the transformer is loaded.

    python bench/flow_models.py [--only sd35|flux] [--size 512] [--steps 2] [--workdir DIR] [--keep]
                                [--wait-idle S] [--skip-vae] [--tiny] > result.json

``--tiny`` runs everything on tiny configurations (the smoke test, tests/bench/test_flow_models_bench.py).
Progress goes to stderr through logging. The machine may be shared: each phase records contention.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sampling import (  # noqa: E402  (the path above first)
    children_cpu_s,
    cpu_seconds_busy,
    load_average,
    peak_rss,
    phase_child,
    reset_peak_rss,
    rss_now_gib,
    status_field,
    wait_for_idle,
)

if TYPE_CHECKING:
    from torch import Generator, Tensor, nn

log = logging.getLogger("bench.flow_models")

GIB = 1024**3
#: The issue's target: Flux dev with fp8 storage, streamed, under 16 GiB of peak RSS.
TARGETS = {"flux_peak_rss_gib": 16.0}
INIT_STD = 0.02
SEED = 0
#: Bump when the way the files are made changes, so cached files are rebuilt.
BUILD_VERSION = "1"
#: Free disk left over after the files are written.
DISK_MARGIN = 2 * GIB
TEXT_ENCODER_NOTE = (
    "Text encoders (CLIP-L, CLIP-G, T5-XXL: T5-XXL alone is 4.7B parameters, 19 GB in fp32) and the VAE are not "
    "part of the transformer phases: the conditioning is random tensors of the real shapes. On this machine the "
    "text encoders would run as a separate step, before the transformer is loaded (their RAM is not added to "
    "these peaks). The vae phase measures the 16-channel VAE decode on its own.")


@dataclass(frozen=True)
class FlowSpec:
    """One model of the benchmark: how its file is named and laid out, and how it is sampled."""

    key: str  # "sd35" or "flux"
    label: str
    filename: str
    prefix: str  # key prefix in the file
    context_tokens: int
    context_dim: int
    pooled_dim: int
    cfg: float
    guidance: float | None  # Flux dev's distilled guidance
    float8: bool  # Linear weights stored in float8_e4m3fn (the rest bf16); else every tensor fp16

    @property
    def passes_per_step(self) -> int:
        return 1 if self.cfg == 1.0 else 2


def spec_for(key: str, tiny: bool) -> FlowSpec:
    if key == "sd35":
        return FlowSpec("sd35", "SD3.5 medium MMDiT", f"sd35-medium-random-fp16{'-tiny' if tiny else ''}.safetensors",
                        "model.diffusion_model.", 154, 32 if tiny else 4096, 48 if tiny else 2048, 4.5, None, False)
    if key == "flux":
        return FlowSpec("flux", "Flux.1 dev", f"flux1-dev-random-fp8{'-tiny' if tiny else ''}.safetensors", "",
                        256, 32 if tiny else 4096, 24 if tiny else 768, 1.0, 3.5, True)
    raise ValueError(f"unknown model {key!r} (sd35 or flux)")


def build_meta(spec: FlowSpec, tiny: bool) -> nn.Module:
    """The model of ``spec`` on the meta device (names and shapes only)."""
    import torch

    from engine.backend.flux import FLUX_DEV, Flux, FluxConfig
    from engine.backend.mmdit import SD35_MEDIUM, MMDiT, MMDiTConfig

    with torch.device("meta"):
        if spec.key == "sd35":
            config = (MMDiTConfig(depth=3, hidden_size=128, num_heads=2, context_in_dim=32, pooled_dim=48,
                                  pos_embed_max_size=16, qk_norm="rms_norm", x_block_self_attn_layers=(0, 1))
                      if tiny else SD35_MEDIUM)
            return MMDiT(config)
        flux = (FluxConfig(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(4, 14, 14),
                           context_in_dim=32, vec_in_dim=24) if tiny else FLUX_DEV)
        return Flux(flux)


# ------------------------------------------------------------------------------------ helpers


def vmhwm_gib() -> float:
    return round(status_field("VmHWM") / GIB, 3)


def mem_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) * 1024 / GIB, 2)
    except OSError:
        pass
    return None


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssTrace:
    """Samples this process's RSS every ``interval`` seconds in a thread, labelled with the current stage:
    the maximum per stage, when the overall maximum happened, and a coarse trace (the maximum of each
    ``bucket_s`` window)."""

    def __init__(self, interval: float = 0.2, bucket_s: float = 10.0) -> None:
        self.interval, self.bucket_s = interval, bucket_s
        self.stage = "start"
        self.start = time.perf_counter()
        self.stage_max: dict[str, float] = {}
        self.buckets: dict[int, float] = {}
        self.peak: tuple[float, float, str] = (0.0, 0.0, "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-trace", daemon=True)

    def __enter__(self) -> RssTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        rss = status_field("VmRSS") / GIB
        elapsed = time.perf_counter() - self.start
        stage = self.stage
        self.stage_max[stage] = max(self.stage_max.get(stage, 0.0), rss)
        bucket = int(elapsed // self.bucket_s)
        self.buckets[bucket] = max(self.buckets.get(bucket, 0.0), rss)
        if rss > self.peak[0]:
            self.peak = (rss, elapsed, stage)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def report(self) -> dict[str, Any]:
        return {"sample_interval_s": self.interval,
                "max_rss_by_stage_gib": {k: round(v, 3) for k, v in self.stage_max.items()},
                "peak_rss_gib": round(self.peak[0], 3), "peak_at_s": round(self.peak[1], 1), "peak_stage": self.peak[2],
                f"max_rss_per_{self.bucket_s:g}s_gib": [round(self.buckets[k], 2) for k in sorted(self.buckets)]}


# ------------------------------------------------------------------------------------ make (files)


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__


def tensor_entries(spec: FlowSpec, tiny: bool) -> list[Any]:
    """One TensorEntry per tensor of the model, in the model's order, in the file's dtypes."""
    import torch
    from torch import nn

    from engine.models.safetensors_writer import TensorEntry

    model = build_meta(spec, tiny)
    generator = torch.Generator().manual_seed(SEED)
    norms = {name for name, module in model.named_modules() if _is_norm(module)}
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)}
    entries = []
    for name, tensor in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        shape = tuple(tensor.shape)
        if owner in norms:
            make = _filled(shape, 1.0 if leaf in ("weight", "scale") else 0.0)
        else:
            make = _normal(shape, generator)
        if not spec.float8:
            dtype = torch.float16
        elif owner in linears and leaf == "weight" and len(shape) >= 2:
            dtype = torch.float8_e4m3fn
        else:
            dtype = torch.bfloat16
        entries.append(TensorEntry(spec.prefix + name, shape, dtype, make))
    return entries


def _filled(shape: tuple[int, ...], value: float) -> Callable[[], Tensor]:
    import torch

    return lambda: torch.full(shape, value)


def _normal(shape: tuple[int, ...], generator: Generator) -> Callable[[], Tensor]:
    """N(0, INIT_STD) drawn from the shared generator when the tensor is written (so in file order)."""
    import torch

    return lambda: torch.randn(shape, generator=generator).mul_(INIT_STD)


def _metadata(spec: FlowSpec, tiny: bool) -> dict[str, str]:
    return {"loom_bench": f"flow_models v{BUILD_VERSION}", "model": spec.key, "tiny": str(tiny),
            "weights": f"random N(0, {INIT_STD}), seed {SEED}"}


def _expected_header(entries: list[Any]) -> dict[str, tuple[str, list[int]]]:
    from engine.models.safetensors_writer import SAFETENSORS_DTYPES

    return {e.name: (SAFETENSORS_DTYPES[e.dtype], list(e.shape)) for e in entries}


def file_matches(path: Path, entries: list[Any], metadata: dict[str, str]) -> bool:
    """Whether ``path`` already holds exactly these tensors' names, shapes and dtypes, in full."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return False
    found_meta = header.pop("__metadata__", {})
    found = {name: (info["dtype"], list(info["shape"])) for name, info in header.items()}
    size = 8 + length + sum(e.nbytes for e in entries)
    return found_meta == metadata and found == _expected_header(entries) and path.stat().st_size == size


def _only_itself(name: str) -> Iterator[str]:
    yield name


def phase_make(args: argparse.Namespace) -> dict[str, Any]:
    """Write the random files that are missing (after checking that the disk has room for all of them)."""
    from engine.models.safetensors_writer import write_safetensors

    args.workdir.mkdir(parents=True, exist_ok=True)
    plans = []
    for key in args.models.split(","):
        spec = spec_for(key, args.tiny)
        entries = tensor_entries(spec, args.tiny)
        metadata = _metadata(spec, args.tiny)
        path = args.workdir / spec.filename
        plans.append((spec, entries, metadata, path, file_matches(path, entries, metadata)))
    needed = sum(sum(e.nbytes for e in entries) for _, entries, _, path, ok in plans if not ok)
    stale = sum(path.stat().st_size for _, _, _, path, ok in plans if not ok and path.is_file())
    free = shutil.disk_usage(args.workdir).free + stale
    if needed and free < needed + DISK_MARGIN:
        raise SystemExit(
            f"not enough free disk in {args.workdir}: the random model files need {needed / GIB:.1f} GiB "
            f"(+{DISK_MARGIN / GIB:.0f} GiB margin) and {free / GIB:.1f} GiB are free. Free some space, pass "
            "--workdir on a larger disk, or --only sd35 (4.6 GiB) / --only flux (11.1 GiB).")
    made: dict[str, Any] = {}
    for spec, entries, metadata, path, ok in plans:
        size = sum(e.nbytes for e in entries)
        counts: dict[str, int] = {}
        for entry in entries:
            counts[str(entry.dtype).removeprefix("torch.")] = counts.get(str(entry.dtype).removeprefix("torch."), 0) \
                + entry.nbytes
        info: dict[str, Any] = {"path": str(path), "tensors": len(entries), "data_gib": round(size / GIB, 3),
                                "bytes_by_dtype": counts}
        if ok:
            log.info("reusing %s (%.2f GiB)", path, size / GIB)
            info["reused"] = True
        else:
            path.unlink(missing_ok=True)
            log.info("writing %s: %d tensors, %.2f GiB", path, len(entries), size / GIB)
            start = time.perf_counter()
            write_safetensors(path, entries, metadata, names=_only_itself)
            info.update(reused=False, write_s=round(time.perf_counter() - start, 1))
        info["file_bytes"] = path.stat().st_size
        made[spec.key] = info
    made["vmhwm_gib"] = vmhwm_gib()
    return made


# ------------------------------------------------------------------------------------ run (load + sample)


def weight_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    found: dict[str, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        name = str(tensor.dtype).removeprefix("torch.")
        found[name] = found.get(name, 0) + tensor.numel() * tensor.element_size()
    return found


def conditioning(spec: FlowSpec, seed: int) -> list[list[Any]]:
    """One conditioning entry of the real shapes: ``[1, tokens, context_dim]`` and the pooled vector."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    extras: dict[str, Any] = {"pooled_output": torch.randn(1, spec.pooled_dim, generator=generator)}
    if spec.guidance is not None:
        extras["guidance"] = spec.guidance
    return [[torch.randn(1, spec.context_tokens, spec.context_dim, generator=generator), extras]]


def flops_per_pass(spec: FlowSpec, tiny: bool, latent: int, batch: int) -> dict[str, Any]:
    """FLOPs of one model evaluation on ``batch`` latents, counted on the meta device (SDPA decomposes into
    counted matmuls there)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build_meta(spec, tiny).eval()
    with torch.device("meta"):
        x = torch.randn(batch, 16, latent, latent)
        timesteps = torch.full((batch,), 0.5)
        context = torch.randn(batch, spec.context_tokens, spec.context_dim)
        pooled = torch.randn(batch, spec.pooled_dim)
    kwargs = {"guidance": torch.full((batch,), 3.5, device="meta")} if spec.guidance is not None else {}
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, timesteps, context, pooled, **kwargs)
    except (RuntimeError, NotImplementedError) as exc:  # a meta-device gap: report it, keep the benchmark going
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"tflop": round(counter.get_total_flops() / 1e12, 3), "batch": batch}


def matmul_gflops() -> float:
    """This CPU's fp32 ``torch.mm`` rate right now (best of 6 square 2048 products)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(6))
    return round(2 * 2048**3 / best / 1e9, 1)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def float8_cast_cost(model: nn.Module) -> dict[str, Any] | None:
    """Seconds to cast the float8 weights of one double/joint block and one single block (or the first two
    blocks) to fp32, one tensor at a time, scaled to all of the float8 weights: what one pass spends casting."""
    import torch

    float8 = [p for p in model.parameters() if p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)]
    if not float8:
        return None
    blocks = [getattr(model, name)[0] for name in ("double_blocks", "single_blocks", "joint_blocks")
              if hasattr(model, name)]
    sample = [p for block in blocks for p in block.parameters() if p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)]
    sample_elements = sum(p.numel() for p in sample)
    total_elements = sum(p.numel() for p in float8)
    rounds = []
    for _ in range(2):  # one tensor at a time, each fp32 copy dropped at once, as a casting layer does
        total = 0.0
        for parameter in sample:
            start = time.perf_counter()
            parameter.to(torch.float32)
            total += time.perf_counter() - start
        rounds.append(total)
    seconds = min(rounds)
    return {"float8_elements": total_elements, "sampled_elements": sample_elements,
            "sampled_cast_s": round(seconds, 3),
            "estimated_cast_s_per_pass": round(seconds * total_elements / max(sample_elements, 1), 1),
            "threads": torch.get_num_threads()}


def phase_run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from engine.backend.pipeline import SamplingRequest, sample
    from engine.models.manager import ModelManager
    from engine.sdk.model_parts import unet_handle
    from engine.sdk.ops import model_traits

    spec = spec_for(args.model, args.tiny)
    path = args.workdir / spec.filename
    latent = args.size // 8
    result: dict[str, Any] = {"model": spec.label, "file": str(path), "vram": args.vram, "size": args.size,
                              "latent_shape": [1, 16, latent, latent], "steps": args.steps, "sampler": "euler",
                              "scheduler": "simple", "cfg": spec.cfg, "guidance": spec.guidance,
                              "passes_per_step": spec.passes_per_step,
                              "context_shape": [1, spec.context_tokens, spec.context_dim],
                              "pooled_shape": [1, spec.pooled_dim], "threads": torch.get_num_threads(),
                              "rss_after_imports_gib": round(rss_now_gib(), 3)}
    result["mm_gflops_before"] = None if args.tiny else matmul_gflops()
    result["flops_per_step"] = flops_per_pass(spec, args.tiny, latent, spec.passes_per_step)
    with RssTrace() as trace:
        trace.stage = "load"
        reset_peak_rss()
        handle = unet_handle(path, f"bench UNETLoader {spec.filename}")
        manager = ModelManager("cpu", vram=args.vram)
        load_s = _seconds(lambda: manager.unet(handle))
        model = manager.unet(handle)
        result.update(family=handle.family.label, load_s=round(load_s, 2), load_vmhwm_gib=vmhwm_gib(),
                      rss_after_load_gib=round(rss_now_gib(), 3))
        by_dtype = weight_bytes_by_dtype(model)
        result["weights"] = {"bytes_by_dtype": by_dtype,
                             "gib_by_dtype": {k: round(v / GIB, 3) for k, v in by_dtype.items()},
                             "total_gib": round(sum(by_dtype.values()) / GIB, 3),
                             "parameters": sum(p.numel() for p in model.parameters())}
        result["loaded"] = manager.loaded()

        trace.stage = "sample"
        reset_peak_rss()
        stamps: list[float] = []
        others: list[float] = []
        busy = [cpu_seconds_busy(), own_cpu_s()]

        def on_step(done: int, total: int, _denoised: Any) -> None:
            now, machine, own = time.perf_counter(), cpu_seconds_busy(), own_cpu_s()
            seconds = now - stamps[-1]
            others.append(round(max(machine - busy[0] - (own - busy[1]), 0.0) / (seconds * (os.cpu_count() or 1)), 3))
            busy[:] = [machine, own]
            stamps.append(now)
            log.info("step %d/%d: %.1f s (RSS %.2f GiB)", done, total, seconds, rss_now_gib())

        def session(shape: tuple[int, ...], cfg: bool) -> Any:
            return _stamped(manager.sampling(handle, shape, cfg=cfg), stamps, busy)

        request = SamplingRequest(seed=SEED, steps=args.steps, cfg=spec.cfg, sampler_name="euler", scheduler="simple",
                                  positive=conditioning(spec, 1), negative=conditioning(spec, 2),
                                  latent={"samples": torch.zeros(1, 16, latent, latent)})
        start = time.perf_counter()
        out = sample(request, model_traits(handle.family), session, manager.controlnet, device=torch.device("cpu"),
                     dtype=torch.float32, on_step=on_step)
        sample_s = time.perf_counter() - start
        trace.stage = "after"
        steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        timed_steps = steps[1:] if len(steps) >= 3 else steps
        result.update(
            sample_s=round(sample_s, 2), step_times_s=[round(s, 2) for s in steps],
            s_per_step=round(statistics.fmean(timed_steps), 2) if timed_steps else None,
            s_per_step_counts=("steps after the first" if len(steps) >= 3 else "every step"),
            s_per_pass=round(statistics.fmean(timed_steps) / spec.passes_per_step, 2) if timed_steps else None,
            step_other_jobs_share=others, sample_vmhwm_gib=vmhwm_gib(), rss_after_sample_gib=round(rss_now_gib(), 3),
            output_finite=bool(torch.isfinite(out["samples"]).all()),
            streamed=manager.loaded()[0]["streamed"])
        trace.stage = "cast-cost"
        result["float8_cast"] = float8_cast_cost(model)
    result["rss_trace"] = trace.report()
    tflop = result["flops_per_step"].get("tflop")
    if tflop and result["s_per_step"]:
        result["achieved_gflops"] = round(tflop * 1e3 / result["s_per_step"], 1)
    result["mm_gflops_after"] = None if args.tiny else matmul_gflops()
    result["vmhwm_gib"] = max(result["load_vmhwm_gib"], result["sample_vmhwm_gib"])
    result["peak"] = peak_rss()  # ru_maxrss covers the whole process
    return result


class _stamped:  # noqa: N801  (a context manager used like a function)
    """Wraps the manager's sampling session: stamps the moment the placed model is handed over (the start of
    the first step)."""

    def __init__(self, inner: Any, stamps: list[float], busy: list[float]) -> None:
        self.inner, self.stamps, self.busy = inner, stamps, busy

    def __enter__(self) -> Any:
        model = self.inner.__enter__()
        self.stamps.append(time.perf_counter())
        self.busy[:] = [cpu_seconds_busy(), own_cpu_s()]
        return model

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc)


# ------------------------------------------------------------------------------------ vae


def phase_vae(args: argparse.Namespace) -> dict[str, Any]:
    """The 16-channel SD3/Flux VAE (random N(0, 0.02) weights, norms 1/0) decoding one latent, twice."""
    import torch

    from engine.backend.vae import AutoencoderKL, VAEConfig

    config = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16,
                       use_quant_conv=False) if args.tiny else VAEConfig.SD3
    generator = torch.Generator().manual_seed(SEED)
    vae = AutoencoderKL(config).eval()
    with torch.no_grad():
        for module in vae.modules():
            for leaf, tensor in module.named_parameters(recurse=False):
                if _is_norm(module):
                    tensor.fill_(1.0 if leaf == "weight" else 0.0)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * INIT_STD)
    latent = args.size // 8
    z = torch.randn(1, 16, latent, latent, generator=generator)
    baseline = rss_now_gib()
    reset_peak_rss()
    times = []
    with torch.inference_mode():
        for _ in range(2):
            seconds = _seconds(lambda: vae.decode(z))
            times.append(round(seconds, 2))
            log.info("VAE decode %dx%d: %.1f s", args.size, args.size, seconds)
    return {"config": "tiny" if args.tiny else "VAEConfig.SD3 (16 latent channels, no quant convs)",
            "latent_shape": [1, 16, latent, latent], "image_size": args.size, "dtype": "float32",
            "parameters": sum(p.numel() for p in vae.parameters()), "decode_s": times,
            "rss_before_decode_gib": round(baseline, 3), "decode_vmhwm_gib": vmhwm_gib(), "peak": peak_rss()}


PHASES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "make": phase_make, "run": phase_run, "vae": phase_vae,
}


# ------------------------------------------------------------------------------------ driver (parent)


def run_phase(name: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and record what else used the machine meanwhile; a failed phase
    comes back as ``{"error": ...}`` (the others still run)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--workdir", str(args.workdir),
               "--size", str(args.size), "--steps", str(args.steps), *extra]
    if args.tiny:
        command.append("--tiny")
    idle_wait = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else None
    log.info("phase %s %s", name, " ".join(extra))
    load_before, available = load_average(), mem_available_gib()
    busy_before, own_before = cpu_seconds_busy(), children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - start
    own = children_cpu_s() - own_before
    others = max(cpu_seconds_busy() - busy_before - own, 0.0)
    if done.returncode != 0:
        killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
        log.error("phase %s %s failed with exit status %d%s", name, " ".join(extra), done.returncode, killed)
        result: dict[str, Any] = {"error": f"exit status {done.returncode}{killed}; see the log on stderr"}
    else:
        result = json.loads(done.stdout)
    result["phase_wall_s"] = round(seconds, 1)
    result["contention"] = {
        "phase_cpu_s": round(own, 1),
        "other_jobs_cpu_s": round(others, 1),
        # Share of the machine's CPU capacity that other processes used while this phase ran.
        "other_jobs_share": round(others / (seconds * (os.cpu_count() or 1)), 3),
        "busy_before_start": None if idle_wait is None else round(idle_wait, 3),
        "load_average_before_after": [load_before, load_average()],
        "mem_available_before_gib": available,
    }
    log.info("phase %s done in %.1f s", name, seconds)
    return result


def summarize(args: argparse.Namespace, phases: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, phase in phases.items():
        if name in ("make", "vae") or "error" in phase:
            continue
        summary[name] = {key: phase.get(key) for key in (
            "load_s", "s_per_step", "s_per_pass", "step_times_s", "rss_after_load_gib", "vmhwm_gib")}
        summary[name]["weights_gib_by_dtype"] = phase["weights"]["gib_by_dtype"]
        summary[name]["other_jobs_share"] = phase["contention"]["other_jobs_share"]
    flux = [p for name, p in phases.items() if name.startswith("flux") and "error" not in p]
    checks = {}
    if flux:
        worst = max(p["vmhwm_gib"] for p in flux)
        checks["flux_peak_rss_gib"] = {"measured": worst, "target": TARGETS["flux_peak_rss_gib"],
                                       "pass": worst < TARGETS["flux_peak_rss_gib"]}
    if "vae" in phases and "error" not in phases["vae"]:
        summary["vae_decode"] = {"decode_s": phases["vae"]["decode_s"], "vmhwm_gib": phases["vae"]["peak"]["vmhwm_gib"]}
    return {
        "benchmark": "flow_models",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "mem_total_gib": _mem_total_gib()},
        "options": {"size": args.size, "steps": args.steps, "only": args.only, "tiny": args.tiny,
                    "workdir": str(args.workdir)},
        "summary": summary,
        "targets": checks,
        "phases": phases,
        "notes": [
            "Random weights in the real single-file layouts (names and shapes of Loom's modules); compute in fp32 on "
            "the CPU. SD3.5 medium's fp16 file loads into fp32 (4 bytes a weight); Flux dev's float8 weights stay "
            "float8 in RAM and each Linear casts its weight to fp32 as it runs (float8_cast estimates that cost).",
            TEXT_ENCODER_NOTE,
            "vram=low streams the transformer block by block (issue 6's BlockStreamer). On a CPU-only machine the "
            "compute device is the CPU, where moving a block to the device is the tensor itself: streaming moves "
            "nothing and costs only its hooks; its peak RSS is the same as without streaming.",
            "Each phase ran in a fresh process; vmhwm_gib is the larger of the load and sampling VmHWM (restarted "
            "between them), rss_trace samples RSS every 0.2 s. Loads read from the page cache when the file was "
            "just written.",
            "s_per_step: the mean of the steps after the first when 3 or more ran, else of every step; step_times_s "
            "start when the sampling session hands over the placed model. flops_per_step counts one step's passes "
            "on the meta device; achieved_gflops = that / s_per_step; mm_gflops_* is this CPU's fp32 matmul rate "
            "before and after.",
            "The machine is shared: contention.other_jobs_share is the share of all cores other processes used "
            "during the phase, step_other_jobs_share per step. Distrust timings with a share above a few percent.",
        ],
    }


def _mem_total_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("sd35", "flux"), help="measure one model only")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="euler steps (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "loom-bench-flow",
                        help="where the random model files are written (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the model files for the next run")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each phase, wait up to SECONDS for other jobs to leave the CPUs idle")
    parser.add_argument("--skip-vae", action="store_true", help="leave out the VAE decode phase")
    parser.add_argument("--skip-low", action="store_true", help="leave out Flux with vram=low")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations: a smoke run in seconds")
    # Internal: run one phase in this process and print its JSON.
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("sd35", "flux"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default="sd35,flux", help=argparse.SUPPRESS)
    parser.add_argument("--vram", default="normal", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if phase_child(args, PHASES):
        return 0
    if args.size % 16:
        raise SystemExit(f"--size {args.size}: use a multiple of 16 (the latent is size/8, in 2x2 patches)")
    started = time.perf_counter()
    models = [args.only] if args.only else ["sd35", "flux"]
    phases: dict[str, Any] = {"make": run_phase("make", args, "--models", ",".join(models))}
    if "error" in phases["make"]:
        raise SystemExit(f"making the model files failed: {phases['make']['error']}")
    try:
        if "sd35" in models:
            phases["sd35"] = run_phase("run", args, "--model", "sd35", "--vram", "normal")
        if "flux" in models:
            phases["flux"] = run_phase("run", args, "--model", "flux", "--vram", "normal")
            if not args.skip_low:
                phases["flux_vram_low"] = run_phase("run", args, "--model", "flux", "--vram", "low")
        if not args.skip_vae:
            phases["vae"] = run_phase("vae", args)
    finally:
        if not args.keep:
            for key in models:
                path = args.workdir / spec_for(key, args.tiny).filename
                path.unlink(missing_ok=True)
                log.info("deleted %s (pass --keep to keep it)", path)
    result = summarize(args, phases)
    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
