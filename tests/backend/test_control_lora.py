"""Control-LoRA: the ControlNet built from a UNet and a Control-LoRA file equals a full ControlNet whose
weights the test computes as the UNet's plus ``up @ down`` (and the file's full weights); loading
through the ModelManager; refusals; sampling through the control function with the sampled UNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.backend.control_apply import ControlSpec, control_function
from engine.backend.control_lora import ControlLora
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.model_sampling import ModelSampling
from engine.backend.unet import UNetModel
from engine.models.handles import ControlNetHandle, FileRef
from engine.models.manager import ModelManager
from tests.backend.conftest import relative_error
from tests.fixtures.tiny_checkpoints import _random_weights, unet_config

RANK = 4
OWN = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def _unet(seed: int = 0) -> UNetModel:
    config = unet_config("sdxl")
    with torch.device("meta"):
        unet = UNetModel(config)
    weights = _random_weights(unet, torch.Generator().manual_seed(seed))
    unet.load_state_dict(weights, assign=True)
    return unet.eval()


def control_lora_state(unet: UNetModel, seed: int = 1) -> dict[str, Tensor]:
    """A Control-LoRA in Stability's layout for ``unet``: the ControlNet's own weights and the encoder's
    norms in full, a rank-4 ``up``/``down`` pair for every encoder linear/conv weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        net = ControlNet(ControlNetConfig(unet.config, 3))
    full = _random_weights(net, generator)
    state: dict[str, Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, tensor in full.items():
        if key.startswith(OWN) or tensor.ndim == 1:
            state[key] = tensor  # own weights, biases and norms in full
        else:
            module = key[: -len(".weight")]
            state[f"{module}.up"] = torch.randn(tensor.shape[0], RANK, generator=generator) * 0.05
            state[f"{module}.down"] = torch.randn(RANK, *tensor.shape[1:], generator=generator) * 0.05
    return state


def reference_controlnet(unet: UNetModel, state: dict[str, Tensor]) -> ControlNet:
    """The full ControlNet the Control-LoRA stands for: UNet weights, then the file's, then + up @ down."""
    net = ControlNet(ControlNetConfig(unet.config, 3))
    unet_state = unet.state_dict()
    weights = {}
    for key in net.state_dict():
        if key in state:
            weights[key] = state[key]
        else:
            module = key[: -len(".weight")]
            base = unet_state[key]
            up, down = state[f"{module}.up"], state[f"{module}.down"]
            weights[key] = base + (up @ down.reshape(RANK, -1)).reshape(base.shape)
    net.load_state_dict(weights, strict=True)
    return net.eval()


def _inputs(unet: UNetModel) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    hint = torch.rand(2, 3, 64, 64, generator=generator)
    context = torch.randn(2, 5, unet.config.context_dim or 0, generator=generator)
    y = torch.randn(2, unet.config.adm_in_channels or 0, generator=generator)
    return x, hint, torch.tensor([900.0, 30.0]), context, y


@torch.no_grad()
def test_built_controlnet_equals_the_full_reference(tmp_path: Path) -> None:
    unet = _unet()
    state = control_lora_state(unet)
    path = tmp_path / "control-lora-canny-rank4.safetensors"
    save_file(state, str(path))
    lora = ModelManager("cpu").controlnet(ControlNetHandle(FileRef.of(path)))
    assert isinstance(lora, ControlLora) and lora.hint_channels == 3
    built, reference = lora.build(unet), reference_controlnet(unet, state)
    x, hint, t, context, y = _inputs(unet)
    ours, expected = built(x, hint, t, context, y), reference(x, hint, t, context, y)
    for actual, want in zip([*ours["output"], *ours["middle"]], [*expected["output"], *expected["middle"]],
                            strict=True):
        assert relative_error(actual, want) < 1e-5
    # Another UNet gives another ControlNet: the shared weights come from the sampled model.
    other = lora.build(_unet(seed=5))(x, hint, t, context, y)
    assert (other["middle"][0] - ours["middle"][0]).abs().max() > 1e-3


def test_a_control_lora_that_does_not_fit_the_model_is_refused() -> None:
    unet = _unet()
    state = control_lora_state(unet)
    state["input_blocks.9.0.in_layers.2.up"] = torch.zeros(8, RANK)
    state["input_blocks.9.0.in_layers.2.down"] = torch.zeros(RANK, 8)
    with pytest.raises(ValueError, match="no base weight"):
        ControlLora(state).build(unet)
    with pytest.raises(ValueError, match="input_hint_block"):
        ControlLora({"lora_controlnet": torch.tensor([])})


@torch.no_grad()
def test_control_function_builds_the_net_from_the_sampled_unet() -> None:
    unet = _unet()
    state = control_lora_state(unet)
    lora = ControlLora(state)
    x, hint, t, context, y = _inputs(unet)
    spec = ControlSpec(object(), hint[:1], strength=0.5)
    ms = ModelSampling.from_betas()

    class Entry:
        control = spec

    applier = control_function([[Entry()]], ms, lambda _: lora, unet.config, unet=unet)
    assert applier is not None
    residuals = applier(x[:1], t[:1], context[:1], y[:1], [Entry()])
    expected = reference_controlnet(unet, state)(x[:1], hint[:1], t[:1], context[:1], y[:1])
    assert residuals is not None
    assert relative_error(residuals["middle"][0], 0.5 * expected["middle"][0]) < 1e-5
    with pytest.raises(ValueError, match="Control-LoRA"):
        control_function([[Entry()]], ms, lambda _: lora, unet.config)
