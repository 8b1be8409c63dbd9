"""ModelProvider: the seam between the graph (executor, nodes) and whatever owns the models.

:class:`engine.models.manager.ModelManager` implements it on one machine; a cluster worker runs its
own. Executor tests use :class:`NoModels`; the server builds its manager in the background behind
:class:`DeferredModels`. Torch-free: the torch types are only named for the type
checker, so the engine core, the API and node declarations load without torch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import LoomError

if TYPE_CHECKING:
    import torch

    from engine.backend.control_lora import ControlLora
    from engine.backend.controlnet import ControlNet
    from engine.backend.t2i_adapter import T2IAdapter
    from engine.backend.taesd import TinyAutoencoder
    from engine.backend.text import TextEncoder
    from engine.backend.vae import AutoencoderKL
    from engine.models.flow_controlnet_load import FlowControlNet
    from engine.models.handles import ClipHandle, ControlNetHandle, ModelHandle, VaeHandle
    from engine.models.manager import DiffusionModel

log = logging.getLogger(__name__)


class ModelProvider(Protocol):
    """What nodes and the executor use of the model owner: devices, ready model parts, housekeeping."""

    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...

    def unet(self, handle: ModelHandle) -> DiffusionModel: ...
    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> AbstractContextManager[DiffusionModel]: ...
    def text_encoder(self, handle: ClipHandle) -> TextEncoder: ...
    def vae(self, handle: VaeHandle) -> AutoencoderKL | TinyAutoencoder: ...
    def controlnet(self, handle: ControlNetHandle) -> ControlNet | T2IAdapter | ControlLora | FlowControlNet: ...

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

    def unet(self, handle: ModelHandle) -> DiffusionModel:
        raise self._missing("a UNet")

    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> AbstractContextManager[DiffusionModel]:
        raise self._missing("a UNet")

    def text_encoder(self, handle: ClipHandle) -> TextEncoder:
        raise self._missing("a text encoder")

    def vae(self, handle: VaeHandle) -> AutoencoderKL | TinyAutoencoder:
        raise self._missing("a VAE")

    def controlnet(self, handle: ControlNetHandle) -> ControlNet | T2IAdapter | ControlLora:
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


class DeferredModels:
    """A ModelProvider whose real provider is built on a background thread.

    ``python main.py`` listens before torch loads: the server answers ``/system_stats``, ``/object_info``
    and the editor at once, while :meth:`start` builds the ModelManager (importing torch and the
    backend) beside it. The first call that needs a model waits for that build; housekeeping calls
    (stats, unload_all) never wait. A build that failed raises its error on every call that needs it.
    """

    def __init__(self, build: Callable[[], ModelProvider], warm_up: Callable[[], None] | None = None) -> None:
        self._build = build
        self._warm_up = warm_up
        self._ready = threading.Event()
        self._provider: ModelProvider | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin building on a daemon thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="loom-models", daemon=True)
                self._thread.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self._provider = self._build()
            if self._warm_up is not None:
                self._warm_up()
            log.info("models ready in %.1f s (torch and the backend loaded in the background)",
                     time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - kept and raised to every caller that needs a model
            log.exception("the model manager could not be built")
            self._error = exc
        finally:
            self._ready.set()

    @property
    def loaded(self) -> bool:
        return self._ready.is_set() and self._provider is not None

    def wait_until_built(self) -> None:
        """Wait for a build that has started (the background import of torch, transformers and the backend), so
        no node imports the same modules from another thread meanwhile: transformers' lazy package is not safe
        to initialise from two threads at once. Returns at once when no build was started."""
        if self._thread is not None:
            self._ready.wait()

    def provider(self) -> ModelProvider:
        """The real provider, waiting for the build (started here if nobody started it)."""
        self.start()
        self._ready.wait()
        if self._provider is None:
            raise LoomError(f"the model manager could not be built: {self._error}") from self._error
        return self._provider

    @property
    def device(self) -> torch.device:
        return self.provider().device

    @property
    def dtype(self) -> torch.dtype:
        return self.provider().dtype

    def unet(self, handle: ModelHandle) -> DiffusionModel:
        return self.provider().unet(handle)

    def sampling(self, handle: ModelHandle, latent_shape: tuple[int, ...], *,
                 cfg: bool = True) -> AbstractContextManager[DiffusionModel]:
        return self.provider().sampling(handle, latent_shape, cfg=cfg)

    def text_encoder(self, handle: ClipHandle) -> TextEncoder:
        return self.provider().text_encoder(handle)

    def vae(self, handle: VaeHandle) -> AutoencoderKL | TinyAutoencoder:
        return self.provider().vae(handle)

    def controlnet(self, handle: ControlNetHandle) -> ControlNet | T2IAdapter | ControlLora | FlowControlNet:
        return self.provider().controlnet(handle)

    def stats(self) -> dict[str, Any]:
        return self._provider.stats() if self.loaded and self._provider is not None else {"loading": True}

    def unload_all(self) -> None:
        if self._provider is not None:
            self._provider.unload_all()

    def recover_from_oom(self) -> str:
        return self.provider().recover_from_oom()
