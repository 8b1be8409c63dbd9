"""Device memory policy: VRAM modes, the device budget, working-memory estimates and residency bookkeeping.

The ModelManager asks this module three questions: how many bytes may models occupy on the compute
device (:class:`DeviceBudget`), how many bytes a sampling step needs besides the weights
(:func:`working_memory_bytes`), and which resident parts to send back to the offload device to make
room (:class:`Residency`, least recently used first). Nothing here moves a tensor.

Modes (as ComfyUI's ``--highvram`` / ``--normalvram`` / ``--lowvram`` / ``--novram`` / ``--cpu``):

* ``high``: every part stays on the compute device once used; the budget is ignored.
* ``normal``: parts move to the device when used; idle ones go back to the CPU, least recently used
  first, when the budget needs room.
* ``low``: as normal, but the UNet stays on the CPU and its blocks move to the device one at a time
  while the forward pass reaches them.
* ``none``: as low, but the UNet streams layer by layer (every module with weights of its own).
* ``cpu``: everything on the CPU.
"""

from __future__ import annotations

import enum
import sys
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

#: Left free on a CUDA device for the allocator, cuDNN workspaces and other processes.
DEFAULT_RESERVE_BYTES = 512 * 1024**2


class VramMode(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    NONE = "none"
    CPU = "cpu"

    @property
    def streams_unet(self) -> bool:
        return self in (VramMode.LOW, VramMode.NONE)

    def lower(self) -> VramMode:
        """The next mode that needs less device memory (itself when there is none lower)."""
        order = [VramMode.HIGH, VramMode.NORMAL, VramMode.LOW, VramMode.NONE]
        if self not in order or self is VramMode.NONE:
            return self
        return order[order.index(self) + 1]


@dataclass(frozen=True)
class DeviceBudget:
    """How many bytes models and working memory may occupy on ``device``.

    ``simulated_bytes`` fixes the budget (tests, CPU-only machines, ``--vram-budget``); otherwise on
    CUDA it is the free memory reported by ``torch.cuda.mem_get_info`` plus what our own resident
    models occupy, minus ``reserve_bytes``; on other devices it is unbounded.
    """

    device: torch.device
    simulated_bytes: int | None = None
    reserve_bytes: int = DEFAULT_RESERVE_BYTES

    def capacity(self, resident_bytes: int) -> int:
        """Bytes that resident parts plus working memory may use, given ``resident_bytes`` already placed."""
        if self.simulated_bytes is not None:
            return self.simulated_bytes
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return max(free + resident_bytes - self.reserve_bytes, 0)
        return sys.maxsize


def working_memory_bytes(latent_shape: tuple[int, ...], dtype: torch.dtype, *, cfg: bool = True,
                         model_channels: int = 320, heads: int = 8) -> int:
    """An estimate of the activations one UNet evaluation needs for a latent ``[B, C, h, w]``.

    The batch doubles with classifier-free guidance (cond and uncond in one pass). Two terms: the
    feature maps at full latent resolution (a few dozen ``model_channels``-wide tensors alive at
    once, including the skip connections) and one self-attention score matrix ``[B, heads, hw, hw]``
    at that resolution (the worst case, when SDPA falls back to the math kernel).
    """
    batch, _channels, height, width = latent_shape
    batch *= 2 if cfg else 1
    element = torch.empty((), dtype=dtype).element_size()
    tokens = height * width
    features = batch * model_channels * tokens * element * 24
    attention = batch * heads * tokens * tokens * element
    return int(features + attention)


def transformer_working_memory_bytes(latent_shape: tuple[int, ...], dtype: torch.dtype, *, cfg: bool = True,
                                     hidden: int = 1536, heads: int = 24, text_tokens: int = 333) -> int:
    """An estimate of the activations one SD3/Flux transformer evaluation needs: the image tokens (2x2 latent
    patches) and ``text_tokens`` text tokens, a dozen ``hidden``-wide tensors per token (the 4x MLP included)
    and one attention score matrix over all tokens (the math-kernel worst case)."""
    batch, _channels, height, width = latent_shape
    batch *= 2 if cfg else 1
    element = torch.empty((), dtype=dtype).element_size()
    tokens = (height // 2) * (width // 2) + text_tokens
    return int(batch * hidden * tokens * element * 12 + batch * heads * tokens * tokens * element)


_K = TypeVar("_K", bound=Hashable)


class Residency(Generic[_K]):
    """Which parts are on the compute device and how large they are, least recently used first."""

    def __init__(self) -> None:
        self._resident: OrderedDict[_K, int] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._resident

    def add(self, key: _K, nbytes: int) -> None:
        self._resident[key] = nbytes
        self._resident.move_to_end(key)

    def touch(self, key: _K) -> None:
        if key in self._resident:
            self._resident.move_to_end(key)

    def remove(self, key: _K) -> None:
        self._resident.pop(key, None)

    def keys(self) -> list[_K]:
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        return sum(self._resident.values())

    def victims(self, needed: int, capacity: int, keep: Iterable[_K] = ()) -> list[_K]:
        """Resident parts to offload, oldest first, so that ``needed`` more bytes fit in ``capacity``.

        Parts in ``keep`` are never chosen; when even offloading everything else is not enough, all
        others are returned and the caller decides what to do with the shortfall.
        """
        kept = set(keep)
        total = self.resident_bytes
        chosen: list[_K] = []
        for key, nbytes in self._resident.items():
            if total + needed <= capacity:
                break
            if key in kept:
                continue
            chosen.append(key)
            total -= nbytes
        return chosen
