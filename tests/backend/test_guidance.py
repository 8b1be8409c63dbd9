"""Classifier-free guidance, eps / v parameterized models, inpaint masking."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.guidance import (
    CFGDenoiser,
    InpaintDenoiser,
    ParameterizedModel,
    cfg_combine,
    prepare_mask,
    repeat_to_batch,
)
from engine.backend.model_sampling import ModelSampling


class RecordingModel:
    """model_fn(x, sigma, conds): chunk k of the batch is 'denoised' to x * 0.5 + conds[k]."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], list[Any], dict[str, Any]]] = []

    def __call__(self, x: Tensor, sigma: Tensor, conds: list[Any], **kwargs: Any) -> Tensor:
        self.calls.append((tuple(x.shape), tuple(sigma.shape), list(conds), kwargs))
        chunks = x.chunk(len(conds))
        return torch.cat([chunk * 0.5 + cond for chunk, cond in zip(chunks, conds, strict=True)])


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_cfg_is_one_batched_forward(x: Tensor) -> None:
    model = RecordingModel()
    out = CFGDenoiser(model, cond=3.0, uncond=-1.0, cfg_scale=7.5)(x, torch.full((2,), 2.0))
    assert len(model.calls) == 1
    shape, sigma_shape, conds, _ = model.calls[0]
    assert shape == (4, 4, 8, 8) and sigma_shape == (4,)
    assert conds == [-1.0, 3.0]  # uncond chunk first, as ComfyUI batches them
    uncond, cond = x * 0.5 - 1.0, x * 0.5 + 3.0
    torch.testing.assert_close(out, uncond + (cond - uncond) * 7.5)


def test_cfg_one_skips_the_uncond_pass(x: Tensor) -> None:
    model = RecordingModel()
    out = CFGDenoiser(model, cond=3.0, uncond=-1.0, cfg_scale=1.0 + 1e-12)(x, torch.ones(2))
    assert len(model.calls) == 1
    assert model.calls[0][0] == (2, 4, 8, 8)
    assert model.calls[0][2] == [3.0]
    torch.testing.assert_close(out, x * 0.5 + 3.0)


def test_cfg_unbatched_gives_the_same_result(x: Tensor) -> None:
    batched, separate = RecordingModel(), RecordingModel()
    sigma = torch.ones(2)
    a = CFGDenoiser(batched, cond=1.0, uncond=0.0, cfg_scale=4.0)(x, sigma)
    b = CFGDenoiser(separate, cond=1.0, uncond=0.0, cfg_scale=4.0, batched=False)(x, sigma)
    assert len(separate.calls) == 2
    torch.testing.assert_close(a, b)


def test_cfg_passes_keyword_arguments_through(x: Tensor) -> None:
    model = RecordingModel()
    CFGDenoiser(model, cond=0.0, uncond=0.0, cfg_scale=2.0)(x, torch.ones(2), transformer_options={"a": 1})
    assert model.calls[0][3] == {"transformer_options": {"a": 1}}


def test_cfg_combine_formula() -> None:
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), torch.tensor([4.0, -5.0]))
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
def test_parameterized_model_turns_network_output_into_x0(prediction: str) -> None:
    ms = ModelSampling.from_betas(prediction)
    sigma = torch.stack([ms.sigmas[800], ms.sigmas[120]])
    s = sigma.view(2, 1, 1, 1)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x0 + s * eps
    seen: dict[str, Tensor] = {}

    def apply_model(x_in: Tensor, timestep: Tensor, conds: list[Any]) -> Tensor:
        seen["x_in"], seen["timestep"] = x_in, timestep
        return eps if prediction == "eps" else (eps - s * x0) / (1 + s**2).sqrt()

    denoised = ParameterizedModel(apply_model, ms)(x, sigma, ["c"])
    torch.testing.assert_close(denoised, x0, atol=1e-5, rtol=1e-5)
    assert seen["timestep"].dtype == torch.float32
    assert seen["timestep"].tolist() == [800.0, 120.0]
    torch.testing.assert_close(seen["x_in"], x / (s**2 + 1).sqrt())


def test_inpaint_keeps_the_unmasked_latent() -> None:
    latent = torch.full((1, 4, 4, 4), 2.0)
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 4, 4, 4)
    mask[..., :2] = 1.0  # regenerate the left half
    seen: list[Tensor] = []

    def inner(x: Tensor, sigma: Tensor) -> Tensor:
        seen.append(x)
        return torch.full_like(x, -7.0)

    sigma = torch.tensor([3.0])
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    out = InpaintDenoiser(inner, latent, mask, noise)(x, sigma)
    assert torch.equal(seen[0][..., :2], x[..., :2])
    torch.testing.assert_close(seen[0][..., 2:], latent[..., 2:] + 3.0 * noise[..., 2:])
    assert bool((out[..., :2] == -7.0).all())
    assert bool((out[..., 2:] == 2.0).all())


def test_prepare_mask_resizes_and_repeats() -> None:
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0
    prepared = prepare_mask(mask, (3, 4, 8, 8))
    assert prepared.shape == (3, 4, 8, 8)
    assert bool((prepared[..., :4] == 0).all()) and bool((prepared[..., 4:] == 1).all())
    assert torch.equal(prepared[0], prepared[2])
    assert prepare_mask(torch.ones(8, 8), (1, 4, 8, 8)).shape == (1, 4, 8, 8)


def test_repeat_to_batch() -> None:
    t = torch.arange(2.0).reshape(2, 1)
    assert repeat_to_batch(t, 5).flatten().tolist() == [0, 1, 0, 1, 0]
    assert repeat_to_batch(t, 1).flatten().tolist() == [0]
    assert repeat_to_batch(t, 2) is t
