"""``comfy.model_management``: devices, memory and interrupts as packs ask for them, answered by Loom.

Loom's model manager places and offloads models itself, so the loading calls (:func:`load_models_gpu`,
:func:`unload_all_models`, :func:`free_memory`) accept what packs pass and do nothing. Interrupts are the
running prompt's: :data:`InterruptProcessingException` *is* :class:`engine.errors.Interrupted`, so a pack
raising or catching it and Loom's executor agree. Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Any

import torch

from engine.custom_nodes.runtime import current_run
from engine.errors import Interrupted

__all__ = [
    "CPUState", "InterruptProcessingException", "VRAMState", "cpu_mode", "cpu_state", "free_memory",
    "get_autocast_device", "get_free_memory", "get_torch_device", "get_total_memory", "intermediate_device",
    "interrupt_current_processing", "is_device_cpu", "is_device_cuda", "is_device_mps", "load_models_gpu",
    "processing_interrupted", "should_use_bf16", "should_use_fp16", "soft_empty_cache", "text_encoder_device",
    "text_encoder_dtype", "text_encoder_offload_device", "throw_exception_if_processing_interrupted",
    "unet_dtype", "unet_offload_device", "unload_all_models", "vae_device", "vae_dtype", "vae_offload_device",
    "vram_state", "xformers_enabled",
]

log = logging.getLogger(__name__)

#: ComfyUI's interrupt exception: Loom's own, so the executor reports an interrupt, not a failure.
InterruptProcessingException = Interrupted


class VRAMState(enum.Enum):
    """ComfyUI's VRAM modes (Loom decides placement itself; :data:`vram_state` says what fits this machine)."""

    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    """ComfyUI's compute kinds."""

    GPU = 0
    CPU = 1
    MPS = 2


cpu_state = CPUState.GPU if torch.cuda.is_available() else CPUState.CPU
vram_state = VRAMState.NORMAL_VRAM if cpu_state == CPUState.GPU else VRAMState.DISABLED


def get_torch_device() -> torch.device:
    """The compute device: the current CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where results between nodes live (IMAGE, LATENT handed on): the CPU."""
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    """Where an idle diffusion model waits: the CPU."""
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    """Where text encoders run: the compute device."""
    return get_torch_device()


def text_encoder_offload_device() -> torch.device:
    """Where an idle text encoder waits: the CPU."""
    return torch.device("cpu")


def vae_device() -> torch.device:
    """Where the VAE runs: the compute device."""
    return get_torch_device()


def vae_offload_device() -> torch.device:
    """Where an idle VAE waits: the CPU."""
    return torch.device("cpu")


def cpu_mode() -> bool:
    """Whether Loom computes on the CPU."""
    return cpu_state == CPUState.CPU


def is_device_cpu(device: Any) -> bool:
    """Whether ``device`` (a torch.device or a name) is the CPU."""
    return _device_type(device) == "cpu"


def is_device_cuda(device: Any) -> bool:
    """Whether ``device`` is a CUDA device."""
    return _device_type(device) == "cuda"


def is_device_mps(device: Any) -> bool:
    """Whether ``device`` is Apple's MPS."""
    return _device_type(device) == "mps"


def _device_type(device: Any) -> str:
    return str(getattr(device, "type", device)).split(":")[0]


def get_autocast_device(dev: Any) -> str:
    """The device type torch.autocast takes for ``dev``."""
    return _device_type(dev) if dev is not None else "cuda"


def xformers_enabled() -> bool:
    """Loom uses torch's scaled-dot-product attention, never xformers."""
    return False


def should_use_fp16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    """Half precision on CUDA devices; never on the CPU or MPS."""
    return _device_type(device if device is not None else get_torch_device()) == "cuda"


def should_use_bf16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    """bfloat16 on CUDA devices that support it."""
    if _device_type(device if device is not None else get_torch_device()) != "cuda":
        return False
    return bool(torch.cuda.is_bf16_supported())


def unet_dtype(device: Any = None, model_params: int = 0, supported_dtypes: Any = None,
               weight_dtype: Any = None) -> torch.dtype:
    """The diffusion model's dtype: float16 on CUDA, float32 elsewhere."""
    return torch.float16 if should_use_fp16(device) else torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    """The text encoders' dtype: float16 on CUDA, float32 elsewhere."""
    return torch.float16 if should_use_fp16(device) else torch.float32


def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
    """The VAE's dtype: bfloat16 on CUDA devices that support it (float16 VAEs overflow), float32 elsewhere."""
    return torch.bfloat16 if should_use_bf16(device) else torch.float32


def _cpu_free_bytes() -> int:
    """Available system memory."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_total_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    """Free bytes on ``dev`` (the compute device by default); with ``torch_free_too`` a pair ``(free, free inside
    torch's cache)``."""
    device = torch.device(dev) if dev is not None else get_torch_device()
    if device.type == "cuda":
        free_cuda, _ = torch.cuda.mem_get_info(device)
        torch_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        total_free = free_cuda + torch_free
    else:
        total_free = torch_free = _cpu_free_bytes()
    return (total_free, torch_free) if torch_free_too else total_free


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    """Total bytes of ``dev`` (the compute device by default); with ``torch_total_too`` a pair."""
    device = torch.device(dev) if dev is not None else get_torch_device()
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        reserved = torch.cuda.memory_reserved(device)
    else:
        total = reserved = _cpu_total_bytes()
    return (total, reserved) if torch_total_too else total


def soft_empty_cache(force: bool = False) -> None:
    """Give torch's cached, unused device memory back."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif torch.backends.mps.is_available():
        torch.mps.empty_cache()


def load_models_gpu(models: Any, memory_required: int = 0, force_patch_weights: bool = False,
                    minimum_memory_required: Any = None, force_full_load: bool = False) -> None:
    """Accepted and ignored: Loom's model manager places models when they run."""
    log.debug("custom nodes: load_models_gpu(%d model(s)) left to Loom's model manager", len(list(models)))


def load_model_gpu(model: Any) -> None:
    """One model: see :func:`load_models_gpu`."""
    load_models_gpu([model])


def unload_all_models() -> None:
    """Accepted and ignored: Loom's model manager decides what stays loaded."""
    log.debug("custom nodes: unload_all_models left to Loom's model manager")


def free_memory(memory_required: int, device: Any, keep_loaded: Any = ()) -> None:
    """Accepted; gives torch's cached memory back (Loom's model manager offloads models itself)."""
    soft_empty_cache()


def processing_interrupted() -> bool:
    """Whether the prompt of the node running now was interrupted (False outside a node)."""
    ctx = current_run()
    return ctx is not None and ctx.interrupt.is_set()


def throw_exception_if_processing_interrupted() -> None:
    """Raise :data:`InterruptProcessingException` if the running prompt was interrupted."""
    ctx = current_run()
    if ctx is not None:
        ctx.check_interrupted()


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt (or, with False, un-interrupt) the prompt of the node running now; outside a node it does
    nothing (interrupt prompts through Loom's /interrupt)."""
    ctx = current_run()
    if ctx is None:
        log.warning("custom nodes: interrupt_current_processing called outside a running node; ignored")
        return
    if value:
        ctx.interrupt.set()
    else:
        ctx.interrupt.clear()
