"""SD3 and Flux ControlNets: numerical equivalence of Loom's nets (engine/backend/mmdit_controlnet.py,
flux_controlnet.py) loaded from real files with diffusers' SD3ControlNetModel / FluxControlNetModel (independent
implementations) on tiny random models in fp32, the spacing of their residuals over the sampled model's blocks,
recognising the files, and refusing the kinds Loom does not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.backend.flux import image_ids, patchify
from engine.backend.flux_controlnet import FluxControlNet
from engine.backend.mmdit_controlnet import SD3ControlNet, spread_residuals
from engine.models.control_models import describe_control_file
from engine.models.flow_controlnet_load import load_flow_controlnet
from engine.models.handles import ControlNetHandle, FileRef
from engine.models.loaders import UnsupportedModel
from engine.models.manager import ModelManager
from tests.backend.conftest import relative_error
from tests.backend.flow_controlnet_files import flux_controlnet, sd3_controlnet, write_diffusers, write_xlabs

TOLERANCE = 1e-4
CPU, F32 = torch.device("cpu"), torch.float32


def _same(actual: list[Tensor | None], expected: list[Tensor]) -> None:
    assert len(actual) == len(expected)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine is not None
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def _close(actual: list[Tensor], expected: list[Tensor] | tuple[Tensor, ...]) -> None:
    assert len(actual) == len(expected)
    for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert mine.shape == theirs.shape
        error = relative_error(mine, theirs)
        assert error < TOLERANCE, f"block {index}: relative error {error:.2e}"


@pytest.mark.parametrize("extra", [{}, {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}],
                         ids=["sd3", "sd35-qk-norm-dual-attention"])
@torch.no_grad()
def test_sd3_controlnet_matches_diffusers(tmp_path: Path, extra: dict[str, Any]) -> None:
    reference = sd3_controlnet(seed=1, layers=2, **extra)
    path = write_diffusers(reference, tmp_path / "sd3-controlnet.safetensors")
    net = ModelManager("cpu").controlnet(ControlNetHandle(FileRef.of(path)))
    assert isinstance(net, SD3ControlNet)
    kind = "SD3.5" if extra else "SD3"
    assert describe_control_file(path) == f"an {kind} ControlNet (2 blocks, hidden 128, 16-channel hint)"

    generator = torch.Generator().manual_seed(2)
    x, hint = torch.randn(2, 16, 8, 10, generator=generator), torch.randn(2, 16, 8, 10, generator=generator)
    context = torch.randn(2, 6, 32, generator=generator)
    t = torch.tensor([800.0, 125.0])
    expected = reference(hidden_states=x, controlnet_cond=hint, encoder_hidden_states=context,
                         pooled_projections=torch.zeros(2, 48), timestep=t).controlnet_block_samples
    _close(net.block_outputs(x, hint, t, context), expected)


def test_sd3_residuals_spread_over_the_models_blocks_as_comfyui() -> None:
    """Each of N outputs feeds depth // N consecutive joint blocks, the last one block fewer."""
    outputs = [torch.full((1,), float(i)) for i in range(3)]
    assert [float(t[0]) for t in spread_residuals(outputs, 6) if t is not None] == [0, 0, 1, 1, 2]
    assert [float(t[0]) for t in spread_residuals(outputs, 7) if t is not None] == [0, 0, 1, 1, 2]
    assert [float(t[0]) for t in spread_residuals(outputs, 9) if t is not None] == [0, 0, 0, 1, 1, 1, 2, 2]


def _flux_inputs(batch: int, rows: int, cols: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(4)
    return {"x": torch.randn(batch, 16, 2 * rows, 2 * cols, generator=generator),
            "hint": torch.randn(batch, 16, 2 * rows, 2 * cols, generator=generator),
            "context": torch.randn(batch, 5, 32, generator=generator),
            "y": torch.randn(batch, 24, generator=generator),
            "t": torch.tensor([0.7, 0.2])[:batch], "guidance": torch.tensor([3.5, 2.0])[:batch]}


def _diffusers_flux(reference: Any, inputs: dict[str, Tensor], cond: Tensor, mode: int | None = None) -> Any:
    x = inputs["x"]
    batch, rows, cols = x.shape[0], x.shape[2] // 2, x.shape[3] // 2
    return reference(hidden_states=patchify(x), controlnet_cond=cond, encoder_hidden_states=inputs["context"],
                     pooled_projections=inputs["y"], timestep=inputs["t"], guidance=inputs["guidance"],
                     img_ids=image_ids(1, rows, cols)[0], txt_ids=torch.zeros(inputs["context"].shape[1], 3),
                     controlnet_mode=None if mode is None else torch.full((batch, 1), mode))


@pytest.mark.parametrize("modes", [None, 5], ids=["instantx", "instantx-union"])
@torch.no_grad()
def test_instantx_flux_controlnet_matches_diffusers(tmp_path: Path, modes: int | None) -> None:
    reference = flux_controlnet(seed=3, layers=2, singles=3, num_mode=modes)
    path = write_diffusers(reference, tmp_path / "flux-instantx.safetensors")
    net = load_flow_controlnet(path, device=CPU, dtype=F32)
    assert isinstance(net, FluxControlNet) and net.config.union_modes == (modes or 0)
    assert describe_control_file(path).startswith("an InstantX union Flux ControlNet" if modes
                                                  else "an InstantX Flux ControlNet (2 double, 3 single blocks")
    inputs = _flux_inputs(2, 3, 4)
    expected = _diffusers_flux(reference, inputs, patchify(inputs["hint"]), 2 if modes else None)
    doubles, singles = net.block_outputs(inputs["x"], inputs["hint"], inputs["t"], inputs["context"], inputs["y"],
                                         inputs["guidance"], control_type=2 if modes else None)
    _close(doubles, expected.controlnet_block_samples)
    _close(singles, expected.controlnet_single_block_samples)
    spread = net(inputs["x"], inputs["hint"], inputs["t"], inputs["context"], inputs["y"], inputs["guidance"],
                 main_depth=5, main_single=7, control_type=2 if modes else None)
    _same(spread["double"], [doubles[i] for i in (0, 0, 0, 1, 1)])  # runs of ceil(5 / 2)
    _same(spread["single"], [singles[i] for i in (0, 0, 0, 1, 1, 1, 2)])  # runs of ceil(7 / 3)
    if modes:
        with pytest.raises(ValueError, match="knows 5 modes; type index 7"):
            net.block_outputs(inputs["x"], inputs["hint"], inputs["t"], inputs["context"], inputs["y"],
                              inputs["guidance"], control_type=7)


@torch.no_grad()
def test_xlabs_flux_controlnet_matches_diffusers(tmp_path: Path) -> None:
    reference = flux_controlnet(seed=5, layers=2, singles=0, conditioning_embedding_channels=16, patch_size=2)
    path = write_xlabs(reference, tmp_path / "flux-xlabs.safetensors")
    net = load_flow_controlnet(path, device=CPU, dtype=F32)
    assert isinstance(net, FluxControlNet) and net.hint_format is None
    assert describe_control_file(path) == "an XLabs Flux ControlNet (2 double, 0 single blocks, hidden 64)"
    inputs = _flux_inputs(2, 2, 3)
    pixels = torch.rand(2, 3, 8 * inputs["x"].shape[2], 8 * inputs["x"].shape[3],
                        generator=torch.Generator().manual_seed(6))
    expected = _diffusers_flux(reference, inputs, pixels * 2 - 1)
    doubles, singles = net.block_outputs(inputs["x"], pixels, inputs["t"], inputs["context"], inputs["y"],
                                         inputs["guidance"])
    _close(doubles, expected.controlnet_block_samples)
    assert singles == []
    spread = net(inputs["x"], pixels, inputs["t"], inputs["context"], inputs["y"], inputs["guidance"],
                 main_depth=5, main_single=4)
    assert set(spread) == {"double"}  # no single blocks: the model's get nothing
    _same(spread["double"], [doubles[i] for i in (0, 1, 0, 1, 0)])  # XLabs' residuals cycle


def test_unsupported_transformer_controlnets_are_refused_by_name(tmp_path: Path) -> None:
    stability = tmp_path / "sd3.5_large_controlnet_canny.safetensors"
    save_file({"controlnet_blocks.0.weight": torch.zeros(2, 2), "pos_embed_input.proj.weight": torch.zeros(2, 16, 2, 2),
               "transformer_blocks.0.adaLN_modulation.1.bias": torch.zeros(2)}, str(stability))
    with pytest.raises(UnsupportedModel, match="Stability's SD3.5 ControlNets"):
        describe_control_file(stability)
    mistoline = tmp_path / "mistoline_flux.safetensors"
    save_file({"controlnet_blocks.0.linear.weight": torch.zeros(2, 2)}, str(mistoline))
    with pytest.raises(UnsupportedModel, match="Mistoline"):
        describe_control_file(mistoline)


def test_truncated_sd3_controlnet_is_refused(tmp_path: Path) -> None:
    state = dict(sd3_controlnet(seed=8).state_dict())
    del state["transformer_blocks.1.ff.net.2.weight"]
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(UnsupportedModel, match="broken.safetensors: not a complete ControlNet.*weights missing"):
        describe_control_file(path)
