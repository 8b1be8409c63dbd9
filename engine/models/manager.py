"""ModelManager: turns MODEL / CLIP / VAE handles into ready modules on the compute device.

One door for every model: nodes ask ``manager.unet(handle)``, ``manager.text_encoder(handle)`` or
``manager.vae(handle)`` and never move weights themselves. Loaded modules are kept, least recently
used first out, up to ``max_loaded`` parts; a part is built on the meta device and filled one
tensor at a time from the memory-mapped file, so loading never holds two copies of a checkpoint.

Compute dtype: fp32 on CPUs (bf16 matmul is hundreds of times slower there), fp16 on CUDA/MPS; the
VAE in bf16 (or fp32) on GPUs, since SD VAEs overflow in fp16.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.backend.attention import load_weights
from engine.backend.controlnet import ControlNet
from engine.backend.text import TextEncoder, load_text_encoder
from engine.backend.unet import UNetConfig, UNetModel
from engine.backend.vae import AutoencoderKL, VAEConfig, adapt_vae_weight
from engine.models.controlnet_convert import load_controlnet
from engine.models.handles import ClipHandle, ControlNetHandle, FileRef, ModelHandle, VaeHandle
from engine.models.loaders import UNET_PREFIX, CheckpointFile
from engine.models.patching import LoraPatcher

log = logging.getLogger(__name__)

_TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")
#: VAE weights; VAE training files also hold e.g. ``loss.discriminator.*``, which is not the model.
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def pick_device(name: str = "auto") -> torch.device:
    """The compute device: ``auto`` picks CUDA, then MPS, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.float16


def vae_dtype(device: torch.device) -> torch.dtype:
    """SD VAEs overflow in fp16 (NaN images): bf16 where the GPU has it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class _Key:
    file: FileRef
    part: str


class ModelManager:
    """Loads and keeps model parts; thread-safe; no globals."""

    def __init__(self, device: torch.device | str = "cpu", *, dtype: torch.dtype | None = None,
                 max_loaded: int = 6) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or compute_dtype(self.device)
        self.vae_dtype = dtype or vae_dtype(self.device)
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[_Key, nn.Module] = OrderedDict()
        self._lock = threading.RLock()
        #: LoRA patches: parsed files (a few, by FileRef) and, per loaded module, the saved originals. On
        #: CPUs the patched buffers are reused (fresh allocations' page faults dominate there).
        self.patcher = LoraPatcher(max_files=4, reuse_buffers=self.device.type == "cpu")

    def unet(self, handle: ModelHandle) -> UNetModel:
        """The UNet with exactly ``handle.patches`` applied (the original weights when there are none)."""
        with self._lock:
            module = self._get(_Key(handle.checkpoint, "unet"), lambda: self._load_unet(handle.checkpoint))
            assert isinstance(module, UNetModel)
            self.patcher.apply(module, handle.patches, handle.family.label)
            return module

    def text_encoder(self, handle: ClipHandle) -> TextEncoder:
        """The text encoder(s) with exactly ``handle.patches`` applied."""
        with self._lock:
            module = self._get(_Key(handle.checkpoint, "clip"),
                               lambda: self._load_text(handle.checkpoint, handle.family.name))
            assert isinstance(module, TextEncoder)
            self.patcher.apply(module, handle.patches, handle.family.label)
            return module

    def vae(self, handle: VaeHandle) -> AutoencoderKL:
        module = self._get(_Key(handle.file, "vae:" + handle.prefix),
                           lambda: self._load_vae(handle.file, handle.prefix))
        assert isinstance(module, AutoencoderKL)
        return module

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used last (for /system_stats)."""
        with self._lock:
            return [{"file": key.file.name, "part": key.part, "bytes": _module_bytes(module)}
                    for key, module in self._loaded.items()]

    def unload_all(self) -> None:
        with self._lock:
            self._loaded.clear()

    def _get(self, key: _Key, load: Callable[[], nn.Module]) -> nn.Module:
        with self._lock:
            module = self._loaded.get(key)
            if module is not None:
                self._loaded.move_to_end(key)
                return module
            module = load()
            self._loaded[key] = module
            while len(self._loaded) > self.max_loaded:
                evicted, _ = self._loaded.popitem(last=False)
                log.info("unloaded %s (%s)", evicted.file.name, evicted.part)
            return module

    def _load_unet(self, ref: FileRef) -> UNetModel:
        with CheckpointFile(ref.path) as ckpt:
            config = UNetConfig.from_state_dict(ckpt.shapes(UNET_PREFIX))
            with torch.device("meta"):
                model = UNetModel(config)
            load_weights(model, ckpt.iter_prefix(UNET_PREFIX), device=self.device, dtype=self.dtype)
        log.info("loaded UNet of %s", ref.name)
        return model.requires_grad_(False).eval()

    def _load_vae(self, ref: FileRef, prefix: str) -> AutoencoderKL:
        with CheckpointFile(ref.path) as ckpt:
            config = VAEConfig.from_state_dict(ckpt.shapes(prefix))
            with torch.device("meta"):
                model = AutoencoderKL(config)
            tensors = ((k, v) for k, v in ckpt.iter_prefix(prefix) if k.startswith(_VAE_PARTS))
            load_weights(model, tensors, device=self.device, dtype=self.vae_dtype, adapt=adapt_vae_weight)
        log.info("loaded VAE of %s", ref.name)
        return model.requires_grad_(False).eval()

    def _load_text(self, ref: FileRef, family: str) -> TextEncoder:
        with CheckpointFile(ref.path) as ckpt:
            # Converted while read, so the model adopts these tensors without another copy.
            state = {k: ckpt.load(k, self.dtype) for k in ckpt.keys() if k.startswith(_TEXT_PREFIXES)}
        encoder = load_text_encoder(state, family, dtype=self.dtype, device=self.device)
        log.info("loaded text encoder of %s", ref.name)
        return encoder.requires_grad_(False).eval()

    def controlnet(self, handle: ControlNetHandle) -> ControlNet:
        """The ControlNet of a CONTROL_NET handle (LDM or diffusers layout), in the compute dtype."""
        module = self._get(_Key(handle.file, "controlnet"),
                           lambda: load_controlnet(handle.file.path, device=self.device, dtype=self.dtype))
        assert isinstance(module, ControlNet)
        return module


def _module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
