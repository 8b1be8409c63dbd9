"""The SD3 demo trainer's file is an SD3 single-file checkpoint to Loom, and its pieces do what they claim.

Untrained models are enough for the layout (they are saved exactly as the trained ones); a few-step run
of the whole script is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.backend.latent_formats import SD3
from engine.backend.model_sampling import DiscreteFlowSampling
from engine.backend.t5_tokenizer import T5Tokenizer
from tools import train_tiny_sd3
from tools.tiny_sd3_parts import (
    MMDIT_PREFIX,
    T5_PREFIX,
    VAE_CONFIG,
    VAE_PREFIX,
    checkpoint_state,
    flow_sigmas,
    init_vae,
    load_parts,
    normalise_latents,
)
from tools.tiny_sd3_probes import CaptionProbe
from tools.tiny_sd3_sample import PromptIds
from tools.tiny_shapes_data import COLORS, SHAPES, ShapeSpec, caption, render_batch
from tools.tiny_t5_tokenizer import write_tokenizer
from tools.train_tiny_sd3 import build_models, flow_batch, tokenizer_folder, verify_checkpoint
from tools.train_tiny_shapes import to_tensor, training_specs

PREFIXES = (MMDIT_PREFIX, VAE_PREFIX, T5_PREFIX)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained checkpoint written by the trainer's own exporter, with a tokenizer trained beside it."""
    path = tmp_path_factory.mktemp("models") / "checkpoints" / "tiny-shapes-sd3.safetensors"
    write_tokenizer(tokenizer_folder(path), seed=0, count=400)
    vae, mmdit, t5 = build_models(seed=0, vocab_size=128, device=torch.device("cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(mmdit, vae, t5), str(path))
    return path


def test_checkpoint_has_the_sd3_single_file_layout_in_fp16(checkpoint: Path) -> None:
    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = list(handle.keys())
        dtypes = {handle.get_tensor(key).dtype for key in keys}
    assert all(key.startswith(PREFIXES) for key in keys)
    assert all(any(key.startswith(prefix) for key in keys) for prefix in PREFIXES)
    assert dtypes == {torch.float16}
    assert MMDIT_PREFIX + "joint_blocks.0.context_block.attn.qkv.weight" in keys
    assert T5_PREFIX + "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in keys  # gated GELU, T5 v1.1
    assert not any(".quant_conv." in key or key.startswith(VAE_PREFIX + "quant_conv") for key in keys)


def test_loom_reads_back_the_configs_and_finds_the_tokenizer(checkpoint: Path) -> None:
    report = verify_checkpoint(checkpoint, vocab_size=128)
    assert report["configs_round_trip"]
    assert Path(report["tokenizer"]) == checkpoint.parent / "tiny-shapes-sd3" / "spiece.model"
    mmdit, vae, t5 = load_parts(checkpoint)
    ids = PromptIds(T5Tokenizer.for_encoder(checkpoint))(["a red circle", ""])
    assert ids.shape == (2, 77) and ids[1, 0] == 1 and int(ids[1, 1:].abs().sum()) == 0
    context = t5(input_ids=ids).last_hidden_state
    out = mmdit(torch.zeros(2, 16, 8, 8), torch.tensor([1000.0, 500.0]), context, torch.zeros(2, 2048))
    assert out.shape == (2, 16, 8, 8) and vae.decode(out).shape == (2, 3, 64, 64)


def test_latent_normalisation_gives_sd3_statistics_and_keeps_the_decoder_input() -> None:
    torch.manual_seed(0)
    vae = init_vae(VAE_CONFIG).eval()
    images = to_tensor(render_batch(training_specs(0, 4, 24)), torch.device("cpu"))
    with torch.no_grad():
        before = vae.encode_moments(images)[0]
        old_conv_in = vae.decoder.conv_in(before)
        normalise_latents(vae, images)
        after = vae.encode_moments(images)[0]
        new_conv_in = vae.decoder.conv_in(after)
    model = SD3.to_model(after)
    assert torch.allclose(model.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-4)
    assert torch.allclose(model.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-4)
    # Exact away from the latent's border (where the 3x3 conv's zero padding stands for a different value).
    assert torch.allclose(new_conv_in[..., 1:-1, 1:-1], old_conv_in[..., 1:-1, 1:-1], atol=1e-4)


def test_flow_batch_is_the_rectified_flow_loom_samples() -> None:
    mean, std = torch.randn(8, 16, 8, 8), torch.full((8, 16, 8, 8), 1e-3)
    generator = torch.Generator().manual_seed(0)
    noisy, sigma, target = flow_batch(mean, std, torch.arange(8), 3.0, generator)
    x0 = noisy - sigma[:, None, None, None] * target  # Loom's flow denoised = x - sigma * v
    assert torch.allclose(x0, SD3.to_model(mean), atol=0.01)
    sigmas = flow_sigmas(20000, 3.0, torch.Generator().manual_seed(1))
    assert 0 <= float(sigmas.min()) and float(sigmas.max()) < 1
    # Half the noise levels lie above the median of the sampler's own (shift 3) table.
    table = DiscreteFlowSampling(shift=3.0).sigmas
    assert abs(float((sigmas > table.median()).float().mean()) - 0.5) < 0.02


def test_caption_probe_labels_what_each_caption_says() -> None:
    spec = ShapeSpec("triangle", "red", "blue", "top left", "small", 14, 14, 7)
    captions = [caption(spec, 3), caption(spec, 0, with_background=False), ""]
    labels = CaptionProbe.labels([spec] * 3, captions).tolist()
    red, blue, triangle = COLORS.index("red"), COLORS.index("blue"), SHAPES.index("triangle")
    assert labels == [[red, blue, triangle], [red, len(COLORS), triangle], [len(COLORS), len(COLORS), len(SHAPES)]]
    probe = CaptionProbe(16)
    loss = probe.loss(torch.randn(3, 77, 16, requires_grad=True), [spec] * 3, captions)
    assert loss.ndim == 0 and float(loss.detach()) > 0


@pytest.mark.slow
def test_a_few_steps_of_the_whole_script_write_a_checked_file(tmp_path: Path) -> None:
    out = tmp_path / "checkpoints" / "tiny-shapes-sd3.safetensors"
    args = ["--steps-vae", "4", "--steps-mmdit", "4", "--steps-layout", "2", "--batch-vae", "4", "--batch-mmdit", "8",
            "--dataset-size", "32", "--eval-count", "2", "--out", str(out)]
    assert train_tiny_sd3.main(args) == 0
    assert out.is_file() and (tokenizer_folder(out) / "spiece.model").is_file()
    metadata = safe_open(str(out), framework="pt").metadata()
    assert json.loads(metadata["loom.hyper"])["steps_mmdit"] == 4
    resumed = tmp_path / "resumed" / "tiny-shapes-sd3.safetensors"  # --resume copies the tokenizer beside its output
    assert train_tiny_sd3.main(["--resume", str(out), "--steps-layout", "2", "--probe", "position", "--batch-mmdit",
                                "8", "--dataset-size", "32", "--eval-count", "0", "--out", str(resumed)]) == 0
    assert safe_open(str(resumed), framework="pt").metadata()["loom.resumed_from"] == out.name
    copied, original = (tokenizer_folder(path) / "spiece.model" for path in (resumed, out))
    assert copied.read_bytes() == original.read_bytes()
