"""Moving a module's weights between the offload device (CPU RAM) and the compute device.

A loaded module's tensors live in RAM (their *home*). :class:`Placement` swaps device copies in as
the parameters' data and swaps the home tensors back when the module is offloaded, so offloading
copies nothing back and RAM never holds a second copy of a model. When the compute device is the
CPU, ``tensor.to(cpu)`` is the tensor itself and placing is free.

:class:`BlockStreamer` does the same per block around a forward pass (low-VRAM modes): a forward
pre-hook swaps a block's device copies in, the forward hook swaps the home tensors back. On CUDA the
next block is copied ahead on a side stream while the current one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)


def _own_tensors(module: nn.Module, recurse: bool = True) -> list[Tensor]:
    return [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _own_tensors(module))


class Placement:
    """Tracks which modules have device copies swapped in, keeping their home (RAM) tensors."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._homes: dict[int, list[Tensor]] = {}

    def is_placed(self, module: nn.Module) -> bool:
        return id(module) in self._homes

    def place(self, module: nn.Module) -> None:
        """Swap device copies of every weight in (the caller restores LoRA patches first). Nothing to do when
        the device is the CPU, where the weights already are (and keeping their tensors here would keep
        weights alive that the model manager has since packed: engine/backend/packed_layers.py)."""
        if self.is_placed(module) or self.device.type == "cpu":
            return
        tensors = _own_tensors(module)
        homes = [t.data for t in tensors]
        with torch.no_grad(), torch.inference_mode(False):
            for tensor, home in zip(tensors, homes, strict=True):
                tensor.data = home.to(self.device, non_blocking=True)
        self._homes[id(module)] = homes

    def offload(self, module: nn.Module) -> None:
        """Swap the home tensors back; the device copies are freed (the caller restores patches first)."""
        homes = self._homes.pop(id(module), None)
        if homes is None:
            return
        with torch.no_grad(), torch.inference_mode(False):
            for tensor, home in zip(_own_tensors(module), homes, strict=True):
                tensor.data = home


#: The block lists streamed one block at a time: the UNet's, the MMDiT's and Flux's.
_BLOCK_LISTS = ("input_blocks", "output_blocks", "joint_blocks", "double_blocks", "single_blocks")


@dataclass(frozen=True, eq=False)
class StreamUnit:
    """A module whose weights move to the device around its forward: all of them (``recursive``: a block), or
    only its own (a single layer, or the model itself for the tensors no block holds, e.g. a position table)."""

    module: nn.Module
    recursive: bool

    def tensors(self) -> list[Tensor]:
        return _own_tensors(self.module, recurse=self.recursive)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def stream_units(model: nn.Module, per_layer: bool) -> list[StreamUnit]:
    """The diffusion model's units in forward order; together they hold every tensor of ``model`` once.

    ``per_layer``: every module with weights of its own. Otherwise the model's own tensors (for the whole
    forward), then the blocks of its block lists (UNet input/output blocks and middle block, MMDiT joint blocks,
    Flux double and single blocks) one by one, and the small top-level parts."""
    if per_layer:
        return [StreamUnit(m, recursive=False) for m in model.modules() if _own_tensors(m, recurse=False)]
    units = [StreamUnit(model, recursive=False)] if _own_tensors(model, recurse=False) else []
    for name, child in model.named_children():
        children = child.children() if name in _BLOCK_LISTS else (child,)
        units.extend(StreamUnit(unit, recursive=True) for unit in children)
    return units


class BlockStreamer:
    """Forward hooks that move one unit's weights to the device just before it runs and back after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._hooks: dict[int, list[RemovableHandle]] = {}
        self._units: dict[int, int] = {}  # module -> how many units stream
        self._active: dict[int, tuple[StreamUnit, list[Tensor]]] = {}
        self._prefetched: dict[int, list[Tensor]] = {}
        self._side_stream: Any = torch.cuda.Stream(device) if device.type == "cuda" else None

    def is_streaming(self, module: nn.Module) -> bool:
        return id(module) in self._hooks

    def install(self, module: nn.Module, units: Sequence[StreamUnit]) -> None:
        """Stream ``units`` of ``module`` (replacing hooks installed before for other units)."""
        if self._units.get(id(module)) == len(units):
            return
        self.remove(module)
        handles: list[RemovableHandle] = []
        for index, unit in enumerate(units):
            following = units[index + 1] if index + 1 < len(units) else None
            handles.append(unit.module.register_forward_pre_hook(self._pre_hook(unit, following)))
            handles.append(unit.module.register_forward_hook(self._post_hook))
        self._hooks[id(module)] = handles
        self._units[id(module)] = len(units)
        log.info("streaming %d units of %s to %s", len(units), type(module).__name__, self.device)

    def remove(self, module: nn.Module) -> None:
        for handle in self._hooks.pop(id(module), []):
            handle.remove()
        self._units.pop(id(module), None)
        self.release()

    def release(self) -> None:
        """Put every unit still holding device copies (a forward that raised) back home."""
        for unit, homes in list(self._active.values()):
            self._swap_home(unit, homes)
        self._active.clear()
        self._prefetched.clear()

    def _pre_hook(self, unit: StreamUnit, following: StreamUnit | None) -> Any:
        def hook(module: nn.Module, _args: Any) -> None:
            if id(module) in self._active:
                return
            tensors = unit.tensors()
            homes = [t.data for t in tensors]
            copies = self._prefetched.pop(id(module), None)
            if copies is None:
                copies = [home.to(self.device, non_blocking=True) for home in homes]
            else:  # copied ahead on the side stream: wait for that copy before computing with it
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(self._side_stream)
                for copy in copies:  # allocated on the side stream, used here: not reused before this is done
                    copy.record_stream(current)
            with torch.no_grad(), torch.inference_mode(False):
                for tensor, copy in zip(tensors, copies, strict=True):
                    tensor.data = copy
            self._active[id(module)] = (unit, homes)
            if following is not None and self._side_stream is not None:
                self._prefetch(following)
        return hook

    def _post_hook(self, module: nn.Module, _args: Any, _output: Any) -> None:
        entry = self._active.pop(id(module), None)
        if entry is not None:
            self._swap_home(*entry)

    def _prefetch(self, unit: StreamUnit) -> None:
        homes = [t.data for t in unit.tensors()]
        with torch.cuda.stream(self._side_stream):
            self._prefetched[id(unit.module)] = [home.to(self.device, non_blocking=True) for home in homes]

    @staticmethod
    def _swap_home(unit: StreamUnit, homes: list[Tensor]) -> None:
        with torch.no_grad(), torch.inference_mode(False):
            for tensor, home in zip(unit.tensors(), homes, strict=True):
                tensor.data = home
