"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, ...) through spandrel.

spandrel detects the architecture and its hyper-parameters from a state dict. We read the state dict
ourselves, safely (safetensors, or ``torch.load(weights_only=True)`` for pickled files), and hand it to
spandrel's :class:`ModelLoader`. spandrel is imported on first use only (:func:`import_spandrel`).

spandrel's registry imports every architecture it knows, and two of them (LaMa and RestoreFormer) import
functions from ``torchvision.transforms.functional`` at import time. PyPI's torchvision does not run beside
every torch build, so where the real torchvision cannot be imported, a stand-in module provides just those
names while spandrel loads and is removed from ``sys.modules`` afterwards; calling one of its functions
(running a LaMa or RestoreFormer model) raises an error saying that the architecture needs torchvision.

Loaded models are kept in a small LRU keyed by the file (path, size, mtime), so that the UPSCALE_MODEL
handle on an edge stays a :class:`FileRef` and a replaced file is noticed.
"""

from __future__ import annotations

import enum
import functools
import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engine.errors import ModelError
from engine.models.handles import FileRef

#: spandrel's ImageModelDescriptor (spandrel ships no type information, and is imported lazily).
UpscaleModel = Any

log = logging.getLogger(__name__)

#: How many loaded upscale models stay cached (they are small next to a checkpoint).
CACHED_MODELS = 2
#: The names spandrel's LaMa and RestoreFormer modules import from torchvision.transforms.functional.
_TORCHVISION_NAMES = ("InterpolationMode", "rotate", "normalize")
_PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


class UpscaleModelError(ModelError):
    """An upscale model file that cannot be read or whose architecture spandrel does not know."""


class _InterpolationMode(enum.Enum):
    """Stand-in for torchvision's InterpolationMode (its members are only named, never used)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _needs_torchvision(name: str) -> Any:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"this upscale model's architecture calls torchvision's {name}, and torchvision is "
                         "not installed (or does not import beside this torch): install the torchvision "
                         "build that matches your torch to use it")
    return missing


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = _needs_torchvision("rotate")  # type: ignore[attr-defined]
    functional.normalize = _needs_torchvision("normalize")  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    return {"torchvision": package, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


def _torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        log.info("torchvision is installed but does not import (%s); spandrel loads without it", exc)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            sys.modules.pop(name, None)
        return False
    return True


@functools.cache
def import_spandrel() -> types.ModuleType:
    """spandrel, imported once; with torchvision stood in for while it imports where it is missing."""
    if importlib.util.find_spec("spandrel") is None:
        raise ModelError("upscale models need spandrel, which is not installed: run `make setup` (it installs "
                         "spandrel==0.4.2 --no-deps)")
    if "spandrel" in sys.modules or _torchvision_imports():
        return importlib.import_module("spandrel")
    stand_ins = _torchvision_stand_ins()
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of an upscale model file: safetensors, or a pickle read with weights_only=True."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return dict(load_file(str(path), device="cpu"))
        if suffix in _PICKLE_SUFFIXES:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(loaded, Mapping):
                raise UpscaleModelError(f"{path.name} holds a {type(loaded).__name__}, not a state dict")
            return dict(loaded)
    except UpscaleModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors and the unpickler raise many kinds
        raise UpscaleModelError(f"{path.name} cannot be read as an upscale model ({exc}); "
                                "use a .safetensors or .pth ESRGAN-style file") from exc
    raise UpscaleModelError(f"{path.name}: unsupported file ending {suffix!r}; use .safetensors or .pth")


def model_from_state_dict(state_dict: Mapping[str, Any], name: str) -> UpscaleModel:
    """spandrel's image model for ``state_dict`` (fp32, CPU, eval mode)."""
    spandrel = import_spandrel()
    canonical = spandrel.canonicalize_state_dict(dict(state_dict))
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(canonical)
    except spandrel.UnsupportedModelError as exc:
        raise UpscaleModelError(f"{name}: spandrel recognises no upscale architecture in this file "
                                f"({len(canonical)} tensors)") from exc
    except (KeyError, RuntimeError, ValueError, AssertionError) as exc:
        raise UpscaleModelError(f"{name}: the weights do not fit the architecture spandrel detected "
                                f"({exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(f"{name} is a {descriptor.architecture.name} {descriptor.purpose} model, "
                                "not an image-to-image upscaler")
    return descriptor.eval()


@functools.lru_cache(maxsize=CACHED_MODELS)
def _load(ref: FileRef) -> UpscaleModel:
    descriptor = model_from_state_dict(read_state_dict(Path(ref.path)), ref.name)
    log.info("upscale model %s: %s x%d", ref.name, descriptor.architecture.name, descriptor.scale)
    return descriptor


def load_upscale_model(ref: FileRef) -> UpscaleModel:
    """The loaded model for an UPSCALE_MODEL handle (cached; shared, so callers place it, never edit it)."""
    return _load(ref)


def describe(descriptor: UpscaleModel) -> str:
    """One line about a loaded model: architecture, scale, tags."""
    tags = f" ({', '.join(descriptor.tags)})" if descriptor.tags else ""
    return f"{descriptor.architecture.name} x{descriptor.scale}{tags}"


def place(descriptor: UpscaleModel, device: torch.device,
          dtype: torch.dtype) -> torch.dtype:
    """Move the model to ``device`` in ``dtype`` where its architecture supports it (else fp32); the dtype."""
    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    descriptor.to(device=device, dtype=dtype)
    return dtype
