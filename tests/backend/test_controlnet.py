"""ControlNet: numerical equivalence with diffusers' ControlNetModel (an independent implementation) on
tiny random models, loading both file layouts through the ModelManager, training from a UNet, and
the sampling semantics (strength, window, chaining, mixed batches, legacy uncond sharing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.conditioning import CondSpec, UNetApply
from engine.backend.control_apply import ControlSpec, control_function, fit_hint, share_with_uncond
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.guidance import CFGDenoiser, ParameterizedModel
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.preprocess import canny
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetConfig, UNetModel
from engine.models.controlnet_convert import controlnet_state_to_ldm
from engine.models.handles import ControlNetHandle, FileRef
from engine.models.loaders import UnsupportedModel
from engine.models.manager import ModelManager
from tests.backend.conftest import randomize_norms, relative_error

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4

SD1_LIKE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,  # 8 heads: what the shapes-only inference picks for these widths
    "norm_num_groups": 32,
}
POOLED = 32
SDXL_LIKE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2),
    "cross_attention_dim": 48,
    "attention_head_dim": (1, 1),  # one 64-wide head: what the inference picks for linear layouts
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": POOLED + 6 * 256,
    "norm_num_groups": 32,
}


def _reference(kwargs: dict[str, Any]) -> Any:
    """A seeded diffusers ControlNet whose zero-initialised convs and norms get random values too."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = diffusers.ControlNetModel(**kwargs).eval()
    randomize_norms(model, generator)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.")):
                fan_in = max(1, parameter[0].numel()) if parameter.ndim > 1 else 1
                scale = fan_in**-0.5 if parameter.ndim > 1 else 0.1
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def _inputs(batch: int, context_dim: int, size: int = 8) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=generator)
    hint = torch.rand(batch, 3, size * 8, size * 8, generator=generator)
    context = torch.randn(batch, 7, context_dim, generator=generator)
    return x, hint, torch.tensor([999.0, 17.0, 0.0][:batch]), context


def _sdxl_extra(batch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from engine.backend.unet import sdxl_adm

    pooled = torch.randn(batch, POOLED, generator=torch.Generator().manual_seed(2))
    time_ids = torch.tensor([[1024.0, 768.0, 0.0, 0.0, 1024.0, 768.0]] * batch)
    return {"text_embeds": pooled, "time_ids": time_ids}, sdxl_adm(pooled, width=768, height=1024)


def _assert_matches(ours: dict[str, list[torch.Tensor]], down: tuple[torch.Tensor, ...], mid: torch.Tensor) -> None:
    assert len(ours["output"]) == len(down) and len(ours["middle"]) == 1
    for actual, expected in zip(ours["output"], down, strict=True):
        assert actual.shape == expected.shape
        assert relative_error(actual, expected) < TOLERANCE
    assert relative_error(ours["middle"][0], mid) < TOLERANCE


def _loaded(state: dict[str, torch.Tensor]) -> ControlNet:
    weights = controlnet_state_to_ldm(state)
    model = ControlNet(ControlNetConfig.from_state_dict(weights)).eval()
    model.load_state_dict(weights, strict=True)
    return model


@torch.no_grad()
def test_sd1_like_controlnet_residuals_match_diffusers() -> None:
    reference = _reference(SD1_LIKE)
    model = _loaded(reference.state_dict())
    assert model.config.hint_channels == 3 and model.config.family == "sd1"
    assert len(model.zero_convs) == 6  # conv_in, 2 res, down, 2 res
    x, hint, t, context = _inputs(2, 32)
    down, mid = reference(x, t, context, hint, return_dict=False)
    _assert_matches(model(x, hint, t, context), down, mid)


@torch.no_grad()
def test_sdxl_like_controlnet_residuals_match_diffusers_text_time() -> None:
    reference = _reference(SDXL_LIKE)
    model = _loaded(reference.state_dict())
    assert model.config.unet.adm_in_channels == POOLED + 6 * 256
    assert model.config.unet.transformer_depth == (0, 2) and model.config.family == "sdxl"
    x, hint, t, context = _inputs(2, 48)
    added, y = _sdxl_extra(2)
    down, mid = reference(x, t, context, hint, added_cond_kwargs=added, return_dict=False)
    _assert_matches(model(x, hint, t, context, y=y), down, mid)


@pytest.mark.parametrize("layout", ["diffusers", "ldm", "bare-ldm-pth"])
@torch.no_grad()
def test_files_in_every_layout_load_through_the_model_manager(tmp_path: Path, layout: str) -> None:
    reference = _reference(SD1_LIKE)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if layout == "diffusers":
        path = tmp_path / "cn.safetensors"
        save_file(state, str(path))
    elif layout == "ldm":
        path = tmp_path / "cn.safetensors"
        # lllyasviel's 1.0 files also hold the SD model beside control_model.: it must be skipped.
        extra = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
        save_file({"control_model." + k: v for k, v in controlnet_state_to_ldm(state).items()} | extra, str(path))
    else:
        path = tmp_path / "cn.pth"
        torch.save(controlnet_state_to_ldm(state), str(path))
    manager = ModelManager("cpu")
    handle = ControlNetHandle(FileRef.of(path))
    model = manager.controlnet(handle)
    assert manager.controlnet(handle) is model  # kept (LRU), not reloaded
    assert not any(p.requires_grad for p in model.parameters())
    x, hint, t, context = _inputs(2, 32)
    down, mid = reference(x, t, context, hint, return_dict=False)
    _assert_matches(model(x, hint, t, context), down, mid)


def test_unsupported_controlnet_files_are_refused_saying_what_they_are(tmp_path: Path) -> None:
    manager = ModelManager("cpu")
    cases = {
        "diff.safetensors": ({"difference": torch.zeros(1), "control_model.zero_convs.0.0.weight": torch.zeros(1)},
                             "difference"),
        "adapter.safetensors": ({"body.0.in_conv.weight": torch.zeros(1)}, "T2I-Adapter"),
        "lora.safetensors": ({"lora_controlnet": torch.zeros(1), "input_blocks.0.0.weight": torch.zeros(1)},
                             "Control-LoRA"),
        "other.safetensors": ({"foo.weight": torch.zeros(1)}, "not a ControlNet"),
    }
    for name, (state, words) in cases.items():
        save_file(state, str(tmp_path / name))
        with pytest.raises(UnsupportedModel, match=words) as info:
            manager.controlnet(ControlNetHandle(FileRef.of(tmp_path / name)))
        assert name in str(info.value)


# --------------------------------------------------------------------------------------------- tiny models

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=16, num_heads=4)


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(TINY).eval().requires_grad_(False)


def _net(seed: int, unet: UNetModel | None = None, config: UNetConfig = TINY) -> ControlNet:
    """A ControlNet with every weight random (nothing zero), so it visibly changes the UNet's output."""
    torch.manual_seed(seed)
    net = ControlNet(ControlNetConfig(config)).eval().requires_grad_(False)
    with torch.no_grad():
        for module in [*net.zero_convs, net.middle_block_out]:
            module[0].weight.normal_(0, 0.2)
    return net


def _hint(seed: int, size: int = 64) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _conds(control: ControlSpec | None, negative_control: ControlSpec | None = None) -> tuple[list[CondSpec], ...]:
    generator = torch.Generator().manual_seed(5)
    cond = CondSpec(torch.randn(1, 5, 16, generator=generator), control=control)
    uncond = CondSpec(torch.randn(1, 5, 16, generator=generator), control=negative_control)
    return [cond], [uncond]


def _sample(unet: UNetModel, control: ControlSpec | None, negative_control: ControlSpec | None = None,
            steps: int = 4) -> torch.Tensor:
    ms = ModelSampling.from_betas()
    pos, neg = _conds(control, negative_control)
    control_fn = control_function([pos, neg], ms, lambda handle: handle, unet.config)
    denoiser = CFGDenoiser(ParameterizedModel(UNetApply(unet, control_fn), ms), pos, neg, 5.0)
    sigmas = sigmas_for(ms, "normal", "euler", steps)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        return ksample(denoiser, ms, "euler", sigmas, noise, torch.zeros_like(noise), seed=3)


def test_strength_zero_and_a_window_outside_the_run_change_nothing(unet: UNetModel) -> None:
    net = _net(1)
    plain = _sample(unet, None)
    steered = _sample(unet, ControlSpec(net, _hint(0), 1.0))
    assert (steered - plain).abs().max() > 1e-3  # the net does act
    assert torch.equal(_sample(unet, ControlSpec(net, _hint(0), 0.0)), plain)
    for start, end in ((1.0, 1.0), (0.0, 0.0)):  # only after the last step / only before the first
        assert torch.equal(_sample(unet, ControlSpec(net, _hint(0), 1.0, start, end)), plain)


@torch.no_grad()
def test_the_window_selects_steps_by_sigma(unet: UNetModel) -> None:
    ms = ModelSampling.from_betas()
    spec = ControlSpec(_net(1), _hint(0), 1.0, 0.0, 0.5)
    pos, _ = _conds(spec)
    applier = control_function([pos], ms, lambda handle: handle)
    assert applier is not None
    x, context = torch.randn(1, 4, 8, 8), pos[0].context
    assert applier(x, torch.tensor([999.0]), context, None, pos) is not None  # start of the diffusion
    assert applier(x, torch.tensor([600.0]), context, None, pos) is not None
    assert applier(x, torch.tensor([400.0]), context, None, pos) is None  # past the middle: off
    assert applier(x, torch.tensor([0.0]), context, None, pos) is None


@torch.no_grad()
def test_chained_nets_add_their_scaled_residuals(unet: UNetModel) -> None:
    first, second = _net(1), _net(2)
    hint_a, hint_b = _hint(0), _hint(1, size=32)  # the second hint is resized to the latent x 8
    chained = ControlSpec(second, hint_b, 1.3, previous=ControlSpec(first, hint_a, 0.7))
    pos, _ = _conds(chained)
    applier = control_function([pos], ModelSampling.from_betas(), lambda handle: handle)
    assert applier is not None
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), pos[0].context.expand(2, -1, -1)
    out = applier(x, t, context, None, [pos[0], pos[0]])
    assert out is not None
    a = first(x, hint_a.expand(2, -1, -1, -1), t, context)
    b = second(x, fit_hint(hint_b, 64, 64).expand(2, -1, -1, -1), t, context)
    for key in ("output", "middle"):
        for actual, ra, rb in zip(out[key], a[key], b[key], strict=True):
            torch.testing.assert_close(actual, 0.7 * ra + 1.3 * rb)


@torch.no_grad()
def test_global_average_pooling_makes_residuals_uniform_over_the_image() -> None:
    net = _net(1)
    spec = ControlSpec(net, _hint(0), 1.0, global_average_pooling=True)
    pos, _ = _conds(spec)
    applier = control_function([pos], ModelSampling.from_betas(), lambda handle: handle)
    assert applier is not None
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    out = applier(x, t, pos[0].context, None, pos)
    assert out is not None
    plain = net(x, _hint(0), t, pos[0].context)
    for pooled, full in zip(out["output"], plain["output"], strict=True):
        torch.testing.assert_close(pooled, full.mean(dim=(2, 3), keepdim=True))


@torch.no_grad()
def test_a_batch_mixing_controlled_and_plain_entries_equals_separate_runs(unet: UNetModel) -> None:
    net = _net(1)
    spec = ControlSpec(net, _hint(0), 0.8)
    pos, neg = _conds(spec, None)  # ControlNetApply on the positive only, cfg batch [uncond, cond]
    apply = UNetApply(unet, control_function([pos, neg], ModelSampling.from_betas(), lambda h: h, unet.config))
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([700.0] * 4)
    batched = apply(x, t, [neg, pos])
    alone_neg = UNetApply(unet)(x[:2], t[:2], [neg])
    control = control_function([pos], ModelSampling.from_betas(), lambda h: h)
    alone_pos = UNetApply(unet, control)(x[2:], t[2:], [pos])
    torch.testing.assert_close(batched[:2], alone_neg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[2:], alone_pos, rtol=1e-5, atol=1e-5)
    assert (alone_pos - UNetApply(unet)(x[2:], t[2:], [pos])).abs().max() > 1e-3


def test_from_unet_starts_as_a_no_op_and_trains(unet: UNetModel) -> None:
    net = ControlNet.from_unet(unet)
    assert net.training and all(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(net.input_blocks[1][0].in_layers[2].weight, unet.input_blocks[1][0].in_layers[2].weight)
    x, hint, t = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64), torch.tensor([300.0, 20.0])
    context = torch.randn(2, 5, 16)
    residuals = net(x, hint, t, context)
    assert all(not r.any() for r in [*residuals["output"], *residuals["middle"]])
    target = torch.randn(2, 4, 8, 8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = torch.nn.functional.mse_loss(unet(x, t, context, control=net(x, hint, t, context)), target)
    loss.backward()
    assert net.zero_convs[0][0].weight.grad is not None and net.zero_convs[0][0].weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        after = net(x, hint, t, context)
    assert any(r.abs().max() > 0 for r in after["output"])
    assert not any(p.requires_grad for p in unet.parameters())


def test_a_controlnet_for_another_model_is_refused_before_sampling(unet: UNetModel) -> None:
    other = dataclasses.replace(TINY, context_dim=32)
    spec = ControlSpec(_net(1, config=other), _hint(0))
    pos, _ = _conds(spec)
    with pytest.raises(ValueError, match="text conditioning is 32 wide, the model's 16"):
        control_function([pos], ModelSampling.from_betas(), lambda h: h, unet.config)


def test_hints_are_centre_cropped_and_resized_nearest_exact() -> None:
    wide = torch.zeros(1, 1, 4, 12)
    wide[..., 4:8] = 1.0  # the middle third
    fitted = fit_hint(wide, 8, 8)
    assert fitted.shape == (1, 1, 8, 8) and bool((fitted == 1).all())
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(fit_hint(image, 8, 8)[0, 0, ::2, ::2], image[0, 0])


def test_legacy_apply_shares_positive_controls_with_the_negative() -> None:
    spec = ControlSpec(object(), torch.zeros(1, 3, 8, 8))
    embedding = torch.zeros(1, 2, 4)
    positive = [[embedding, {"control": spec, "control_apply_to_uncond": True}]]
    negative = [[embedding, {"pooled_output": 1}], [embedding, {"area": (1, 1, 0, 0)}]]
    shared = share_with_uncond(positive, negative)
    assert shared[0][1] == {"pooled_output": 1, "control": spec}
    assert "control" not in shared[1][1] and "control" not in negative[0][1]  # areas and inputs untouched
    advanced = [[embedding, {"control": spec, "control_apply_to_uncond": False}]]
    assert "control" not in share_with_uncond(advanced, negative)[0][1]
    two = positive + [[embedding, {"control": ControlSpec(object(), spec.hint), "control_apply_to_uncond": True}]]
    assert len(share_with_uncond(two, negative[:1])) == 2  # a copy of the negative carries the second


def test_canny_finds_the_outline_of_a_square_and_not_its_interior() -> None:
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 16:48, 16:48] = 1.0
    edges = canny(image, 0.4, 0.8)[0, 0]  # ComfyUI's defaults
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    assert not edges[20:44, 20:44].any()  # interior
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[12:52, 12:52] = False
    assert not edges[outside].any()
    for side in (edges[14:18, 20:44], edges[46:50, 20:44], edges[20:44, 14:18], edges[20:44, 46:50]):
        assert bool(side.any(dim=0 if side.shape[0] == 4 else 1).all())  # every row/column of each side
        assert side.sum() <= 2 * 24  # thin: at most two pixels across


def test_canny_hysteresis_follows_weak_edges_from_strong_ones_only() -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[..., 16:32, :] = torch.linspace(1.0, 0.1, 64)  # a band whose edges fade from strong to weak
    image[..., 44:56, 20:44] = 0.2  # a faint square on its own: weak edges everywhere
    edges = canny(image, 0.4, 0.8)[0, 0]
    strong_only = canny(image, 0.8, 0.8)[0, 0]
    assert bool(edges[14:18, :56].amax(dim=0).all())  # the edge is followed while it is above 0.4 ...
    assert not strong_only[14:18, 52:56].any()  # ... also where it is below 0.8
    assert not edges[40:60].any()  # isolated weak edges are dropped
