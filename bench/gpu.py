"""GPU benchmark of Loom's CUDA paths (random weights): prints one JSON object.

Measures on CUDA, each phase in a fresh Python process so that every peak is that phase's own:

* ``unet_sd15`` / ``unet_sdxl``: one CFG step (the UNet at batch 2: uncond + cond) of SD1.5 at 512x512 and SDXL
  at 1024x1024, in the dtype Loom's ModelManager computes in on CUDA (fp16), Loom's UNet and diffusers'
  ``UNet2DConditionModel`` holding the same weights, interleaved: median of 5 after warm-up, each call followed by
  ``torch.cuda.synchronize``; the ratio ours / diffusers and how far the two outputs differ. SD1.5 is the random
  checkpoint of bench/_sd15.py (real key layout) as the ModelManager hands it to a sampling run; SDXL is Loom's
  ``UNetModel(UNetConfig.SDXL)`` filled the same way (``N(0, 0.02)``, norms 1/0), and diffusers' SDXL UNet gets
  those very tensors through engine/models/convert_diffusers.py's name table.
* ``vae``: the VAE decode at 512 and 1024 (SDXL's VAE has SD1.5's shape: ``VAEConfig.SDXL == VAEConfig.SD15``)
  through the ModelManager, in the dtype it picks (bf16 where the GPU has it, else fp32), against diffusers'
  ``AutoencoderKL`` with the same weights in the same dtype, interleaved the same way; peak memory per size.
* ``vram``: one per ``--vram`` mode (high, normal, low, none): the SD1.5 UNet through
  ``ModelManager(device, vram=mode).sampling(handle, latent_shape)``, as a KSampler run gets it; the peak of
  ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``) over placing the model plus the steps,
  and over one step alone; the seconds per CFG step; whether the UNet streamed.

Without CUDA the script prints ``{"benchmark": "gpu", "cuda": false, ...}`` and exits 0. ``--smoke`` runs the same
phases with tiny models (tests/fixtures/tiny_checkpoints.py) at 64x64, one repeat, on ``--device`` (default: the
CPU, where the ModelManager computes in fp32 and peaks are the process's VmHWM); tests/bench/test_gpu_bench.py
runs it.

    python bench/gpu.py [--workdir DIR] [--only unet,vae,vram] [--skip-diffusers] > /tmp/bench_gpu.json
    python bench/gpu.py --smoke [--device cpu|cuda] [--only ...] > /tmp/bench_gpu_smoke.json

Progress goes to stderr through logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sampling import (  # noqa: E402  (the path above first)
    _cpu_name,
    _handles,
    _median_interleaved,
    _relative_error,
    _versions,
    phase_child,
    reset_peak_rss,
    status_field,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from engine.backend.unet import UNetConfig
    from engine.backend.vae import AutoencoderKL, VAEConfig

log = logging.getLogger("bench.gpu")

GIB = 1024**3
VRAM_MODES = ("high", "normal", "low", "none")
CONTEXT_TOKENS = 77
TIMESTEP = 500.0
SDXL_SCALARS = 6  # the six 256-wide size/crop embeddings after the pooled vector in SDXL's adm input
SIZE_EMBEDDING = 256


@dataclass(frozen=True)
class Profile:
    """Sizes and repeats of one kind of run: the real benchmark or the smoke run."""

    sd15_size: int
    sdxl_size: int
    vae_sizes: tuple[int, ...]
    repeats: int  # timings are medians of this many, after the warm-ups
    warmups: int  # besides the one _median_interleaved does
    vram_repeats: int


FULL = Profile(sd15_size=512, sdxl_size=1024, vae_sizes=(512, 1024), repeats=5, warmups=2, vram_repeats=3)
SMOKE = Profile(sd15_size=64, sdxl_size=64, vae_sizes=(64, 128), repeats=1, warmups=0, vram_repeats=1)


def profile_of(args: argparse.Namespace) -> Profile:
    return SMOKE if args.smoke else FULL


# ------------------------------------------------------------------------------------ device helpers


class DeviceMemory:
    """Peak and current memory of the compute device: CUDA's allocator statistics, or on the CPU (smoke runs) the
    process's resident set (VmHWM / VmRSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.source = "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM"

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        import torch

        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak_bytes(self) -> int:
        import torch

        self.sync()
        return int(torch.cuda.max_memory_allocated(self.device) if self.cuda else status_field("VmHWM"))

    def allocated_bytes(self) -> int:
        import torch

        self.sync()
        return int(torch.cuda.memory_allocated(self.device) if self.cuda else status_field("VmRSS"))


def synced(memory: DeviceMemory, run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` followed by a device synchronize, so wall-clock time covers the queued kernels."""
    def call() -> Any:
        result = run()
        memory.sync()
        return result
    return call


def timed_interleaved(runs: dict[str, Callable[[], Any]], memory: DeviceMemory, profile: Profile) -> dict[str, Any]:
    """Extra warm-ups, then bench/sampling.py's interleaved median (one more warm-up each, ``repeats`` rounds)."""
    calls = {name: synced(memory, run) for name, run in runs.items()}
    for _ in range(profile.warmups):
        for call in calls.values():
            call()
    return _median_interleaved(calls, reps=profile.repeats)


def compare(runs: dict[str, Callable[[], Any]], memory: DeviceMemory, profile: Profile) -> dict[str, Any]:
    """Timings of ``ours`` (and ``diffusers`` when present), their ratio and how far their outputs differ."""
    timing = timed_interleaved(runs, memory, profile)
    result: dict[str, Any] = {**timing}
    if "diffusers" in runs:
        ours, theirs = timing["ours"]["median_s"], timing["diffusers"]["median_s"]
        result["ratio_ours_over_diffusers"] = round(ours / theirs, 3)
        result["speedup_over_diffusers"] = round(theirs / ours, 3)
        result["relative_error"] = _relative_error(runs["ours"](), runs["diffusers"]())
    return result


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------ diffusers configurations


def diffusers_unet_config(config: UNetConfig) -> dict[str, Any]:
    """diffusers' ``UNet2DConditionModel`` arguments for the network a Loom ``UNetConfig`` describes (SD1.x, SDXL
    and the tiny test configurations: uniform transformer depth within a level, no class labels)."""
    levels = len(config.channel_mult)
    widths = tuple(config.model_channels * m for m in config.channel_mult)
    starts = [sum(config.num_res_blocks[:level]) for level in range(levels)]
    depths = tuple(max(config.transformer_depth[start], 1) for start in starts)
    attends = [config.transformer_depth[start] > 0 for start in starts]
    heads = tuple(config.num_heads if config.num_heads > 0 else width // config.num_head_channels
                  for width in widths)
    res = tuple(config.num_res_blocks)
    arguments: dict[str, Any] = {
        "sample_size": 64, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        "block_out_channels": widths, "layers_per_block": res[0] if len(set(res)) == 1 else res,
        "transformer_layers_per_block": depths, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": config.context_dim,
        "attention_head_dim": heads,  # diffusers' historical name for the number of heads
        "use_linear_projection": config.use_linear_in_transformer,
    }
    if config.adm_in_channels is not None:
        arguments.update(addition_embed_type="text_time", addition_time_embed_dim=SIZE_EMBEDDING,
                         projection_class_embeddings_input_dim=config.adm_in_channels)
    return arguments


def diffusers_vae_config(config: VAEConfig) -> dict[str, Any]:
    """diffusers' ``AutoencoderKL`` arguments for a Loom ``VAEConfig`` with quant convs (SD1.x / SDXL shape)."""
    levels = len(config.ch_mult)
    return {"in_channels": config.in_channels, "out_channels": config.out_channels,
            "latent_channels": config.embed_dim, "layers_per_block": config.num_res_blocks,
            "down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels,
            "block_out_channels": tuple(config.ch * m for m in config.ch_mult), "act_fn": "silu",
            "norm_num_groups": 32, "sample_size": 512}


def diffusers_unet_sharing(loom: nn.Module, config: UNetConfig) -> Any:
    """diffusers' UNet holding the very tensors of Loom's ``loom`` (renamed through the convert_diffusers table)."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.models.convert_diffusers import UNetLayout, unet_names

    names = unet_names(UNetLayout.from_config(config))
    ours = dict(loom.state_dict())
    with torch.device("meta"):
        model: Any = UNet2DConditionModel(**diffusers_unet_config(config))
    tensors = {key: ours[names.to_ldm(key)] for key in model.state_dict()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def diffusers_from_checkpoint(path: Path, kind: str, config: Any, dtype: torch.dtype) -> Any:
    """diffusers' UNet (``kind`` "unet", ``config`` a UNetConfig) or VAE ("vae", a VAEConfig) read from the
    checkpoint's tensors through bench/_sd15.py's renaming loader."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bench._sd15 import UNET_PREFIX, VAE_PREFIX, _load_renamed
    from engine.models.convert_diffusers import UNetLayout, diffusers_vae_key_to_ldm, unet_names

    with torch.device("meta"):
        if kind == "unet":
            model: Any = UNet2DConditionModel(**diffusers_unet_config(config))
        else:
            model = AutoencoderKL(**diffusers_vae_config(config))
    if kind == "unet":
        return _load_renamed(model, path, UNET_PREFIX, unet_names(UNetLayout.from_config(config)).to_ldm, dtype)
    levels = len(config.ch_mult)
    return _load_renamed(model, path, VAE_PREFIX, lambda key: diffusers_vae_key_to_ldm(key, levels), dtype)


# ------------------------------------------------------------------------------------ phases (children)


@dataclass
class StepInputs:
    """One CFG step's inputs (batch 2) for a UNet, and the matching diffusers keyword arguments."""

    x: Tensor
    timestep: Tensor
    context: Tensor
    y: Tensor | None
    added_cond: dict[str, Tensor] | None

    def loom(self, unet: nn.Module) -> Callable[[], Tensor]:
        return lambda: unet(self.x, self.timestep, self.context, y=self.y)

    def diffusers(self, unet: nn.Module) -> Callable[[], Tensor]:
        return lambda: unet(self.x, self.timestep, encoder_hidden_states=self.context,
                            added_cond_kwargs=self.added_cond).sample


def step_inputs(config: UNetConfig, size: int, device: torch.device, dtype: torch.dtype) -> StepInputs:
    import torch

    from engine.backend.unet import sdxl_adm

    generator = torch.Generator().manual_seed(0)
    h = size // 8

    def rand(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    assert config.context_dim is not None, "a text-conditioned UNet"
    x, context = rand(2, config.in_channels, h, h), rand(2, CONTEXT_TOKENS, config.context_dim)
    timestep = torch.full((2,), TIMESTEP, device=device)
    if config.adm_in_channels is None:
        return StepInputs(x, timestep, context, None, None)
    pooled = rand(2, config.adm_in_channels - SDXL_SCALARS * SIZE_EMBEDDING)
    y = sdxl_adm(pooled, size, size)  # original size = target size, no crop
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype)
    return StepInputs(x, timestep, context, y, {"text_embeds": pooled, "time_ids": time_ids})


def phase_unet_sd15(args: argparse.Namespace) -> dict[str, Any]:
    """SD1.5's CFG step: the UNet as a sampling run gets it from the ModelManager, and diffusers' on its weights."""
    import torch

    from engine.backend.unet import UNetModel
    from engine.models.manager import ModelManager

    profile, device = profile_of(args), torch.device(args.device)
    memory = DeviceMemory(device)
    manager = ModelManager(device)
    size = profile.sd15_size
    handle = _handles(Path(args.checkpoint))[0]
    with torch.inference_mode(), manager.sampling(handle, (1, 4, size // 8, size // 8)) as unet:
        assert isinstance(unet, UNetModel), "the SD1.5 checkpoint loads as a UNet"
        config = unet.config
        inputs = step_inputs(config, size, device, manager.dtype)
        runs = {"ours": inputs.loom(unet)}
        if not args.skip_diffusers:
            theirs = diffusers_from_checkpoint(Path(args.checkpoint), "unet", config, manager.dtype).to(device)
            runs["diffusers"] = inputs.diffusers(theirs)
        log.info("SD1.5 CFG step (batch 2) at %dx%d on %s: %s", size, size, device, " vs ".join(runs))
        result = compare(runs, memory, profile)
    return {"model": "sd15", "size": size, "batch": 2, "dtype": dtype_name(manager.dtype), **result,
            "phase_peak_bytes": memory.peak_bytes(), "memory_source": memory.source}


def sdxl_config(smoke: bool) -> UNetConfig:
    if smoke:
        from tests.fixtures.tiny_checkpoints import unet_config

        return unet_config("sdxl")
    from engine.backend.unet import UNetConfig

    return UNetConfig.SDXL


def random_sdxl_unet(config: UNetConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Loom's UNet of ``config`` with bench/_sd15.py's random weights, loaded as the ModelManager loads one."""
    import torch

    from bench._sd15 import SEED, _random_fill
    from engine.backend.attention import load_weights
    from engine.backend.unet import UNetModel

    with torch.device("meta"):
        model = UNetModel(config)
    # Lazily: each tensor is made, converted and assigned in turn (the meta parameters give the names and shapes).
    load_weights(model, _random_fill(model, "", torch.Generator().manual_seed(SEED)), device=device, dtype=dtype)
    return model.requires_grad_(False).eval()


def phase_unet_sdxl(args: argparse.Namespace) -> dict[str, Any]:
    """SDXL's CFG step: Loom's UNetModel in the ModelManager's compute dtype, and diffusers' sharing its tensors."""
    import torch

    from engine.models.manager import compute_dtype

    profile, device = profile_of(args), torch.device(args.device)
    memory = DeviceMemory(device)
    dtype, size, config = compute_dtype(device), profile.sdxl_size, sdxl_config(args.smoke)
    start = time.perf_counter()
    loom = random_sdxl_unet(config, device, dtype)
    log.info("built a random SDXL UNet on %s in %.1f s", device, time.perf_counter() - start)
    with torch.inference_mode():
        inputs = step_inputs(config, size, device, dtype)
        runs = {"ours": inputs.loom(loom)}
        if not args.skip_diffusers:
            runs["diffusers"] = inputs.diffusers(diffusers_unet_sharing(loom, config))
        log.info("SDXL CFG step (batch 2) at %dx%d on %s: %s", size, size, device, " vs ".join(runs))
        result = compare(runs, memory, profile)
    return {"model": "sdxl", "size": size, "batch": 2, "dtype": dtype_name(dtype), **result,
            "weights_shared_with_diffusers": not args.skip_diffusers,
            "phase_peak_bytes": memory.peak_bytes(), "memory_source": memory.source}


def decode_runs(vae: AutoencoderKL, theirs: Any, z: Tensor) -> dict[str, Callable[[], Any]]:
    """Loom's decode of ``z`` and, unless ``theirs`` is None, diffusers'."""
    runs: dict[str, Callable[[], Any]] = {"ours": lambda: vae.decode(z)}
    if theirs is not None:
        runs["diffusers"] = lambda: theirs.decode(z).sample
    return runs


def phase_vae(args: argparse.Namespace) -> dict[str, Any]:
    """The VAE decode at each size through the ModelManager (its dtype), against diffusers' in the same dtype."""
    import torch

    from engine.backend.vae import AutoencoderKL
    from engine.models.manager import ModelManager

    profile, device = profile_of(args), torch.device(args.device)
    memory = DeviceMemory(device)
    manager = ModelManager(device)
    vae = manager.vae(_handles(Path(args.checkpoint))[2])
    assert isinstance(vae, AutoencoderKL), "the checkpoint's VAE is an AutoencoderKL"
    theirs = None
    if not args.skip_diffusers:
        theirs = diffusers_from_checkpoint(Path(args.checkpoint), "vae", vae.config, manager.vae_dtype).to(device)
    generator = torch.Generator().manual_seed(0)
    sizes: dict[str, Any] = {}
    with torch.inference_mode():
        for size in profile.vae_sizes:
            z = torch.randn(1, vae.config.embed_dim, size // 8, size // 8, generator=generator)
            runs = decode_runs(vae, theirs, z.to(device=device, dtype=manager.vae_dtype))
            log.info("VAE decode at %dx%d on %s: %s", size, size, device, " vs ".join(runs))
            memory.reset_peak()
            sizes[str(size)] = {**compare(runs, memory, profile), "peak_bytes": memory.peak_bytes()}
    return {"dtype": dtype_name(manager.vae_dtype), "sizes": sizes, "memory_source": memory.source}


def phase_vram(args: argparse.Namespace) -> dict[str, Any]:
    """SD1.5's CFG step as a sampling run in one ``--vram`` mode: peak device memory, seconds per step, streaming."""
    import torch

    from engine.backend.unet import UNetModel
    from engine.models.manager import ModelManager

    profile, device = profile_of(args), torch.device(args.device)
    memory = DeviceMemory(device)
    size = profile.sd15_size
    manager = ModelManager(device, vram=args.vram)
    handle = _handles(Path(args.checkpoint))[0]
    baseline = memory.allocated_bytes()
    memory.reset_peak()
    with torch.inference_mode(), manager.sampling(handle, (1, 4, size // 8, size // 8)) as unet:
        assert isinstance(unet, UNetModel), "the SD1.5 checkpoint loads as a UNet"
        config = unet.config
        step = synced(memory, step_inputs(config, size, device, manager.dtype).loom(unet))
        placed = memory.allocated_bytes()
        output = step()
        peak_with_load = memory.peak_bytes()
        memory.reset_peak()
        step()
        step_peak = memory.peak_bytes()
        timing = _median_interleaved({"step": step}, reps=profile.vram_repeats)["step"]
        entry = next(m for m in manager.loaded() if m["part"] == "unet")
    return {"mode": args.vram, "size": size, "batch": 2, "dtype": dtype_name(manager.dtype),
            "peak_bytes_incl_placing": peak_with_load, "step_peak_bytes": step_peak,
            "allocated_before_bytes": baseline, "allocated_in_run_bytes": placed,
            "unet_bytes": entry["bytes"], "streamed": entry["streamed"], "resident": entry["resident"],
            "s_per_step": timing["median_s"], "times_s": timing["times_s"],
            "output_abs_mean": float(output.float().abs().mean()), "memory_source": memory.source}


#: What ``--only`` chooses from: the UNet steps (SD1.5 and SDXL), the VAE decodes, the --vram modes.
PHASE_GROUPS = ("unet", "vae", "vram")

PHASES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "unet_sd15": phase_unet_sd15, "unet_sdxl": phase_unet_sdxl, "vae": phase_vae, "vram": phase_vram,
}


# ------------------------------------------------------------------------------------ driver (parent)


def run_phase(name: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its JSON comes back on stdout, its logs go to stderr."""
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--checkpoint", str(args.checkpoint),
               "--device", args.device, *extra]
    if args.smoke:
        command.append("--smoke")
    if args.skip_diffusers:
        command.append("--skip-diffusers")
    log.info("phase %s %s", name, " ".join(extra))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} {' '.join(extra)} failed with exit status {done.returncode} (see the log)")
    result: dict[str, Any] = json.loads(done.stdout)
    result["phase_wall_s"] = round(time.perf_counter() - start, 1)
    return result


def prepare_checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The SD1 checkpoint the phases load: bench/_sd15.py's full-size one, or a tiny one for ``--smoke``."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        from tests.fixtures.tiny_checkpoints import build_checkpoint

        path = build_checkpoint(args.workdir / "checkpoints" / "tiny-sd1.safetensors", "sd1")
        return path, {"checked": False, "why": "tiny smoke checkpoint"}
    from bench._sd15 import check_keys, ensure_checkpoint

    path = ensure_checkpoint(args.workdir)
    keys = check_keys(path)
    if keys.get("checked") and not keys["equal"]:
        raise RuntimeError(f"the built checkpoint's keys differ from the SD1.5 listing: {keys}")
    return path, keys


def run_phases(args: argparse.Namespace) -> dict[str, Any]:
    """The phases of the groups in ``--only``, each in its own process."""
    profile = profile_of(args)
    phases: dict[str, Any] = {}
    if "unet" in args.only:
        phases[f"unet_sd15_{profile.sd15_size}"] = run_phase("unet_sd15", args)
        phases[f"unet_sdxl_{profile.sdxl_size}"] = run_phase("unet_sdxl", args)
    if "vae" in args.only:
        phases["vae"] = run_phase("vae", args)
    if "vram" in args.only:
        phases.update({f"vram_{mode}": run_phase("vram", args, "--vram", mode) for mode in VRAM_MODES})
    return phases


def summarize(phases: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the phases: seconds per iteration, decode seconds, peaks, ratios to diffusers."""
    unets = {name.removeprefix("unet_"): phase for name, phase in phases.items() if name.startswith("unet_")}
    vae = phases["vae"]["sizes"] if "vae" in phases else {}
    ratios = {f"unet_step_{key}": p["ratio_ours_over_diffusers"] for key, p in unets.items()
              if "ratio_ours_over_diffusers" in p}
    ratios.update({f"vae_decode_{size}": e["ratio_ours_over_diffusers"] for size, e in vae.items()
                   if "ratio_ours_over_diffusers" in e})
    modes = {name.removeprefix("vram_"): phase for name, phase in phases.items() if name.startswith("vram_")}
    return {
        "s_per_it": {key: p["ours"]["median_s"] for key, p in unets.items()},
        "diffusers_s_per_it": {key: p["diffusers"]["median_s"] for key, p in unets.items() if "diffusers" in p},
        "vae_decode_s": {size: e["ours"]["median_s"] for size, e in vae.items()},
        "ratio_ours_over_diffusers": ratios,
        "peak_gib_by_vram_mode": {mode: round(p["peak_bytes_incl_placing"] / GIB, 3) for mode, p in modes.items()},
        "step_peak_gib_by_vram_mode": {mode: round(p["step_peak_bytes"] / GIB, 3) for mode, p in modes.items()},
        "s_per_step_by_vram_mode": {mode: p["s_per_step"] for mode, p in modes.items()},
    }


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "platform": platform.platform(), "processor": _cpu_name(),
                            "python": platform.python_version(), **_versions()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 2),
                    cuda_version=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return info


def no_cuda_report() -> dict[str, Any]:
    import torch

    return {"benchmark": "gpu", "cuda": False, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "torch": torch.__version__, "reason": "torch.cuda.is_available() is False: nothing was measured",
            "hint": "run on a machine with a CUDA GPU, or `python bench/gpu.py --smoke` to check the script"}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from engine.models.manager import compute_dtype, vae_dtype

    started = time.perf_counter()
    args.checkpoint, keys = prepare_checkpoint(args)
    phases = run_phases(args)
    device = torch.device(args.device)
    return {
        "benchmark": "gpu", "cuda": device.type == "cuda", "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": device_info(args.device),
        "dtypes": {"unet": dtype_name(compute_dtype(device)), "vae": dtype_name(vae_dtype(device))},
        "checkpoint": {"path": str(args.checkpoint), **keys},
        "phase_groups": list(args.only), "summary": summarize(phases), "phases": phases,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "notes": [
            "Random weights: speed does not depend on them. SD1.5 is bench/_sd15.py's checkpoint in the real key "
            "layout; SDXL is UNetModel(UNetConfig.SDXL) with the same kind of weights, its tensors shared with "
            "diffusers' UNet (renamed through engine/models/convert_diffusers.py).",
            "A CFG step is one UNet call at batch 2 (uncond + cond). Timings are medians after warm-up; every call "
            "is followed by torch.cuda.synchronize. Loom and diffusers run interleaved in one process; "
            "ratio_ours_over_diffusers < 1 means Loom is faster.",
            "Each phase ran in a fresh process. Peaks are torch.cuda.max_memory_allocated after "
            "reset_peak_memory_stats (smoke runs on the CPU: the process's VmHWM, which includes Python and torch).",
            "vram_* phases: peak_bytes_incl_placing covers moving the UNet to the device (or installing streaming) "
            "and the first step; step_peak_bytes covers one later step alone.",
        ],
    }


def phase_groups(text: str) -> tuple[str, ...]:
    """``--only``'s value: known group names, comma-separated."""
    groups = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(groups) - set(PHASE_GROUPS))
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"unknown phase group(s) {unknown or text!r}; choose from {PHASE_GROUPS}")
    return groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "loom-bench-sd15",
                        help="where the random checkpoint is built and cached (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, 64x64, one repeat, on --device (default cpu): checks the script itself")
    parser.add_argument("--device", default=None, help="compute device (default: cuda; cpu with --smoke)")
    parser.add_argument("--skip-diffusers", action="store_true", help="leave out the diffusers comparison")
    parser.add_argument("--only", type=phase_groups, default=PHASE_GROUPS, metavar="GROUPS",
                        help=f"comma-separated phase groups to run (default: {','.join(PHASE_GROUPS)})")
    # Internal: run one phase in this process and print its JSON.
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vram", choices=VRAM_MODES, default="normal", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if phase_child(args, PHASES):
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("CUDA is not available; nothing to measure (try --smoke)")
        result = no_cuda_report()
    else:
        result = benchmark(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
