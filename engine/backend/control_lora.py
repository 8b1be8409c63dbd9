"""Control-LoRA (Stability AI's SDXL "control-lora" rank files): a ControlNet stored relative to the UNet
it steers.

A Control-LoRA file (marked by a ``lora_controlnet`` key) holds, under LDM ControlNet names without a
prefix:

* the ControlNet's own weights in full (``input_hint_block``, ``zero_convs``, ``middle_block_out``, and
  whatever else it trained in full: norms, biases...);
* a low-rank pair ``<module>.up`` ``[out, rank]`` / ``<module>.down`` ``[rank, in(, kh, kw)]`` for
  linear/conv weights it shares with the UNet.

The ControlNet is built when sampling starts, from the UNet being sampled (ComfyUI's semantics): its
structure is the UNet's encoder with the file's hint channels, its weights the UNet's
(``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``), then every full weight of the file,
then ``weight + (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)`` for every pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.unet import UNetModel

__all__ = ["CONTROL_LORA_MARKER", "ControlLora"]

CONTROL_LORA_MARKER = "lora_controlnet"
_COPIED = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


class ControlLora(nn.Module):
    """The tensors of a Control-LoRA file (buffers, so the model manager can place and count them);
    :meth:`build` makes the ControlNet for a UNet."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        super().__init__()
        if "input_hint_block.0.weight" not in state:
            raise ValueError("not a Control-LoRA: input_hint_block.0.weight is missing")
        self.full_names: list[str] = []
        self.pair_names: list[str] = []
        for index, (key, tensor) in enumerate(sorted(state.items())):
            if key == CONTROL_LORA_MARKER:
                continue
            if key.endswith(".down"):
                continue
            if key.endswith(".up"):
                module = key[: -len(".up")]
                if f"{module}.down" not in state:
                    raise ValueError(f"Control-LoRA key {key} has no matching {module}.down")
                self.register_buffer(f"up{index}", tensor)
                self.register_buffer(f"down{index}", state[f"{module}.down"])
                self.pair_names.append(f"{module}|{index}")
            else:
                self.register_buffer(f"full{index}", tensor)
                self.full_names.append(f"{key}|{index}")

    @property
    def hint_channels(self) -> int:
        for entry in self.full_names:
            key, index = entry.split("|")
            if key == "input_hint_block.0.weight":
                return int(self.get_buffer(f"full{index}").shape[1])
        raise AssertionError("checked in __init__")

    def full_weights(self) -> dict[str, Tensor]:
        """The file's full weights by LDM name."""
        out = {}
        for entry in self.full_names:
            key, index = entry.split("|")
            out[key] = self.get_buffer(f"full{index}")
        return out

    def pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{module name: (up, down)}`` of the low-rank pairs."""
        out = {}
        for entry in self.pair_names:
            module, index = entry.split("|")
            out[module] = (self.get_buffer(f"up{index}"), self.get_buffer(f"down{index}"))
        return out

    @torch.no_grad()
    def build(self, unet: UNetModel) -> ControlNet:
        """The ControlNet for ``unet`` (its current weights), on its device and dtype, in eval mode."""
        reference = cast(nn.Linear, unet.time_embed[0]).weight
        device = reference.device if reference.device.type != "meta" else torch.device("cpu")
        dtype = reference.dtype
        if dtype.itemsize < 2:  # float8 storage: compute in a 16/32-bit type
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        with torch.device("meta"):
            net = ControlNet(ControlNetConfig(unet.config, self.hint_channels))
        expected = net.state_dict()
        state = {k: v for k, v in unet.state_dict().items() if k.startswith(_COPIED) and k in expected}
        for key, tensor in self.full_weights().items():
            if key not in expected:
                raise ValueError(f"Control-LoRA weight {key} has no place in a ControlNet for this model; "
                                 "use a Control-LoRA made for the checkpoint's model family")
            state[key] = tensor
        for module, (up, down) in self.pairs().items():
            key = f"{module}.weight"
            if key not in state:
                raise ValueError(f"Control-LoRA pair {module}.up/.down has no base weight {key} in this model; "
                                 "use a Control-LoRA made for the checkpoint's model family")
            base = state[key].to(device=device, dtype=torch.float32)
            delta = up.to(device, torch.float32).flatten(1) @ down.to(device, torch.float32).flatten(1)
            state[key] = base + delta.reshape(base.shape)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"the Control-LoRA and the model leave {len(missing)} ControlNet weights unset, e.g. "
                             f"{', '.join(missing[:3])}; use a Control-LoRA made for the checkpoint's model family")
        net.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
        return net.requires_grad_(False).eval()
