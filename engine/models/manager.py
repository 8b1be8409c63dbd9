"""ModelManager: turns MODEL / CLIP / VAE handles into ready modules on the compute device.

One door for every model: nodes ask ``manager.unet(handle)``, ``manager.text_encoder(handle)`` or
``manager.vae(handle)`` and never move weights themselves; the sampler asks for
``manager.sampling(handle, latent_shape)`` so room is made for a step's working memory too. A part is
built on the meta device and filled one tensor at a time from the memory-mapped file into RAM, so loading
never holds two copies of a checkpoint. Where weights live while used (resident on the device, least
recently used offloaded, or streamed block by block): engine/models/memory.py and streaming.py. Beyond
``max_loaded`` parts or ``ram_budget`` bytes, idle parts are dropped from RAM, least recently used first.

Compute dtype: fp32 on CPUs (bf16 matmul is hundreds of times slower there), fp16 on CUDA/MPS; the
VAE in bf16 (or fp32) on GPUs, since SD VAEs overflow in fp16.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.backend.attention import load_weights
from engine.backend.cast_weights import FLOAT8_DTYPES, cast_at_forward, cast_parameters, set_weight_scales
from engine.backend.control_lora import ControlLora
from engine.backend.controlnet import ControlNet
from engine.backend.flux import Flux
from engine.backend.flux_controlnet import FluxControlNet
from engine.backend.mmdit import MMDiT
from engine.backend.mmdit_controlnet import SD3ControlNet
from engine.backend.packed_layers import pack_layers, packing_available, unpack_layers
from engine.backend.t2i_adapter import T2IAdapter
from engine.backend.taesd import TinyAutoencoder
from engine.backend.text import TextEncoder, load_text_encoder
from engine.backend.unet import UNetConfig, UNetModel
from engine.backend.vae import AutoencoderKL, VAEConfig, adapt_vae_weight
from engine.malloc_tuning import release_free_memory
from engine.models import parts
from engine.models.addon_caches import clear_addon_caches
from engine.models.control_lora_load import is_control_lora, load_control_lora
from engine.models.control_models import cache_part, load_control_model
from engine.models.families import FLOW_FAMILIES
from engine.models.flow_controlnet_load import FlowControlNet
from engine.models.flow_models import build_flow_model
from engine.models.flow_text_load import load_flow_text_encoder
from engine.models.handles import (
    CHECKPOINT_UNET,
    ClipHandle,
    ControlNetHandle,
    FileRef,
    ModelHandle,
    TextEncoderFile,
    VaeHandle,
)
from engine.models.loaders import CheckpointFile, UnsupportedModel
from engine.models.memory import (
    DeviceBudget,
    Residency,
    VramMode,
    transformer_working_memory_bytes,
    working_memory_bytes,
)
from engine.models.merging import load_merged_unet, merge_text_encoders
from engine.models.patching import LoraPatcher
from engine.models.streaming import BlockStreamer, Placement, module_bytes, stream_units
from engine.models.taesd_load import load_tiny_vae
from engine.models.weight_storage import file_float8, model_shapes, split_scales, stored_as

log = logging.getLogger(__name__)

#: What MODEL handles load into: an SD1/SD2/SDXL UNet, an SD3/SD3.5 MMDiT or a Flux.1 transformer.
DiffusionModel = UNetModel | MMDiT | Flux
_DIFFUSION_MODELS = (UNetModel, MMDiT, Flux)

#: Where checkpoints keep their text encoders: SD1/SD2, SDXL, and SD3 / Flux (``text_encoders.clip_l.`` ...).
_TEXT_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoders.")
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


#: ModelComputeDtype's names.
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    dtype: str = ""  # a UNet asked for in another dtype than the manager's (ModelComputeDtype)
    source: object = None  # a part stored on its own: the UNet's layout and weight dtype, the text-encoder files


class ModelManager:
    """Loads and keeps model parts and decides where their weights live; thread-safe; no globals.

    Loaded parts live in RAM on the offload device (the CPU). Before a part is used it moves to the
    compute device (see engine/models/memory.py for the modes and budget), after idle parts have gone
    back, least recently used first, to make room. LoRA patches are taken off before weights change
    device and applied again to the device copy. Beyond ``ram_budget`` bytes (or ``max_loaded``
    parts) idle parts leave RAM entirely and are read from their files again when next needed.
    """

    def __init__(self, device: torch.device | str = "cpu", *, dtype: torch.dtype | None = None,
                 max_loaded: int = 6, vram: VramMode | str = VramMode.NORMAL, vram_budget: int | None = None,
                 ram_budget: int | None = None, pack_weights: bool | None = None) -> None:
        self.mode = VramMode(vram)
        self.device = torch.device("cpu") if self.mode is VramMode.CPU else torch.device(device)
        self.offload_device = torch.device("cpu")
        self.dtype = dtype or compute_dtype(self.device)
        self.vae_dtype = dtype or vae_dtype(self.device)
        self.max_loaded = max_loaded
        self.budget = DeviceBudget(self.device, vram_budget)
        self.ram_budget = ram_budget
        self.residency: Residency[_Key] = Residency()
        self._placement = Placement(self.device)
        self._streamer = BlockStreamer(self.device)
        self._loaded: OrderedDict[_Key, nn.Module] = OrderedDict()
        self._bytes: dict[_Key, int] = {}
        self._pinned: set[_Key] = set()
        self._reserve = 0
        self._lock = threading.RLock()
        #: LoRA patches: parsed files (a few, by FileRef) and, per loaded module, the saved originals. On
        #: CPUs the patched buffers are reused (fresh allocations' page faults dominate there).
        self.patcher = LoraPatcher(max_files=4, reuse_buffers=self.device.type == "cpu")
        #: On CPUs the diffusion model's convolution and linear weights are packed for oneDNN from its first
        #: sampling run on (engine/backend/packed_layers.py); ``unet()`` outside a sampling run hands out dense
        #: weights, and the layers a LoRA patch changes are unpacked first. (A VAE gains nothing from it: its
        #: large convolutions already run at oneDNN's peak; bench/README.md.)
        if pack_weights is None:
            pack_weights = self.device.type == "cpu" and packing_available() and not self.mode.streams_unet
        self.pack_weights = pack_weights

    def unet(self, handle: ModelHandle) -> DiffusionModel:
        """The diffusion model (UNet, MMDiT or Flux) with exactly ``handle.patches`` applied (the original
        weights when there are none)."""
        with self._lock:
            key = self._unet_key(handle)
            module = self._get(key, lambda: self._load_unet(handle, self.unet_dtype(handle)))
            assert isinstance(module, _DIFFUSION_MODELS)
            self._use(key, module)
            if self.pack_weights:
                unpack_layers(module, self.patcher.pending(module, handle.patches, handle.family.label))
            self.patcher.apply(module, handle.patches, handle.family.label)
            if self.pack_weights:
                # packed while a sampling run holds it (a hook's patches change it mid-run), dense otherwise
                sampling = key in self._pinned and not self._streamer.is_streaming(module)
                pack_layers(module, release=release_free_memory) if sampling else unpack_layers(module)
            return module

    def unet_dtype(self, handle: ModelHandle) -> torch.dtype:
        """The dtype ``handle``'s UNet computes in: its ModelComputeDtype choice, else the manager's."""
        return _DTYPES.get(handle.compute_dtype or "", self.dtype)

    def _unet_key(self, handle: ModelHandle) -> _Key:
        dtype = self.unet_dtype(handle)
        plain = handle.unet_layout == CHECKPOINT_UNET and handle.weight_dtype is None
        source: object = None if plain else (handle.unet_layout, handle.weight_dtype)
        if handle.merge is not None:  # a merge is its own set of weights, whatever file it starts from
            source = handle.merge
        if dtype == self.dtype:
            return _Key(handle.checkpoint, "unet", source=source)
        return _Key(handle.checkpoint, "unet", str(handle.compute_dtype), source)

    @contextmanager
    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> Iterator[DiffusionModel]:
        """The UNet for a sampling run, with room made for the step's working memory (see
        :func:`~engine.models.memory.working_memory_bytes`); it is not offloaded until the run ends."""
        key = self._unet_key(handle)
        dtype = self.unet_dtype(handle)
        with self._lock:
            self._pinned.add(key)
            try:
                loaded = self._get(key, lambda: self._load_unet(handle, dtype))
                assert isinstance(loaded, _DIFFUSION_MODELS)
                self._reserve = _working_memory(loaded, latent_shape, dtype, cfg)
                unet = self.unet(handle)  # placed with room for the working memory, or streamed
                self._make_room(self._reserve + self._largest_unit(unet), keep={key})
            except BaseException:
                self._pinned.discard(key)
                self._reserve = 0
                raise
        try:
            yield unet
        finally:
            with self._lock:
                self._pinned.discard(key)
                self._reserve = 0
                self._streamer.release()

    def text_encoder(self, handle: ClipHandle) -> TextEncoder:
        """The text encoder(s) with exactly ``handle.patches`` applied."""
        with self._lock:
            key = _Key(handle.checkpoint, "clip", source=handle.merge or handle.sources or None)
            module = self._get(key, lambda: self._build_text(handle, patched=False))
            assert isinstance(module, TextEncoder)
            self._use(key, module)
            self.patcher.apply(module, handle.patches, handle.family.label)
            return module

    def vae(self, handle: VaeHandle) -> AutoencoderKL | TinyAutoencoder:
        """The VAE of a VAE handle; a TAESD (``handle.tiny``) for VAELoader's taesd/taesdxl and previews."""
        if handle.tiny is not None:
            return self._tiny_vae(handle)
        with self._lock:
            key = _Key(handle.file, "vae:" + handle.prefix)
            module = self._get(key, lambda: self._load_vae(handle.file, handle.prefix))
            assert isinstance(module, AutoencoderKL)
            self._use(key, module)
            return module

    def _tiny_vae(self, handle: VaeHandle) -> TinyAutoencoder:
        tiny, encoder = str(handle.tiny), handle.encoder
        with self._lock:
            key = _Key(handle.file, f"taesd:{tiny}:{encoder.path if encoder else ''}")
            module = self._get(key, lambda: load_tiny_vae(
                tiny, Path(handle.file.path), Path(encoder.path) if encoder else None,
                device=self.offload_device, dtype=self.vae_dtype))
            assert isinstance(module, TinyAutoencoder)
            self._use(key, module)
            return module

    def controlnet(self, handle: ControlNetHandle) -> ControlNet | T2IAdapter | ControlLora | FlowControlNet:
        """The ControlNet (LDM or diffusers layout; a difference one over ``handle.base``; an SD3/Flux one) or
        T2I-Adapter of a CONTROL_NET handle, in the compute dtype."""
        with self._lock:
            key = _Key(handle.file, cache_part(handle))
            module = self._get(key, lambda: load_control_lora(handle.file.path, device=self.offload_device,
                                                              dtype=self.dtype)
                               if is_control_lora(handle.file.path)
                               else load_control_model(handle, device=self.offload_device, dtype=self.dtype))
            assert isinstance(module, (ControlNet, T2IAdapter, ControlLora, SD3ControlNet, FluxControlNet))
            self._use(key, module)
            return module

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used last, and where its weights are (for /system_stats)."""
        with self._lock:
            return [{"file": key.file.name, "path": key.file.path, "part": key.part, "bytes": self._bytes[key],
                     "resident": key in self.residency,
                     "device": str(self.device if key in self.residency else self.offload_device),
                     "streamed": self._streamer.is_streaming(module), "dtype": _dtype_name(module)}
                    for key, module in self._loaded.items()]

    def stats(self) -> dict[str, Any]:
        """Mode, devices and byte counts (for /system_stats)."""
        with self._lock:
            return {"vram_mode": self.mode.value, "device": str(self.device),
                    "offload_device": str(self.offload_device), "vram_budget": self.budget.simulated_bytes,
                    "ram_budget": self.ram_budget, "resident_bytes": self.residency.resident_bytes,
                    "loaded_bytes": sum(self._bytes.values()), "models": self.loaded()}

    def unload_all(self) -> None:
        """Drop every part from the device and from RAM (POST /free with unload_models)."""
        with self._lock:
            for key in list(self._loaded):
                self._drop(key)
            clear_addon_caches()
            _empty_device_cache(self.device)

    def offload_all(self) -> None:
        """Send every part back to the offload device (they stay loaded in RAM)."""
        with self._lock:
            self._streamer.release()
            for key in self.residency.keys():
                self._offload(key)
            _empty_device_cache(self.device)

    def recover_from_oom(self) -> str:
        """After a device OOM: offload everything and step down one mode (normal -> low); says what changed."""
        with self._lock:
            self.offload_all()
            lower = self.mode.lower()
            if lower is self.mode:
                return f"offloaded all models (already in --vram {self.mode.value})"
            log.warning("device out of memory: switching from --vram %s to --vram %s", self.mode.value, lower.value)
            self.mode = lower
            return f"offloaded all models and switched to --vram {lower.value}"

    def _get(self, key: _Key, load: Callable[[], nn.Module]) -> nn.Module:
        module = self._loaded.get(key)
        if module is not None:
            self._loaded.move_to_end(key)
            return module
        if self.ram_budget is not None:  # make room first, so the old and the new part never overlap
            self._fit_ram(keep=None, incoming=self._incoming_bytes(key))
        module = load()
        self._loaded[key] = module
        self._bytes[key] = module_bytes(module)
        self._fit_ram(keep=key)
        return module

    def _fit_ram(self, keep: _Key | None, incoming: int = 0) -> None:
        """Drop idle parts, least recently used first, beyond ``max_loaded`` parts or ``ram_budget`` bytes
        (counting ``incoming`` bytes about to be loaded)."""
        def over() -> bool:
            too_many = len(self._loaded) > self.max_loaded
            held = sum(self._bytes.values()) + incoming
            return too_many or (self.ram_budget is not None and held > self.ram_budget)
        dropped = False
        for key in list(self._loaded):
            if not over():
                break
            if key != keep and key not in self._pinned:
                self._drop(key)
                dropped = True
        if dropped and incoming:
            gc.collect()  # the dropped weights go back to the system before the new ones are read

    def _incoming_bytes(self, key: _Key) -> int:
        """What a part will take once loaded, from a .safetensors header (0 for other files: reading a
        pickled checkpoint to find out would cost what it saves)."""
        if not str(key.file.path).lower().endswith(".safetensors"):
            return 0
        dtype = _DTYPES.get(key.dtype, self.dtype)
        if key.part == "clip" and isinstance(key.source, tuple):
            return parts.text_elements(key.source) * dtype.itemsize
        if key.part == "unet":
            layout, weights = key.source if isinstance(key.source, tuple) else (CHECKPOINT_UNET, None)
            prefixes: tuple[str, ...] = (layout.prefix,)
            dtype = FLOAT8_DTYPES.get(str(weights), dtype)
        elif key.part == "clip":
            prefixes = _TEXT_PREFIXES
        elif key.part.startswith("vae:"):
            prefixes = tuple(key.part[4:] + part for part in _VAE_PARTS)
        else:
            prefixes = ("",)
        with CheckpointFile(Path(key.file.path)) as ckpt:
            if key.part.startswith("vae:"):
                dtype = self._vae_storage(ckpt, key.part[4:])
            elements = sum(math.prod(ckpt.shape(name)) for name in ckpt.keys() if name.startswith(prefixes))
        return elements * dtype.itemsize

    def _use(self, key: _Key, module: nn.Module) -> None:
        """Make ``module`` runnable on the compute device: placed whole, or streamed block by block."""
        if self._streams(key):
            if key in self.residency:
                self._offload(key)
            if self.pack_weights:
                unpack_layers(module)  # streamed blocks move their tensors: dense ones
            self._streamer.install(module, stream_units(module, per_layer=self.mode is VramMode.NONE))
            return
        if key in self.residency:
            self.residency.touch(key)
            return
        if self._streamer.is_streaming(module):
            self._streamer.remove(module)
        self._make_room(self._bytes[key] + self._reserve, keep={key})
        self._restore(module)  # patches are applied again, to the device copy, by the caller
        self._placement.place(module)
        self.residency.add(key, self._bytes[key])

    def _restore(self, module: nn.Module) -> None:
        """Take ``module``'s LoRA patches off (its patched layers unpacked first, if packed)."""
        if self.pack_weights:
            unpack_layers(module, self.patcher.pending(module, (), ""))
        self.patcher.restore(module)

    def _streams(self, key: _Key) -> bool:
        """Whether this part runs streamed: the UNet in low/none mode, or in normal mode when it and the
        working memory cannot fit on the device even with every other part offloaded."""
        if key.part != "unet":
            return False
        if self.mode.streams_unet:
            return True
        if self.mode is not VramMode.NORMAL:
            return False
        too_big = self._bytes[key] + self._reserve > self.budget.capacity(self.residency.resident_bytes)
        if too_big:
            log.info("%s's UNet does not fit the device budget; streaming its blocks", key.file.name)
        return too_big

    def _make_room(self, needed: int, keep: set[_Key]) -> None:
        if self.mode is VramMode.HIGH:
            return
        capacity = self.budget.capacity(self.residency.resident_bytes)
        for victim in self.residency.victims(needed, capacity, keep=keep | self._pinned):
            assert isinstance(victim, _Key)
            self._offload(victim)
        shortfall = self.residency.resident_bytes + needed - capacity
        if shortfall > 0:
            log.warning("device budget exceeded by %d bytes; consider --vram low", shortfall)

    def _offload(self, key: _Key) -> None:
        module = self._loaded[key]
        self._restore(module)  # the caller applies patches again when it next asks for the module
        self._placement.offload(module)
        self.residency.remove(key)
        log.debug("offloaded %s (%s)", key.file.name, key.part)

    def _drop(self, key: _Key) -> None:
        module = self._loaded[key]
        if key in self.residency:
            self._offload(key)
        self._streamer.remove(module)
        del self._loaded[key]
        del self._bytes[key]
        self._pinned.discard(key)
        log.info("unloaded %s (%s)", key.file.name, key.part)

    def _largest_unit(self, unet: nn.Module) -> int:
        if not self._streamer.is_streaming(unet):
            return 0
        return max(unit.nbytes for unit in stream_units(unet, per_layer=self.mode is VramMode.NONE))

    def _load_unet(self, handle: ModelHandle, dtype: torch.dtype) -> DiffusionModel:
        if handle.merge is not None:
            merged = load_merged_unet(handle, self.patcher.files, device=self.offload_device, dtype=dtype)
            assert isinstance(merged, _DIFFUSION_MODELS)
            log.info("built the merged UNet of %s and %s (%s)", handle.merge.base.checkpoint.name,
                     handle.merge.other.checkpoint.name, str(dtype).removeprefix("torch."))
            return merged
        ref = handle.checkpoint
        with CheckpointFile(ref.path) as ckpt:
            model, storage = self._read_unet(ckpt, handle, dtype)
        log.info("loaded %s of %s (%s%s)", type(model).__name__, ref.name, str(dtype).removeprefix("torch."),
                 "" if storage == dtype else f", weights stored in {str(storage).removeprefix('torch.')}")
        if self.device.type == "cpu" and dtype != torch.float32:
            log.warning("%s's UNet computes in %s on the CPU (ModelComputeDtype), many times slower than fp32 there",
                        ref.name, str(dtype).removeprefix("torch."))
        return model.requires_grad_(False).eval()

    def _read_unet(self, ckpt: CheckpointFile, handle: ModelHandle,
                   dtype: torch.dtype) -> tuple[DiffusionModel, torch.dtype]:
        """The diffusion model of ``handle`` read from ``ckpt`` and the dtype its layer weights are stored in
        (engine/models/weight_storage.py: float8 when asked for or when the file stores float8)."""
        layout = handle.unet_layout
        shapes = model_shapes(parts.unet_shapes(ckpt, layout))
        chosen = FLOAT8_DTYPES.get(str(handle.weight_dtype))
        storage = chosen or file_float8(ckpt, parts.unet_keys(ckpt, layout)) or dtype
        model: DiffusionModel
        if handle.family.is_flow:
            built = build_flow_model(handle.family, shapes)
            assert isinstance(built, (MMDiT, Flux))
            model = built
        else:
            with torch.device("meta"):
                model = UNetModel(UNetConfig.from_state_dict(shapes))
        scales: dict[str, torch.Tensor] = {}
        tensors = split_scales(parts.unet_tensors(ckpt, layout), scales)
        if storage != dtype:  # float8 weights, each layer cast to the compute dtype as it runs
            cast_at_forward(model, dtype, strict=not handle.family.is_flow)
            tensors = stored_as(tensors, cast_parameters(model), storage, dtype, from_file=chosen is None)
        load_weights(model, tensors, device=self.offload_device, dtype=None if storage != dtype else dtype)
        if scales:
            if storage == dtype:
                raise UnsupportedModel(f"{ckpt.path.name} has scaled-fp8 weight scales but no float8 weights")
            set_weight_scales(model, {name: scale.to(self.offload_device) for name, scale in scales.items()})
        return model, storage

    def _load_vae(self, ref: FileRef, prefix: str) -> AutoencoderKL:
        with CheckpointFile(ref.path) as ckpt:
            config = VAEConfig.from_state_dict(parts.vae_shapes(ckpt, prefix, _VAE_PARTS))
            with torch.device("meta"):
                model = AutoencoderKL(config)
            storage = self._vae_storage(ckpt, prefix)
            if storage != self.vae_dtype:
                cast_at_forward(model, self.vae_dtype)
            tensors = parts.vae_tensors(ckpt, prefix, _VAE_PARTS)  # LDM or diffusers names
            load_weights(model, tensors, device=self.offload_device, dtype=storage, adapt=adapt_vae_weight)
        log.info("loaded VAE of %s", ref.name)
        return model.requires_grad_(False).eval()

    def _vae_storage(self, ckpt: CheckpointFile, prefix: str) -> torch.dtype:
        """The dtype a VAE's weights are kept in: the file's own when it is 16-bit and the VAE computes in fp32
        on the CPU (each layer widens its weights as it runs: the same values, half the memory), else the VAE's
        compute dtype."""
        if self.vae_dtype != torch.float32 or self.device.type != "cpu":
            return self.vae_dtype
        names = tuple(prefix + part for part in _VAE_PARTS)
        stored = {ckpt.dtype(key) for key in ckpt.keys() if key.startswith(names)}
        if len(stored) == 1 and (dtype := stored.pop()) in (torch.float16, torch.bfloat16):
            return dtype
        return self.vae_dtype

    def _build_text(self, handle: ClipHandle, *, patched: bool = True) -> TextEncoder:
        """A new text encoder of ``handle``: read from its files, or merged from its two inputs' (each built
        with its own merge and patches baked in); ``patched`` bakes ``handle``'s own patches in too."""
        spec = handle.merge
        if spec is None:
            encoder = self._load_text(handle.checkpoint, handle.family.name, handle.sources)
        else:
            encoder = self._build_text(spec.base)
            other = self._build_text(spec.other)
            merge_text_encoders(encoder, other, spec, handle)
            del other  # the second input's weights go as soon as they are blended in
            log.info("built the merged text encoder of %s and %s", spec.base.checkpoint.name,
                     spec.other.checkpoint.name)
        if patched and any(patch.strength for patch in handle.patches):
            baker = LoraPatcher(reuse_buffers=False)
            baker.files = self.patcher.files  # parsed LoRA files shared; the originals go with the baker
            baker.apply(encoder, handle.patches, handle.family.label)
        return encoder

    def _load_text(self, ref: FileRef, family: str, sources: tuple[TextEncoderFile, ...] = ()) -> TextEncoder:
        if family in FLOW_FAMILIES:  # SD3 / Flux: CLIP-L, CLIP-G and T5-XXL towers, each optional for SD3
            return load_flow_text_encoder(ref, family, sources, dtype=self.dtype, device=self.offload_device,
                                          compute_device=self.device)
        if sources:  # text-encoder files, read as if under their checkpoint prefixes
            state = parts.text_state(sources, self.dtype)
        else:
            with CheckpointFile(ref.path) as ckpt:
                # Converted while read, so the model adopts these tensors without another copy.
                state = {k: ckpt.load(k, self.dtype) for k in ckpt.keys() if k.startswith(_TEXT_PREFIXES)}
        encoder = load_text_encoder(state, family, dtype=self.dtype, device=self.offload_device)
        log.info("loaded text encoder of %s", ref.name)
        return encoder.requires_grad_(False).eval()


def _working_memory(model: DiffusionModel, latent_shape: tuple[int, ...], dtype: torch.dtype, cfg: bool) -> int:
    """The activations of one evaluation of ``model`` on a latent of ``latent_shape``."""
    if isinstance(model, UNetModel):
        return working_memory_bytes(latent_shape, dtype, cfg=cfg, model_channels=model.config.model_channels)
    return transformer_working_memory_bytes(latent_shape, dtype, cfg=cfg, hidden=model.config.hidden_size,
                                            heads=model.config.num_heads)


def _dtype_name(module: nn.Module) -> str:
    parameter = next(module.parameters(), None)
    return "" if parameter is None else str(parameter.dtype).removeprefix("torch.")


def _empty_device_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
