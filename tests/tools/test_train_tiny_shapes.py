"""The training script's checkpoint is a real SD1 checkpoint to Loom, and its pieces do what they claim.

Untrained models are enough to check the layout (they are saved exactly as the trained ones); the
end-to-end smoke run of the training loop, through Loom's executor, is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.backend.prompt_weights import tokenize_prompt
from engine.backend.tokenizer import ClipTokenizer
from engine.backend.unet import UNetConfig
from engine.backend.vae import SD1_SCALE_FACTOR, VAEConfig
from engine.models.loaders import CheckpointFile, detect_family
from tools import eval_tiny_shapes, train_tiny_shapes
from tools.eval_tiny_shapes import generate
from tools.tiny_shapes_data import canonical_caption, eval_specs, random_caption, render_batch
from tools.train_tiny_shapes import (
    UNET_CONFIG,
    VAE_CONFIG,
    CaptionTokens,
    build_models,
    calibrate_latents,
    checkpoint_state,
    init_vae,
    lr_at,
    save_checkpoint,
    to_tensor,
    training_specs,
    verify_checkpoint,
)

PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root holding an untrained checkpoint written by the training script's own exporter."""
    root = tmp_path_factory.mktemp("models")
    vae, unet, text = build_models(seed=0, device=torch.device("cpu"))
    save_checkpoint(checkpoint_state(unet, vae, text), root / "checkpoints" / "tiny-shapes.safetensors",
                    {"loom.tool": "test"})
    return root


def test_checkpoint_has_the_real_sd1_layout_in_fp16(models_dir: Path) -> None:
    path = models_dir / "checkpoints" / "tiny-shapes.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        dtypes = {key: handle.get_tensor(key).dtype for key in keys}
    assert all(key.startswith(PREFIXES) for key in keys)
    assert {prefix for prefix in PREFIXES if any(k.startswith(prefix) for k in keys)} == set(PREFIXES)
    assert dtypes.pop("cond_stage_model.transformer.text_model.embeddings.position_ids") == torch.int64
    assert set(dtypes.values()) == {torch.float16}
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
        assert ckpt.shape("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") == (49408, 64)
        assert UNetConfig.from_state_dict(ckpt.shapes("model.diffusion_model.")) == UNET_CONFIG
        assert VAEConfig.from_state_dict(ckpt.shapes("first_stage_model.")) == VAE_CONFIG
    assert (family.name, family.prediction, family.in_channels) == ("sd1", "eps", 4)
    assert path.stat().st_size < 18e6


def test_checkpoint_loads_through_the_model_manager(models_dir: Path) -> None:
    report = verify_checkpoint(models_dir / "checkpoints" / "tiny-shapes.safetensors")
    assert report == {"family": "SD1.x", "parts": ["unet", "clip", "vae:first_stage_model."]}


def test_training_tokens_equal_loom_prompt_tokens() -> None:
    rng = np.random.default_rng(0)
    captions = ["", *(random_caption(spec, rng) for spec in training_specs(0, 3, 20))]
    captions += [canonical_caption(spec) for spec in eval_specs(5)]
    tokens = CaptionTokens()(captions)
    tokenizer = ClipTokenizer()
    expected = [tokenize_prompt(text, tokenizer).ids[0] for text in captions]
    assert tokens.shape == (len(captions), 77) and tokens.tolist() == expected


def test_latent_calibration_is_exact_and_hits_the_sd1_scale() -> None:
    torch.manual_seed(0)
    vae = init_vae(VAE_CONFIG).eval()
    images = to_tensor(render_batch(training_specs(0, 5, 24)), torch.device("cpu"))
    with torch.no_grad():
        before = vae.decode(vae.encode(images))
        calibrate_latents(vae, images)
        means = vae.encode(images)
        after = vae.decode(means)
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-3)
    channel_std = means.std(dim=(0, 2, 3))
    torch.testing.assert_close(channel_std, torch.full((4,), 1 / SD1_SCALE_FACTOR), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(means.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-3, rtol=0)


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    assert lr_at(0, 1000, 1.0, 100) == pytest.approx(0.01)
    assert lr_at(99, 1000, 1.0, 100) == pytest.approx(1.0)
    assert lr_at(550, 1000, 1.0, 100) == pytest.approx(0.55)
    assert lr_at(999, 1000, 1.0, 100) == pytest.approx(0.1, abs=1e-4)


def test_evaluator_generates_through_loom_executor(models_dir: Path) -> None:
    [image] = generate(["a red circle on a blue background"], [3], models_dirs=[models_dir],
                       ckpt_name="tiny-shapes.safetensors", steps=2, cfg=6.0, sampler="euler",
                       scheduler="normal", device="cpu")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


@pytest.mark.slow
def test_smoke_training_then_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "checkpoints" / "tiny-shapes.safetensors"
    assert train_tiny_shapes.main(["--steps-vae", "8", "--steps-unet", "6", "--dataset-size", "64",
                                   "--steps-layout", "2", "--threads", "1", "--log-every", "2", "--out", str(out)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["verify"]["family"] == "SD1.x" and out.is_file()
    assert trained["parameters"] == {"vae": 1451751, "unet": 3754692, "text": 3317120}
    grid = tmp_path / "grid.png"
    assert eval_tiny_shapes.main(["--models-dir", str(tmp_path / "models"), "--count", "3", "--steps", "3",
                                  "--grid", str(grid), "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 3 and grid.is_file()
    assert all(0 <= report[key] <= 100 for key in ("color", "shape", "position", "background"))
