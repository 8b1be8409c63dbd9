"""The add-on trainers write files Loom reads as what they are: the LoRA trainer's kohya file patches the
UNet exactly as its training adapters computed, the ControlNet trainer's file loads through the
ModelManager with the same residuals; and the layout phase's pieces do what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.models.handles import ControlNetHandle, FileRef, WeightPatch
from engine.models.manager import ModelManager
from engine.models.patching import LoraPatcher
from tools import eval_tiny_addons, train_tiny_controlnet, train_tiny_lora, train_tiny_shapes
from tools.tiny_shapes_data import ShapeSpec, caption, edge_map
from tools.train_tiny_controlnet import PREFIX
from tools.train_tiny_lora import attach_adapters, kohya_state
from tools.train_tiny_shapes import UNET_CONFIG, NoiseObjective, PositionProbe, build_models


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    _, model, _ = build_models(seed=0, device=torch.device("cpu"))
    with torch.no_grad():  # untrained UNets have zeroed output layers: give every weight a value
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 700.0]),
            torch.randn(2, 77, UNET_CONFIG.context_dim, generator=g))


def test_lora_trainer_file_patches_the_unet_like_its_adapters(unet: torch.nn.Module, tmp_path: Path) -> None:
    x, t, context = _inputs()
    with torch.no_grad():
        plain = unet(x, t, context)
    adapted = type(unet)(UNET_CONFIG)
    adapted.load_state_dict(unet.state_dict())
    adapters = attach_adapters(adapted.eval(), rank=4)
    assert len(adapters) == 66  # attention, feed-forward and the ResBlocks' 3x3 convs
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.up.weight.normal_(0, 0.5)
        expected = adapted(x, t, context)
    path = tmp_path / "lora.safetensors"
    state = kohya_state(adapters)
    assert all(key.startswith("lora_unet_") for key in state)
    assert any("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in key for key in state)
    save_file(state, str(path))
    patcher = LoraPatcher()
    patcher.apply(unet, [WeightPatch(FileRef.of(path), 1.0)], "SD1.x")
    try:
        with torch.no_grad():
            patched = unet(x, t, context)
    finally:
        patcher.apply(unet, [], "SD1.x")
    assert (expected - plain).abs().max() > 1e-2  # the adapters do something
    torch.testing.assert_close(patched, expected, atol=2e-3, rtol=2e-3)  # fp16 file, merged weights
    with torch.no_grad():
        assert torch.equal(unet(x, t, context), plain)


def test_controlnet_trainer_file_loads_with_the_same_residuals(unet: torch.nn.Module, tmp_path: Path) -> None:
    from engine.backend.controlnet import ControlNet

    net = ControlNet.from_unet(unet).eval()
    with torch.no_grad():
        for module in (*net.zero_convs, net.middle_block_out, net.input_hint_block[-1]):
            for p in module.parameters():
                p.normal_(0, 0.05)
    path = tmp_path / "cn.safetensors"
    save_file({PREFIX + k: v.half().contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = ModelManager("cpu").controlnet(ControlNetHandle(FileRef.of(path)))
    x, t, context = _inputs()
    hint = torch.from_numpy(edge_map(ShapeSpec("circle", "red", "blue", "left", "large", 14, 30, 11))).permute(
        2, 0, 1)[None].float().div(255).expand(2, -1, -1, -1)
    with torch.no_grad():
        want, got = net(x, hint, t, context), loaded(x, hint, t, context)
    for a, b in zip(want["output"] + want["middle"], got["output"] + got["middle"], strict=True):
        torch.testing.assert_close(b, a, atol=5e-3, rtol=5e-3)


def test_position_probe_labels_say_column_row_or_none() -> None:
    spec = ShapeSpec("circle", "red", "blue", "top right", "small", 52, 12, 7)
    captions = [caption(spec, 0), caption(spec, 3), caption(spec, 0, with_position=False), ""]
    labels = PositionProbe.labels([spec] * 4, captions)
    none = PositionProbe.NONE
    assert labels.tolist() == [[2, 0], [2, 0], [none, none], [none, none]]
    probe = PositionProbe(8)
    loss = probe.loss(torch.randn(4, 77, 8, requires_grad=True), labels)
    assert loss.item() > 0 and loss.requires_grad


def test_layout_objective_weights_and_draws_the_noisy_end() -> None:
    plain, layout = NoiseObjective(5.0), NoiseObjective(5.0, layout_weight_cap=10.0, layout_fraction=1.0)
    torch.testing.assert_close(layout.weights[:100], plain.weights[:100] / layout.sqrt_ab[:100] ** 2)
    assert layout.weights[999] == pytest.approx(10.0 * float(plain.weights[999]))
    _, t, _ = layout.noised(torch.zeros(256, 4, 8, 8), torch.Generator().manual_seed(0))
    assert int(t.min()) >= 600
    _, t, _ = plain.noised(torch.zeros(256, 4, 8, 8), torch.Generator().manual_seed(0))
    assert int(t.min()) < 100


@pytest.mark.slow
def test_smoke_layout_phase_and_addons_then_their_evaluation(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    base = models / "checkpoints" / "tiny-shapes.safetensors"
    first = tmp_path / "a.safetensors"
    assert train_tiny_shapes.main(["--steps-vae", "4", "--steps-unet", "3", "--steps-layout", "0",
                                   "--dataset-size", "32", "--threads", "1", "--out", str(first)]) == 0
    capsys.readouterr()
    assert train_tiny_shapes.main(["--resume", str(first), "--steps-layout", "3",
                                   "--dataset-size", "32", "--threads", "1", "--out", str(base)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert "layout_final_loss" in resumed and "unet_final_loss" not in resumed
    small = ["--base", str(base), "--steps", "3", "--batch", "4", "--dataset-size", "16", "--threads", "1"]
    assert train_tiny_controlnet.main([*small, "--out", str(models / "controlnet" / eval_tiny_addons.CONTROLNET)]) == 0
    assert train_tiny_lora.main([*small, "--out", str(models / "loras" / eval_tiny_addons.LORA)]) == 0
    capsys.readouterr()
    report = eval_tiny_addons.evaluate_controlnet(1, seed=0, models_dirs=[models])
    assert set(report) >= {"controlnet", "without"}
    lora = eval_tiny_addons.evaluate_lora(1, seed=0, models_dirs=[models], strengths=(0.0, 1.0))
    assert all(np.isfinite(v["background_luma"]) for v in lora["strengths"].values())
