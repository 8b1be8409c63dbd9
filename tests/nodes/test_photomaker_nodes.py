"""PhotoMakerLoader and PhotoMakerEncode on tiny PhotoMaker v1 files written here in the real key layout (the
official pickle ``{"id_encoder": {...}}`` and a flat ``id_encoder.``-prefixed safetensors) against a tiny SDXL
checkpoint: only the class word's token embedding changes, to the fuse formula computed here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from engine.backend.clip_vision import preprocess
from engine.errors import ModelError
from engine.executor import Executor
from engine.models.loaders import UnsupportedModel
from nodes.conditioning import CLIPTextEncode
from nodes.model_loaders import CheckpointLoaderSimple
from nodes.photomaker import PhotoMakerEncode, PhotoMakerLoader
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import DEMO_CHECKPOINT, DEMO_MODELS, make_executor, node_context, require_demo_model

TEXT_WIDTH = 64 + 128  # the tiny SDXL's CLIP-L + CLIP-G widths (2048 in real SDXL)
PROJ, PROJ_2 = 64, 128  # visual_projection and visual_projection_2 outputs (768 and 1280 in PhotoMaker v1)
#: The loader infers the activation from the width (engine/models/clip_vision.py): quick_gelu only for the real
#: ViT-L/14 width 1024, gelu for this tiny tower; 16 heads likewise.
ACT = "gelu"


def _id_encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                              patch_size=14, image_size=28, projection_dim=PROJ, hidden_act=ACT)
    state = {k: v.clone() for k, v in CLIPVisionModelWithProjection(config).state_dict().items()
             if not k.endswith("position_ids")}
    state["visual_projection_2.weight"] = torch.randn(PROJ_2, 32) * 0.2
    d = TEXT_WIDTH
    for mlp, width in (("mlp1", 2 * d), ("mlp2", d)):
        state[f"fuse_module.{mlp}.layernorm.weight"] = 1 + 0.1 * torch.randn(width)
        state[f"fuse_module.{mlp}.layernorm.bias"] = 0.1 * torch.randn(width)
        state[f"fuse_module.{mlp}.fc1.weight"] = torch.randn(d, width) / width ** 0.5
        state[f"fuse_module.{mlp}.fc1.bias"] = 0.1 * torch.randn(d)
        state[f"fuse_module.{mlp}.fc2.weight"] = torch.randn(d, d) / d ** 0.5
        state[f"fuse_module.{mlp}.fc2.bias"] = 0.1 * torch.randn(d)
    state["fuse_module.layer_norm.weight"] = 1 + 0.1 * torch.randn(d)
    state["fuse_module.layer_norm.bias"] = 0.1 * torch.randn(d)
    return state


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_demo_model()
    root = tmp_path_factory.mktemp("photomaker-models")
    build_checkpoint(root / "checkpoints" / "tiny-sdxl.safetensors", "sdxl")
    (root / "photomaker").mkdir()
    state = _id_encoder_state()
    torch.save({"id_encoder": state, "lora_weights": {}}, root / "photomaker" / "photomaker-v1.bin")
    save_file({f"id_encoder.{k}": v.contiguous() for k, v in state.items()},
              str(root / "photomaker" / "photomaker-v1.safetensors"))
    save_file({"visual_projection.weight": torch.zeros(2, 2)}, str(root / "photomaker" / "not-photomaker.safetensors"))
    torch.save(state, root / "photomaker" / "state.pt")
    return root


@pytest.fixture
def executor(root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, DEMO_MODELS, root)


def _mlp(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    p = {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1]: v for k, v in state.items()
         if k.startswith(f"fuse_module.{name}.")}
    h = functional.layer_norm(x, x.shape[-1:], p["layernorm.weight"], p["layernorm.bias"])
    return functional.linear(functional.gelu(functional.linear(h, p["fc1.weight"], p["fc1.bias"])),
                             p["fc2.weight"], p["fc2.bias"])


def _expected_fused(token: torch.Tensor, image: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                              patch_size=14, image_size=28, projection_dim=PROJ, hidden_act=ACT)
    tower = CLIPVisionModelWithProjection(config)
    tower.load_state_dict({k: v for k, v in state.items() if not k.startswith(("fuse_", "visual_projection_2"))},
                          strict=False)
    with torch.no_grad():
        pixels = preprocess(image[:1], size=28)
        pooled = tower.vision_model(pixel_values=pixels).pooler_output  # post-LayerNorm class token
        ids = torch.cat([tower(pixel_values=pixels).image_embeds, pooled @ state["visual_projection_2.weight"].t()],
                        dim=-1)
        h = _mlp(torch.cat([token, ids], dim=-1), state, "mlp1") + token
        h = _mlp(h, state, "mlp2") + h
        return functional.layer_norm(h, h.shape[-1:], state["fuse_module.layer_norm.weight"],
                                     state["fuse_module.layer_norm.bias"])


@pytest.mark.parametrize("file_name", ["photomaker-v1.bin", "photomaker-v1.safetensors"])
def test_encode_fuses_exactly_the_class_word_token(executor: Executor, file_name: str) -> None:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, "tiny-sdxl.safetensors")
    [handle] = PhotoMakerLoader().run(ctx, file_name)
    assert "PhotoMaker v1" in handle.label
    image = torch.rand(2, 40, 30, 3, generator=torch.Generator().manual_seed(4))  # only the first image is used
    prompt = "photograph of a man photomaker wearing a hat"
    [[[cond, extras]]] = PhotoMakerEncode().run(ctx, handle, image, clip, prompt)
    [[[plain, plain_extras]]] = CLIPTextEncode().run(ctx, "photograph of a man wearing a hat", clip)

    assert cond.shape == plain.shape == (1, 77, TEXT_WIDTH)
    torch.testing.assert_close(extras["pooled_output"], plain_extras["pooled_output"])
    position = 4  # BOS, photograph, of, a, man: the word before the trigger
    others = torch.ones(77, dtype=torch.bool)
    others[position] = False
    assert torch.equal(cond[:, others], plain[:, others])
    state = _id_encoder_state()
    expected = _expected_fused(plain[:, position], image, state)
    torch.testing.assert_close(cond[:, position], expected, rtol=1e-4, atol=1e-4)
    assert float((cond[:, position] - plain[:, position]).abs().max()) > 0.1


def test_text_without_trigger_word_is_plain_text_encoding(executor: Executor) -> None:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, "tiny-sdxl.safetensors")
    [handle] = PhotoMakerLoader().run(ctx, "state.pt")  # a bare id_encoder state dict loads too
    [[[cond, _]]] = PhotoMakerEncode().run(ctx, handle, torch.rand(1, 32, 32, 3), clip, "photograph of a man")
    [[[plain, _]]] = CLIPTextEncode().run(ctx, "photograph of a man", clip)
    assert torch.equal(cond, plain)


def test_errors_name_the_input_and_the_fix(executor: Executor) -> None:
    require_demo_model()
    ctx = node_context(executor)
    with pytest.raises(UnsupportedModel, match="not a PhotoMaker v1 file"):
        PhotoMakerLoader().run(ctx, "not-photomaker.safetensors")
    [handle] = PhotoMakerLoader().run(ctx, "photomaker-v1.bin")
    _, sd1_clip, _ = CheckpointLoaderSimple().run(ctx, DEMO_CHECKPOINT)
    with pytest.raises(ModelError, match="PhotoMakerEncode clip: .* needs an SDXL CLIP"):
        PhotoMakerEncode().run(ctx, handle, torch.rand(1, 32, 32, 3), sd1_clip, "photograph of photomaker")
