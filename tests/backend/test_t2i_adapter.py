"""T2I-Adapter parity with diffusers' T2IAdapter (full, light and SDXL full) on tiny configs: the test
renames diffusers' weights into the original file layout, our loader reads that file, and every stage's
features agree within 1e-5; the UNet placement of the features follows ComfyUI's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.t2i_adapter import T2IAdapter, T2IAdapterConfig, adapter_problem
from engine.backend.unet import UNetConfig
from engine.models.t2i_adapter_load import is_t2i_adapter, load_t2i_adapter

diffusers = pytest.importorskip("diffusers")


def _original_layout(state: dict[str, torch.Tensor], light: bool) -> dict[str, torch.Tensor]:
    """diffusers' adapter weights under the original (TencentARC) names, renamed by hand here."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body" and light:
            if parts[2] == "resnets":
                parts[2] = "body"
        elif parts[0] == "body":
            stage = int(parts[1])
            if parts[2] == "resnets":
                parts = ["body", str(2 * stage + int(parts[3])), *parts[4:]]
            else:  # in_conv of the stage's first block
                parts = ["body", str(2 * stage), *parts[2:]]
        out[".".join(parts)] = value.contiguous()
    return out


def _compare(tmp_path: Path, adapter_type: str, channels: list[int], factor: int, size: int,
             original: bool = True) -> T2IAdapter:
    torch.manual_seed(0)
    reference = diffusers.T2IAdapter(in_channels=3, channels=channels, num_res_blocks=2,
                                     downscale_factor=factor, adapter_type=adapter_type).eval()
    state = reference.state_dict()
    if original:
        state = _original_layout(state, adapter_type == "light_adapter")
    path = tmp_path / "adapter.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert is_t2i_adapter(state)
    ours = load_t2i_adapter(path, device=torch.device("cpu"), dtype=torch.float32)
    hint = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = reference(hint)
        got = ours(hint)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return ours


def test_full_adapter_matches_diffusers(tmp_path: Path) -> None:
    ours = _compare(tmp_path, "full_adapter", [8, 16, 32, 32], 8, 64)
    assert ours.config.kind == "full" and not ours.config.xl and ours.config.channels == (8, 16, 32, 32)


def test_full_adapter_in_diffusers_layout_loads_too(tmp_path: Path) -> None:
    _compare(tmp_path, "full_adapter", [8, 16, 32, 32], 8, 64, original=False)


def test_light_adapter_matches_diffusers(tmp_path: Path) -> None:
    ours = _compare(tmp_path, "light_adapter", [8, 16, 32], 8, 64)
    assert ours.config.kind == "light" and ours.config.channels == (8, 16, 32, 32)


def test_sdxl_full_adapter_matches_diffusers(tmp_path: Path) -> None:
    ours = _compare(tmp_path, "full_adapter_xl", [8, 16, 32, 32], 16, 64)
    assert ours.config.xl and ours.config.unshuffle == 16 and ours.config.hint_channels == 3


def test_features_go_where_comfyui_adds_them() -> None:
    features = [torch.full((1, 1, 1, 1), float(i)) for i in range(4)]
    sd1 = T2IAdapter(T2IAdapterConfig("light", 192, (8, 16, 32, 32), 1))
    inputs = sd1.residuals(features)["input"][::-1]  # in block order
    assert [None if t is None else int(t.item()) for t in inputs] == [None, None, 0, None, None, 1,
                                                                         None, None, 2, None, None, 3]
    xl = T2IAdapter(T2IAdapterConfig("full", 768, (8, 16, 32, 32), 2, xl=True))
    out = xl.residuals(features)
    placed = [None if t is None else int(t.item()) for t in out["input"][::-1]]
    assert placed == [None, None, None, 0, None, 1, None, None, 2] and out["middle"][0].item() == 3
    one_block = sd1.residuals(features[:2], num_res_blocks=1)["input"][::-1]
    assert [None if t is None else int(t.item()) for t in one_block] == [None, 0, None, 1]


def test_adapter_problem_names_mismatched_widths() -> None:
    sd1 = UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), context_dim=16)
    config = T2IAdapterConfig("full", 192, (32, 64, 128, 128), 2)
    assert adapter_problem(config, sd1) is None
    wide = T2IAdapterConfig("full", 192, (64, 128, 256, 256), 2)
    assert "[64, 128, 256, 256]" in str(adapter_problem(wide, sd1))
    xl_adapter = T2IAdapterConfig("full", 768, (32, 64, 128, 128), 2, xl=True)
    assert "SD1.x/SD2.x" in str(adapter_problem(xl_adapter, sd1))


def test_light_adapter_in_diffusers_layout_loads_too(tmp_path: Path) -> None:
    _compare(tmp_path, "light_adapter", [8, 16, 32], 8, 64, original=False)


def test_applier_scales_features_and_leaves_entries_without_control_alone() -> None:
    from types import SimpleNamespace

    from engine.backend.control_apply import ControlSpec, control_function
    from engine.backend.model_sampling import model_sampling_for

    torch.manual_seed(0)
    adapter = T2IAdapter(T2IAdapterConfig("light", 192, (32, 64), 1)).eval()
    unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), context_dim=16,
                      transformer_depth=(0, 0), transformer_depth_output=(0, 0, 0, 0), transformer_depth_middle=0)
    hint = torch.rand(1, 3, 40, 64)
    spec = ControlSpec(adapter, hint, strength=0.5)
    conds = [[SimpleNamespace(control=spec), SimpleNamespace(control=None)]]
    sampling = model_sampling_for("eps")
    applier = control_function(conds, sampling, lambda handle: handle, unet)
    assert applier is not None
    x = torch.randn(2, 4, 8, 8)
    out = applier(x, torch.tensor([500, 500]), None, None, conds[0])
    assert out is not None and set(out) == {"input"}
    blocks = out["input"][::-1]  # block order: conv, level-0 block (stage 0), downsample, level-1 block
    assert blocks[0] is None and blocks[2] is None
    with torch.no_grad():
        fitted = torch.nn.functional.interpolate(hint[..., :, 12:52], size=(64, 64), mode="nearest-exact")
        expected = adapter(fitted)
    for block, feature in ((blocks[1], expected[0]), (blocks[3], expected[1])):
        assert block is not None and block.shape[0] == 2
        torch.testing.assert_close(block[0], 0.5 * feature[0])
        assert torch.count_nonzero(block[1]) == 0  # the entry without control gets nothing added
