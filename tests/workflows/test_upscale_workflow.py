"""workflows/upscale.json, headless: the demo model's 64x64 image upscaled 2x by the shipped tiny upscaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.workflows.test_demo_workflows import MODELS, run_workflow
from tools.eval_tiny_shapes import classify

PROMPT = "a purple triangle on a yellow background, center, large"
UPSCALER = MODELS / "upscale_models" / "tiny-shapes-2x.safetensors"

CHECKPOINT = MODELS / "checkpoints" / "tiny-shapes.safetensors"

pytestmark = pytest.mark.skipif(not (UPSCALER.is_file() and CHECKPOINT.is_file()),
                                reason="the demo model or the shipped upscaler is missing from models/")


def test_upscale_doubles_the_size_and_keeps_the_picture(tmp_path: Path) -> None:
    [image] = run_workflow(tmp_path, "upscale")
    assert image.shape == (128, 128, 3)
    seen = classify(image)
    assert (seen.shape, seen.color, seen.background) == ("triangle", "purple", "yellow")
    # Box-filtered back to 64x64 it is the image the demo model generated (txt2img.json with the same
    # prompt, seed and sampler): the upscaler added pixels without moving colours.
    [generated] = run_workflow(tmp_path / "txt2img", "txt2img", f"Prompt.text={PROMPT}")
    halved = image.astype(np.float32).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - generated.astype(np.float32)).mean() < 6
