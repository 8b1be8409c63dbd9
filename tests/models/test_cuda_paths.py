"""The ModelManager's CUDA paths on tiny real checkpoints: the fp16 UNet, the bf16 VAE, block streaming with the
side-stream prefetch, and the out-of-memory step-down after a real CUDA OOM.

Every test needs a CUDA device: they are marked ``gpu`` (deselected by default; run them with ``-m gpu``) and
skipped where ``torch.cuda.is_available()`` is False. References are the same files computed in fp32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.schedules import sigmas_for
from engine.backend.unet import sdxl_adm
from engine.backend.vae import AutoencoderKL
from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
from engine.models.loaders import VAE_PREFIX, CheckpointFile, detect_family
from engine.models.manager import ModelManager
from engine.models.memory import VramMode
from engine.models.streaming import BlockStreamer, StreamUnit
from tests.fixtures.tiny_checkpoints import build_checkpoint, context_dim, pooled_dim

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
LATENT_SIZE = 8  # a 64x64 image
CFG = 5.0
#: Largest |fp16 - fp32| over the largest |fp32| output of the tiny UNets (outputs of order 1).
FP16_TOLERANCE = 2e-2
#: The same for the VAE decode in bf16 (8 mantissa bits).
BF16_TOLERANCE = 6e-2
#: Between two fp16 runs of the same weights and kernels that differ only in where the weights live (streamed or
#: resident): equal up to rounding; a block computed with stale or half-copied weights is far off.
SAME_WEIGHTS_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SD1 and SDXL checkpoints stored in fp32, so the CPU reference computes on the file's exact weights."""
    root = tmp_path_factory.mktemp("cuda-ckpt")
    return {family: build_checkpoint(root / f"tiny-{family}.safetensors", family, dtype=torch.float32)
            for family in ("sd1", "sdxl")}


@pytest.fixture(autouse=True)
def fresh_cuda_memory() -> Iterator[None]:
    """Each test starts and ends with the allocator's cache emptied, so memory_allocated is this test's own."""
    torch.cuda.empty_cache()
    yield
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def model_handle(path: Path) -> ModelHandle:
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def step_inputs(family: str) -> dict[str, Tensor | None]:
    """A CFG step's UNet inputs (batch 2) on the CPU in fp32: latents, timesteps, text context and (SDXL) the adm
    vector."""
    generator = torch.Generator().manual_seed(3)
    pooled = torch.randn(2, pooled_dim(family), generator=generator)
    return {"x": torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE, generator=generator),
            "timesteps": torch.tensor([500.0, 250.0]),
            "context": torch.randn(2, 77, context_dim(family), generator=generator),
            "y": sdxl_adm(pooled, 8 * LATENT_SIZE, 8 * LATENT_SIZE) if family == "sdxl" else None}


def run_unet(unet: nn.Module, inputs: dict[str, Tensor | None], device: torch.device) -> Tensor:
    moved = {name: None if value is None else value.to(device) for name, value in inputs.items()}
    with torch.inference_mode():
        out: Tensor = unet(moved["x"], moved["timesteps"], moved["context"], y=moved["y"])
    return out


def cpu_reference(path: Path, inputs: dict[str, Tensor | None]) -> Tensor:
    unet = ModelManager("cpu", pack_weights=False).unet(model_handle(path))
    return run_unet(unet, inputs, torch.device("cpu"))


def parameter_devices(module: nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


# ------------------------------------------------------------------------------------ fp16 UNet


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp16_unet_on_cuda_matches_the_fp32_cpu_output(checkpoints: dict[str, Path], family: str) -> None:
    manager = ModelManager("cuda")
    assert manager.dtype == torch.float16
    unet = manager.unet(model_handle(checkpoints[family]))
    assert {p.dtype for p in unet.parameters()} == {torch.float16}
    assert parameter_devices(unet) == {"cuda"}
    entry = manager.loaded()[0]
    assert (entry["dtype"], entry["device"], entry["resident"]) == ("float16", "cuda", True)
    inputs = step_inputs(family)
    out = run_unet(unet, inputs, CUDA)
    assert out.dtype == torch.float16 and out.device.type == "cuda"
    assert torch.isfinite(out).all()
    assert relative_error(out, cpu_reference(checkpoints[family], inputs)) < FP16_TOLERANCE


# ------------------------------------------------------------------------------------ bf16 VAE


def test_vae_decodes_in_bf16_where_supported_close_to_fp32_cpu(checkpoints: dict[str, Path]) -> None:
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    handle = VaeHandle(FileRef.of(checkpoints["sd1"]), VAE_PREFIX)
    manager = ModelManager("cuda")
    assert manager.vae_dtype == expected
    vae = manager.vae(handle)
    assert isinstance(vae, AutoencoderKL)
    assert {p.dtype for p in vae.parameters()} == {expected} and parameter_devices(vae) == {"cuda"}
    reference_vae = ModelManager("cpu").vae(handle)
    assert isinstance(reference_vae, AutoencoderKL)
    z = torch.randn(1, 4, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        image = vae.decode(z.to(CUDA))
        reference = reference_vae.decode(z)
    assert image.dtype == expected and image.shape == (1, 3, 8 * LATENT_SIZE, 8 * LATENT_SIZE)
    assert torch.isfinite(image).all()
    assert relative_error(image, reference) < BF16_TOLERANCE


# ------------------------------------------------------------------------------------ block streaming


def cfg_denoiser(unet: nn.Module, model_sampling: ModelSampling, family: str) -> Any:
    """A CFG denoiser over ``unet``: uncond and cond in one batch of 2, as a KSampler step runs it."""
    inputs = step_inputs(family)
    context = inputs["context"]
    assert context is not None
    y = inputs["y"]

    def denoise(x: Tensor, sigma: Tensor, **_: Any) -> Tensor:
        x_in = model_sampling.calculate_input(sigma, x).repeat(2, 1, 1, 1)
        timesteps = model_sampling.timestep(sigma).repeat(2)
        eps = unet(x_in, timesteps, context.to(x.device), y=None if y is None else y.to(x.device)).float()
        uncond, cond = eps.chunk(2)
        return model_sampling.calculate_denoised(sigma, uncond + CFG * (cond - uncond), x)

    return denoise


def sample(manager: ModelManager, path: Path, family: str, steps: int = 3) -> Tensor:
    """Euler sampling of a 1-image latent through ``manager.sampling`` (the UNet as a KSampler run gets it)."""
    model_sampling = ModelSampling.from_betas()
    latent = torch.zeros(1, 4, LATENT_SIZE * 2, LATENT_SIZE * 2)
    noise = prepare_noise(latent, 11)
    sigmas = sigmas_for(model_sampling, "normal", "euler", steps)
    with torch.inference_mode(), manager.sampling(model_handle(path), tuple(latent.shape)) as unet:
        denoise = cfg_denoiser(unet, model_sampling, family)
        out = ksample(denoise, model_sampling, "euler", sigmas.to(CUDA), noise.to(CUDA), latent.to(CUDA), seed=11)
    torch.cuda.synchronize()
    return out.float().cpu()


@pytest.mark.parametrize("mode", ["low", "none"])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_streamed_sampling_prefetches_on_a_side_stream_and_matches_high_vram(
        checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch, mode: str, family: str) -> None:
    prefetched: list[StreamUnit] = []
    prefetch = BlockStreamer._prefetch

    def counting(self: BlockStreamer, unit: StreamUnit) -> None:
        assert isinstance(self._side_stream, torch.cuda.Stream)
        prefetch(self, unit)
        copies = self._prefetched[id(unit.module)]
        assert len(copies) == len(unit.tensors()) and all(copy.device.type == "cuda" for copy in copies)
        prefetched.append(unit)

    monkeypatch.setattr(BlockStreamer, "_prefetch", counting)
    path = checkpoints[family]
    expected = sample(ModelManager("cuda", vram="high"), path, family)
    assert not prefetched  # nothing streams in high mode
    manager = ModelManager("cuda", vram=mode)
    latent = sample(manager, path, family)
    assert isinstance(manager._streamer._side_stream, torch.cuda.Stream)
    assert len(prefetched) > 3  # every unit but the first is copied ahead, step after step
    entry = next(m for m in manager.loaded() if m["part"] == "unet")
    assert entry["streamed"] and not entry["resident"] and entry["dtype"] == "float16"
    unet = manager.unet(model_handle(path))
    assert parameter_devices(unet) == {"cpu"}  # every weight back home after the run
    assert torch.isfinite(latent).all()
    assert relative_error(latent, expected) < SAME_WEIGHTS_TOLERANCE


# ------------------------------------------------------------------------------------ out of memory


def load_all_parts(manager: ModelManager, path: Path) -> None:
    """UNet, text encoder and VAE of ``path`` placed on the device."""
    handle = model_handle(path)
    manager.unet(handle)
    manager.text_encoder(ClipHandle(handle.checkpoint, handle.family))
    manager.vae(VaeHandle(handle.checkpoint, VAE_PREFIX))


def test_recover_from_oom_steps_down_and_offloads_every_part(checkpoints: dict[str, Path]) -> None:
    manager = ModelManager("cuda")
    start = torch.cuda.memory_allocated()
    load_all_parts(manager, checkpoints["sdxl"])
    parts = manager.loaded()
    assert len(parts) == 3 and all(p["resident"] and p["device"] == "cuda" for p in parts)
    placed_bytes = sum(p["bytes"] for p in parts)
    before = torch.cuda.memory_allocated()
    assert before - start >= placed_bytes
    message = manager.recover_from_oom()
    assert manager.mode is VramMode.LOW and "--vram low" in message
    after = torch.cuda.memory_allocated()
    assert before - after >= placed_bytes  # the device copies are freed, not just forgotten
    assert manager.residency.resident_bytes == 0
    assert all(not p["resident"] and p["device"] == "cpu" for p in manager.loaded())
    assert len(manager.loaded()) == 3  # offloaded to RAM, not dropped


def test_a_real_cuda_oom_then_recovery_leaves_the_manager_usable(checkpoints: dict[str, Path]) -> None:
    path, family = checkpoints["sd1"], "sd1"
    inputs = step_inputs(family)
    manager = ModelManager("cuda")
    before_oom = run_unet(manager.unet(model_handle(path)), inputs, CUDA).float().cpu()
    impossible = 2 * torch.cuda.get_device_properties(CUDA).total_memory
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(impossible, dtype=torch.uint8, device=CUDA)
    message = manager.recover_from_oom()
    assert manager.mode is VramMode.LOW and "--vram low" in message
    with torch.inference_mode(), manager.sampling(model_handle(path), (1, 4, LATENT_SIZE, LATENT_SIZE)) as unet:
        after = run_unet(unet, inputs, CUDA).float().cpu()
    entry = next(m for m in manager.loaded() if m["part"] == "unet")
    assert entry["streamed"]  # the lower mode streams the UNet
    assert torch.isfinite(after).all()
    assert relative_error(after, before_oom) < SAME_WEIGHTS_TOLERANCE
    load_all_parts(manager, path)  # the other parts still place
    assert manager.recover_from_oom().startswith("offloaded all models and switched to --vram none")
