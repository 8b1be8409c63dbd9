"""Union ControlNets (ControlNet++ / ProMax): residuals equal diffusers' ControlNetUnionModel (an
independent implementation) on a tiny random SDXL-like net, for files in xinsir's diffusers layout and
in the LDM layout, loaded through the ModelManager; the control type changes the residuals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.controlnet_union import UNION_TYPES, UnionControlNet, union_type_index
from engine.models.controlnet_convert import controlnet_state_to_ldm
from engine.models.handles import ControlNetHandle, FileRef
from engine.models.manager import ModelManager
from tests.backend.conftest import randomize_norms, relative_error
from tests.backend.test_controlnet import POOLED, SDXL_LIKE, TOLERANCE, _inputs, _sdxl_extra

diffusers = pytest.importorskip("diffusers")
union_module = pytest.importorskip("diffusers.models.controlnets.controlnet_union")

UNION_LIKE: dict[str, Any] = {
    **SDXL_LIKE,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),  # xinsir's (and every LDM ControlNet's) hint widths
    "num_control_type": 8,  # ProMax
    "num_trans_channel": 32,
    "num_trans_head": 8,
    "num_trans_layer": 1,
    "num_proj_channel": 32,
}


def _reference() -> Any:
    """A seeded diffusers union ControlNet; zero-initialised parts get random values too."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = union_module.ControlNetUnionModel(**UNION_LIKE).eval()
    randomize_norms(model, generator)
    zeroed = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.", "spatial_ch_projs.")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(zeroed):
                fan_in = max(1, parameter[0].numel()) if parameter.ndim > 1 else 1
                scale = fan_in**-0.5 if parameter.ndim > 1 else 0.1
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def _reference_residuals(reference: Any, control_type: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    x, hint, t, context = _inputs(1, 48)
    added, _ = _sdxl_extra(1)
    one_hot = torch.zeros(1, UNION_LIKE["num_control_type"])
    one_hot[0, control_type] = 1.0
    down, mid = reference(x, t, context, controlnet_cond=[hint], control_type=one_hot, control_type_idx=[control_type],
                          conditioning_scale=[1.0], added_cond_kwargs=added, return_dict=False)
    return down, mid


def _ours(model: UnionControlNet, control_type: int | None) -> dict[str, list[torch.Tensor]]:
    x, hint, t, context = _inputs(1, 48)
    _, y = _sdxl_extra(1)
    return model(x, hint, t, context, y=y, control_type=control_type)


def _ldm_file_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state in the LDM layout ComfyUI converts union nets to: LDM names, ``attn.in_proj.weight``."""
    return {"control_model." + k.replace("attn.in_proj_", "attn.in_proj."): v
            for k, v in controlnet_state_to_ldm(state).items()}


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
@torch.no_grad()
def test_union_residuals_match_diffusers_for_each_layout(tmp_path: Path, layout: str) -> None:
    reference = _reference()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / "union.safetensors"
    save_file(state if layout == "diffusers" else _ldm_file_state(state), str(path))
    model = ModelManager("cpu").controlnet(ControlNetHandle(FileRef.of(path)))
    assert isinstance(model, UnionControlNet)
    assert model.union.num_control_type == 8 and model.union.type_dim == 256 and model.union.layers == 1
    assert model.config.unet.adm_in_channels == POOLED + 6 * 256
    for control_type in (UNION_TYPES["depth"], UNION_TYPES["canny/lineart/anime_lineart/mlsd"]):
        down, mid = _reference_residuals(reference, control_type)
        ours = _ours(model, control_type)
        assert len(ours["output"]) == len(down)
        for actual, expected in zip(ours["output"], down, strict=True):
            assert actual.shape == expected.shape
            assert relative_error(actual, expected) < TOLERANCE
        assert relative_error(ours["middle"][0], mid) < TOLERANCE


@torch.no_grad()
def test_the_control_type_changes_the_residuals_and_unknown_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "union.safetensors"
    save_file({k: v.contiguous() for k, v in _reference().state_dict().items()}, str(path))
    model = ModelManager("cpu").controlnet(ControlNetHandle(FileRef.of(path)))
    assert isinstance(model, UnionControlNet)
    auto, depth, canny = (_ours(model, t)["output"][0] for t in (None, 1, 3))
    assert (auto - depth).abs().max() > 1e-3 and (depth - canny).abs().max() > 1e-3
    with pytest.raises(ValueError, match="8 control types"):
        _ours(model, 9)
    assert union_type_index("auto") is None and union_type_index("tile") == 6
    with pytest.raises(ValueError, match="unknown union ControlNet type"):
        union_type_index("pose")
