"""ModelProvider: the seam between the graph (executor, nodes) and whatever owns the models.

:class:`engine.models.manager.ModelManager` implements it on one machine; a cluster worker runs its
own. Executor tests use :class:`NoModels`. Torch-free: the torch types are only named for the type
checker, so the engine core, the API and node declarations load without torch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import LoomError

if TYPE_CHECKING:
    import torch

    from engine.backend.controlnet import ControlNet
    from engine.backend.text import TextEncoder
    from engine.backend.unet import UNetModel
    from engine.backend.vae import AutoencoderKL
    from engine.models.handles import ClipHandle, ControlNetHandle, ModelHandle, VaeHandle


class ModelProvider(Protocol):
    """What nodes and the executor use of the model owner: devices, ready model parts, housekeeping."""

    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...

    def unet(self, handle: ModelHandle) -> UNetModel: ...
    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> AbstractContextManager[UNetModel]: ...
    def text_encoder(self, handle: ClipHandle) -> TextEncoder: ...
    def vae(self, handle: VaeHandle) -> AutoencoderKL: ...
    def controlnet(self, handle: ControlNetHandle) -> ControlNet: ...

    def stats(self) -> dict[str, Any]:
        """Mode, devices, byte counts and loaded parts (for /system_stats)."""
        ...

    def unload_all(self) -> None:
        """Drop every model from the device and from RAM (POST /free)."""
        ...

    def recover_from_oom(self) -> str:
        """After a device out-of-memory error: offload, step down; says what changed."""
        ...


class NoModels:
    """A provider without models, for graphs that need none (stub nodes in tests, file utilities).

    Asking it for a model part is an error that says so; the housekeeping calls do nothing.
    """

    @property
    def device(self) -> torch.device:
        raise self._missing("a device")

    @property
    def dtype(self) -> torch.dtype:
        raise self._missing("a dtype")

    def unet(self, handle: ModelHandle) -> UNetModel:
        raise self._missing("a UNet")

    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> AbstractContextManager[UNetModel]:
        raise self._missing("a UNet")

    def text_encoder(self, handle: ClipHandle) -> TextEncoder:
        raise self._missing("a text encoder")

    def vae(self, handle: VaeHandle) -> AutoencoderKL:
        raise self._missing("a VAE")

    def controlnet(self, handle: ControlNetHandle) -> ControlNet:
        raise self._missing("a ControlNet")

    def stats(self) -> dict[str, Any]:
        return {}

    def unload_all(self) -> None:
        return None

    def recover_from_oom(self) -> str:
        return "no models to offload"

    @staticmethod
    def _missing(what: str) -> LoomError:
        return LoomError(f"this executor was built without a model manager, so it has no {what}; "
                         "run the graph with Loom's server or `main.py run`")
