"""CLIPTextEncodeSDXLRefiner on a tiny SDXL refiner checkpoint: the conditioning extras it writes, the
refiner adm vector the sampling pipeline builds from them, and the score's effect on a KSampler run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.backend.pipeline import adm_builder
from engine.backend.unet import sdxl_refiner_adm
from engine.executor import Executor
from nodes.conditioning import CLIPTextEncode, CLIPTextEncodeSDXLRefiner
from nodes.model_loaders import CheckpointLoaderSimple
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import make_executor, node_context, run_prompt

CHECKPOINT = "tiny-sdxl_refiner.safetensors"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    build_checkpoint(root / "checkpoints" / CHECKPOINT, "sdxl_refiner")
    return root


@pytest.fixture
def executor(model_root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, model_root)


def _sinusoid(value: float) -> torch.Tensor:
    """The 256-dim embedding of one scalar, from the formula: cos(v * f_i), then sin(v * f_i), f_i = 1e4^(-i/128)."""
    frequencies = torch.tensor([math.exp(-math.log(10000.0) * i / 128) for i in range(128)], dtype=torch.float64)
    return torch.cat([torch.cos(value * frequencies), torch.sin(value * frequencies)]).float()


def test_refiner_encode_writes_score_and_size_and_the_adm_follows(executor: Executor) -> None:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, CHECKPOINT)
    [[cond, extras]] = CLIPTextEncodeSDXLRefiner().run(ctx, 7.5, 768, 512, "a red circle", clip)[0]
    assert (extras["aesthetic_score"], extras["width"], extras["height"]) == (7.5, 768, 512)
    [[plain, plain_extras]] = CLIPTextEncode().run(ctx, "a red circle", clip)[0]
    assert torch.equal(cond, plain) and torch.equal(extras["pooled_output"], plain_extras["pooled_output"])

    build = adm_builder("sdxl_refiner")
    assert build is not None
    pooled = extras["pooled_output"]
    adm = build(extras, 64, 64)
    assert adm is not None
    torch.testing.assert_close(adm, sdxl_refiner_adm(pooled, 768, 512, 7.5), rtol=0, atol=0)
    low = build({**extras, "aesthetic_score": 2.5}, 64, 64)
    assert low is not None
    width = pooled.shape[1]
    # Layout: pooled, then height, width, crop top, crop left, score, 256 each: only the score's part moves.
    torch.testing.assert_close(low[:, :width + 4 * 256], adm[:, :width + 4 * 256], rtol=0, atol=0)
    torch.testing.assert_close(adm[0, width + 4 * 256:], _sinusoid(7.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(low[0, width + 4 * 256:], _sinusoid(2.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(adm[0, width:width + 256], _sinusoid(512), rtol=0, atol=1e-4)  # height first
    torch.testing.assert_close(adm[0, width + 256:width + 512], _sinusoid(768), rtol=0, atol=1e-4)
    assert (adm - low).abs().max() > 0.1


def _refiner_prompt(ascore: float) -> dict[str, Any]:
    inputs = {"ascore": ascore, "width": 1024, "height": 1024, "text": "a red circle", "clip": ["ckpt", 1]}
    encode: dict[str, Any] = {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": inputs}
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "pos": encode,
        "neg": {**encode, "inputs": {**encode["inputs"], "ascore": 2.5, "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
    }


def test_the_score_reaches_the_refiner_sampler(executor: Executor) -> None:
    high = run_prompt(executor, _refiner_prompt(6.0), latent=["sample", 0])["latent"]["samples"]
    again = run_prompt(executor, _refiner_prompt(6.0), latent=["sample", 0])["latent"]["samples"]
    other = run_prompt(executor, _refiner_prompt(9.0), latent=["sample", 0])["latent"]["samples"]
    assert torch.isfinite(high).all() and torch.equal(high, again)
    assert not torch.allclose(high, other)
