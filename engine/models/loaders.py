"""Reading checkpoint files and recognising what they hold.

:class:`CheckpointFile` gives names, shapes and dtypes without reading tensor data, then loads
tensors one at a time: safetensors with plain reads (no memory map, so file pages never count
as this process's memory), ``.ckpt``/``.pt`` only through
``torch.load(weights_only=True)`` (memory-mapped where the file format allows). Models are built on
the meta device and filled tensor by tensor, so loading never holds two full copies in RAM.

:func:`detect_family` recognises a checkpoint by its structure, not its sizes, so the tiny demo
models and real checkpoints go through the same path:

* the UNet lives under ``model.diffusion_model.`` (``input_blocks.0.0.weight`` gives its input
  channels: 4 normal, 9 inpainting);
* SD1.x: no class embedding, text encoder ``cond_stage_model.transformer`` (OpenAI CLIP-L);
* SD2.x: no class embedding, text encoder ``cond_stage_model.model`` (OpenCLIP ViT-H); v-prediction
  checkpoints are told apart as ComfyUI does (std of one norm bias), with an override;
* SDXL base: ``label_emb`` plus two text encoders under ``conditioner.embedders.0/1``;
* SDXL refiner: ``label_emb`` plus only the OpenCLIP bigG encoder ``conditioner.embedders.0.model``.

Anything else gets an error naming what was found and where such a file belongs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from engine.errors import LoomError
from engine.models.families import ModelFamily

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class UnsupportedModel(LoomError):
    """A file that is not a checkpoint Loom can run; the message says what it looks like."""


class _SafetensorsReader:
    """Reads a .safetensors file with plain ``pread`` calls, one tensor at a time.

    The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
    data_offsets}}`` and the raw data. Reading (not memory-mapping) keeps the file's pages out of
    this process's RSS: loading a checkpoint costs the converted model plus one source tensor.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("rb")
        try:
            self.entries, self._data_start = self._parse_header()
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self._file.close()
            raise UnsupportedModel(f"{path.name} is not a readable .safetensors file ({exc}); it may be "
                                   "truncated or damaged: download it again") from exc

    def _parse_header(self) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], int]:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) != 8:
            raise ValueError("the file is shorter than a safetensors header")
        length = struct.unpack("<Q", head)[0]
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit the file")
        header = json.loads(self._file.read(length))
        entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (int(v) for v in info["data_offsets"])
            if not 0 <= start <= end or 8 + length + end > size:
                raise ValueError(f"tensor {name!r} lies beyond the end of the file")
            entries[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]), start, end)
        return entries, 8 + length

    def read(self, key: str) -> torch.Tensor:
        dtype_name, shape, start, end = self.entries[key]
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise UnsupportedModel(f"{self.path.name}: tensor {key} has unsupported dtype {dtype_name}")
        buffer = bytearray(end - start)
        got = os.preadv(self._file.fileno(), [buffer], self._data_start + start) if buffer else 0
        if got != len(buffer):
            raise UnsupportedModel(f"{self.path.name}: tensor {key} is truncated")
        dtype = _SAFETENSORS_DTYPES[dtype_name]
        if not buffer:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    def close(self) -> None:
        self._file.close()


#: Largest safetensors JSON header accepted (real checkpoints have well under 1 MB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointFile:
    """Lazy, read-only access to the tensors of a .safetensors, .ckpt or .pt file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._safe: _SafetensorsReader | None = None
        self._pickled: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            self._safe = _SafetensorsReader(self.path)
            self._keys = list(self._safe.entries)
        else:
            self._pickled = _load_pickled(self.path)
            self._keys = list(self._pickled)

    def __enter__(self) -> CheckpointFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._safe is not None:
            self._safe.close()
        self._safe = None
        self._pickled = None

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        if self._safe is not None:
            return self._safe.entries[key][1]
        return tuple(self._tensors()[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        if self._safe is not None:
            name = self._safe.entries[key][0]
            if name not in _SAFETENSORS_DTYPES:
                raise UnsupportedModel(f"{self.path.name}: tensor {key} has unsupported dtype {name}")
            return _SAFETENSORS_DTYPES[name]
        return self._tensors()[key].dtype

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        """Shapes of the keys under ``prefix``, with the prefix stripped."""
        return {k[len(prefix):]: self.shape(k) for k in self._keys if k.startswith(prefix)}

    def load(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, on the CPU, converted to ``dtype`` (floating tensors only)."""
        tensor = self._safe.read(key) if self._safe is not None else self._tensors()[key]
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor

    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._pickled is None:
            raise ValueError(f"{self.path.name} is closed")
        return self._pickled

    def iter_prefix(self, prefix: str, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """``(key without prefix, tensor)`` for every key under ``prefix``, one tensor at a time."""
        for key in self._keys:
            if key.startswith(prefix):
                yield key[len(prefix):], self.load(key, dtype)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._keys)


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """A pickled checkpoint through ``weights_only=True`` only; never arbitrary code."""
    try:
        data = _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds; all mean "refused"
        reason = _first_reason(exc)
        # ``from None``: torch's own text (kept out of tracebacks too) suggests weights_only=False.
        raise UnsupportedModel(
            f"{path.name} could not be read safely and was refused as unsafe ({type(exc).__name__}: {reason}); "
            "pickled files are read with weights_only=True only, so files that need arbitrary code are "
            "refused: convert it to .safetensors, or use a .safetensors version of this model") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UnsupportedModel(f"{path.name} does not hold a state dict (found {type(data).__name__})")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


#: Where torch's unpickling errors start advising to load the file less safely; cut there, never passed on.
_UNSAFE_ADVICE = re.compile(
    r"(Please use|Please file|Re-running|In PyTorch 2\.6|This file can still|you have two options|"
    r"Do it only|do those steps|Alternatively|Check the documentation|weights_only)", re.IGNORECASE)


def _first_reason(exc: Exception) -> str:
    """What torch's unpickler refused (e.g. ``Unsupported global: GLOBAL trainer.Config``), without colour
    codes or torch's advice to re-run with ``weights_only=False`` or to allow-list globals."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("WeightsUnpickler error:", "\n")
    for line in (line.strip() for line in text.splitlines()):
        if "Unsupported global" in line or "Unsupported operand" in line:
            return _without_advice(line)
    reasons = [kept for line in text.splitlines() if (kept := _without_advice(line))]
    return reasons[0][:300] if reasons else type(exc).__name__


def _without_advice(line: str) -> str:
    return " ".join(_UNSAFE_ADVICE.split(line, maxsplit=1)[0].split()).strip(" .;:,")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) files cannot be memory-mapped; still weights_only.
        return torch.load(str(path), map_location="cpu", weights_only=True)


#: The SD x4 upscaler's UNet: 4 latent + 3 low-res pixel channels, a noise-level class embedding (label_emb.weight).
X4_UPSCALER_CHANNELS = 7


#: The std above which SD2's output_blocks.11 norm bias marks a v-prediction model (ComfyUI's test).
_V_PREDICTION_STD = 0.09


def detect_family(ckpt: CheckpointFile, prediction: str | None = None) -> ModelFamily:
    """Recognise a checkpoint from its keys (structure) and one tensor statistic for SD2 eps/v."""
    first_conv = UNET_PREFIX + "input_blocks.0.0.weight"
    if first_conv not in ckpt:
        flow = _flow_family(ckpt)
        if flow is not None:
            return flow
        raise UnsupportedModel(_describe_unknown(ckpt))
    in_channels = ckpt.shape(first_conv)[1]
    if in_channels == X4_UPSCALER_CHANNELS and UNET_PREFIX + "label_emb.weight" in ckpt:
        if not ckpt.has_prefix("cond_stage_model.model."):
            raise UnsupportedModel(f"{ckpt.path.name}: an SD x4 upscaler UNet without its OpenCLIP text encoder "
                                   "(cond_stage_model.model.*)")
        return ModelFamily(name="sd2", prediction=prediction or "v", in_channels=in_channels)  # trained as v
    if in_channels not in (4, 8, 9):
        raise UnsupportedModel(f"{ckpt.path.name}: a UNet with {in_channels} input channels (4, 7, 8 or 9 "
                               "supported: plain, the x4 upscaler, InstructPix2Pix or inpainting)")
    has_label = ckpt.has_prefix(UNET_PREFIX + "label_emb.")
    if has_label and ckpt.has_prefix("conditioner.embedders.1.model."):
        name = "sdxl"
    elif has_label and ckpt.has_prefix("conditioner.embedders.0.model."):
        name = "sdxl_refiner"
    elif not has_label and ckpt.has_prefix("cond_stage_model.transformer."):
        name = "sd1"
    elif ckpt.has_prefix("cond_stage_model.model."):  # with an adm input: SD2 unCLIP
        name = "sd2"
    else:
        raise UnsupportedModel(
            f"{ckpt.path.name}: a UNet (in_channels {in_channels}, class embedding: {has_label}) with text "
            f"encoder keys {_text_encoder_prefixes(ckpt)}; expected SD1.x, SD2.x or SDXL layouts")
    if prediction is None:
        if "v_pred" in ckpt:  # the marker key of SDXL v-prediction checkpoints
            prediction = "v"
        else:
            prediction = _guess_prediction(ckpt) if name == "sd2" else "eps"
    if prediction not in ("eps", "v"):
        raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
    return ModelFamily(name=name, prediction=prediction, in_channels=in_channels, unclip=name == "sd2" and has_label)


def _flow_family(ckpt: CheckpointFile) -> ModelFamily | None:
    """SD3/SD3.5 or Flux.1 (engine/models/flow_models.py) when the checkpoint's diffusion model is one."""
    from engine.models.flow_models import flow_family, is_flow_layout

    if not is_flow_layout(ckpt.keys(), UNET_PREFIX):
        return None
    try:
        return flow_family(ckpt.shapes(UNET_PREFIX), "", ckpt.path.name)
    except ValueError as exc:
        raise UnsupportedModel(str(exc)) from None


def _guess_prediction(ckpt: CheckpointFile) -> str:
    key = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if key not in ckpt:
        return "eps"
    return "v" if float(ckpt.load(key, torch.float32).std()) > _V_PREDICTION_STD else "eps"


def _text_encoder_prefixes(ckpt: CheckpointFile) -> list[str]:
    found = {".".join(k.split(".")[:3]) for k in ckpt.keys()
             if k.startswith(("cond_stage_model.", "conditioner."))}
    return sorted(found)[:6]


def _describe_unknown(ckpt: CheckpointFile) -> str:
    """Say what a non-checkpoint file looks like and where it belongs."""
    keys = ckpt.keys()
    name = ckpt.path.name
    if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_")) or ".lora_down." in k or ".lora_A." in k
           for k in keys):
        return f"{name} is a LoRA, not a checkpoint: put it in models/loras and use LoraLoader"
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in keys):
        return f"{name} is a ControlNet: put it in models/controlnet and use ControlNetLoader"
    if any(k.startswith(("encoder.conv_in.", "decoder.conv_in.", "first_stage_model.")) for k in keys):
        return f"{name} is a VAE without a UNet: put it in models/vae and use VAELoader"
    if any(k.startswith(("double_blocks.", "joint_blocks.")) for k in keys):
        return (f"{name} is an SD3/Flux diffusion model without text encoders or VAE: put it in "
                "models/diffusion_models and use UNETLoader (Load Diffusion Model)")
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in keys):
        return (f"{name} is a diffusers-format SD3/Flux transformer; Loom reads the single-file layout "
                "(joint_blocks.* / double_blocks.*): use the original (BFL / Stability AI) release of the file")
    sample = ", ".join(sorted(keys)[:5])
    return (f"{name} holds no Stable Diffusion UNet (no {UNET_PREFIX}input_blocks.0.0.weight); "
            f"{len(keys)} tensors, e.g. {sample}")
