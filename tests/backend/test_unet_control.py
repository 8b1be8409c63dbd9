"""ControlNet-style residuals in the UNet forward, dtype handling and the SDXL adm requirement."""

from __future__ import annotations

import pytest
import torch

from engine.backend.unet import UNetConfig, UNetModel

CONFIG = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    transformer_depth=(1, 1),
    transformer_depth_middle=1,
    transformer_depth_output=(1, 1, 1, 1),
    context_dim=16,
    num_heads=4,
)
# Skip tensors of CONFIG for a 16x16 latent, in input order: conv_in, res, down, res.
SKIP_SHAPES = [(32, 16, 16), (32, 16, 16), (32, 8, 8), (64, 8, 8)]


@pytest.fixture(scope="module")
def model() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(CONFIG).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 16, 16, generator=generator),
        torch.tensor([700.0, 3.0]),
        torch.randn(2, 5, 16, generator=generator),
    )


def _residuals(scale: float) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return {
        "output": [scale * torch.randn(2, *shape, generator=generator) for shape in SKIP_SHAPES],
        "middle": [scale * torch.randn(2, 64, 8, 8, generator=generator)],
    }


@torch.no_grad()
def test_zero_residuals_change_nothing(model: UNetModel) -> None:
    x, t, context = _inputs()
    plain = model(x, t, context)
    torch.testing.assert_close(model(x, t, context, control=_residuals(0.0)), plain, rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, context, control={}), plain, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("part", ["output", "middle"])
def test_residuals_change_the_output_and_lists_are_left_intact(model: UNetModel, part: str) -> None:
    x, t, context = _inputs()
    plain = model(x, t, context)
    control = {part: _residuals(1.0)[part]}
    before = [r.clone() for r in control[part]]
    controlled = model(x, t, context, control=control)
    assert (controlled - plain).abs().max() > 1e-3
    assert len(control[part]) == len(before)
    assert all(torch.equal(a, b) for a, b in zip(control[part], before, strict=True))


@torch.no_grad()
def test_residual_lists_are_consumed_from_the_end(model: UNetModel) -> None:
    # Only the last "output" entry (the deepest skip) set: the same as a list holding just that entry.
    x, t, context = _inputs()
    deepest = torch.randn(2, *SKIP_SHAPES[-1], generator=torch.Generator().manual_seed(3))
    full = [None, None, None, deepest]
    short = [deepest]
    torch.testing.assert_close(
        model(x, t, context, control={"output": full}), model(x, t, context, control={"output": short})
    )
    # Input residuals (T2I-adapter style) are added after each input block as it runs, also taken
    # from the end: the last entry goes with the first block (conv_in, 32 channels at 16x16).
    first = torch.randn(2, *SKIP_SHAPES[0], generator=torch.Generator().manual_seed(4))
    changed = model(x, t, context, control={"input": [None, first]})
    assert (changed - model(x, t, context)).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float64, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)]
)
def test_runs_in_the_parameters_dtype(model: UNetModel, dtype: torch.dtype, tolerance: float) -> None:
    x, t, context = _inputs()
    converted = UNetModel(CONFIG).eval()
    converted.load_state_dict(model.state_dict())
    converted = converted.to(dtype)
    out = converted(x, t, context)  # float32 inputs follow the weights' dtype
    assert out.dtype == dtype
    expected = model(x, t, context)
    assert float((out.float() - expected).abs().max() / expected.abs().max()) < tolerance


def test_sdxl_style_model_requires_the_adm_vector() -> None:
    config = UNetConfig(**{**CONFIG.__dict__, "adm_in_channels": 48})
    model = UNetModel(config).eval()
    x, t, context = _inputs()
    with pytest.raises(ValueError, match="sdxl_adm"):
        model(x, t, context)
    with pytest.raises(ValueError, match="context"):
        model(x, t, None, y=torch.randn(2, 48))
    assert model(x, t, context, y=torch.randn(2, 48)).shape == x.shape
