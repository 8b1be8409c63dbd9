"""SD3 / Flux text nodes through the executor on tiny real files: TripleCLIPLoader, DualCLIPLoader (sd3, flux),
CLIPLoader (sd3), CheckpointLoaderSimple on a tiny SD3 checkpoint, CLIPTextEncodeSD3 (both empty_padding
choices), CLIPTextEncodeFlux (guidance), CLIPTextEncode and CLIPSetLastLayer on those CLIPs; wrong files and
wrong CLIPs are refused naming the node and the input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.mmdit import MMDiT, MMDiTConfig
from engine.errors import ModelError
from engine.executor import Executor
from nodes.flow_text import CLIPTextEncodeFlux, CLIPTextEncodeSD3
from nodes.part_loaders import DualCLIPLoader, TripleCLIPLoader
from tests.backend.flow_text_files import (
    CLIP_G_PROJECTION,
    CLIP_L_WIDTH,
    T5_WIDTH,
    place_tokenizer,
    reference_towers,
    train_spiece,
    write_checkpoint,
    write_parts,
)
from tests.nodes.sd_workflow import make_executor, node_context, run_prompt

PROMPT = "a small robot reading a book"
POOLED = CLIP_L_WIDTH + CLIP_G_PROJECTION


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("flow-models")
    towers = reference_towers()
    spiece = train_spiece(root / "spiece")
    write_parts(root / "text_encoders", towers)
    place_tokenizer(spiece, root / "text_encoders")
    mmdit = MMDiT(MMDiTConfig(depth=1, hidden_size=64, num_heads=1, context_in_dim=T5_WIDTH, pooled_dim=POOLED,
                              pos_embed_max_size=8))
    unet = {f"model.diffusion_model.{key}": value.contiguous() for key, value in mmdit.state_dict().items()}
    write_checkpoint(root / "checkpoints" / "tiny_sd3.safetensors", towers, extra=unet)
    place_tokenizer(spiece, root / "checkpoints")
    save_file({"model.x": torch.zeros(1)}, str(root / "text_encoders" / "not_a_text_encoder.safetensors"))
    return make_executor(tmp_path_factory.mktemp("run"), root)


def _triple(order: tuple[str, str, str] = ("t5xxl_tiny", "clip_l", "clip_g")) -> dict[str, Any]:
    return {"class_type": "TripleCLIPLoader",
            "inputs": {f"clip_name{i}": f"{name}.safetensors" for i, name in enumerate(order, 1)}}


def _dual(first: str, second: str, kind: str) -> dict[str, Any]:
    return {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": f"{first}.safetensors",
                                                       "clip_name2": f"{second}.safetensors", "type": kind}}


def _text(text: str, clip: list[Any]) -> dict[str, Any]:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}


def _sd3(clip_l: str, clip_g: str, t5xxl: str, padding: str, clip: list[Any]) -> dict[str, Any]:
    return {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": clip, "clip_l": clip_l, "clip_g": clip_g,
                                                          "t5xxl": t5xxl, "empty_padding": padding}}


def _cond(executor: Executor, prompt: dict[str, Any], node: str) -> tuple[torch.Tensor, dict[str, Any]]:
    [[cond, extras]] = run_prompt(executor, prompt, cond=[node, 0])["cond"]
    return cond, extras


def test_triple_loader_and_sd3_prompt_node(executor: Executor) -> None:
    """CLIPTextEncodeSD3 with one text for all three towers equals CLIPTextEncode; [1, 77 + 77, T5 width]."""
    prompt = {"clip": _triple(), "text": _text(PROMPT, ["clip", 0]),
              "sd3": _sd3(PROMPT, PROMPT, PROMPT, "none", ["clip", 0])}
    cond, extras = _cond(executor, prompt, "sd3")
    text_cond, text_extras = _cond(executor, prompt, "text")
    assert cond.shape == (1, 154, T5_WIDTH) and extras["pooled_output"].shape == (1, POOLED)
    assert torch.equal(cond, text_cond) and torch.equal(extras["pooled_output"], text_extras["pooled_output"])
    other_order = {**prompt, "clip": _triple(("clip_g", "t5xxl_tiny", "clip_l"))}
    assert torch.equal(_cond(executor, other_order, "sd3")[0], cond)


def test_sd3_empty_padding(executor: Executor) -> None:
    clip = ["clip", 0]
    prompt = {"clip": _triple(), "none": _sd3("", "", "", "none", clip),
              "padded": _sd3("", "", "", "empty_prompt", clip), "text": _text("", clip),
              "no_l": _sd3("", PROMPT, PROMPT, "none", clip),
              "no_l_padded": _sd3("", PROMPT, PROMPT, "empty_prompt", clip),
              "no_t5": _sd3(PROMPT, PROMPT, "", "none", clip)}
    none, none_extras = _cond(executor, prompt, "none")
    assert none.shape == (1, 1, T5_WIDTH)  # no CLIP part; T5 reads only its end token
    assert torch.count_nonzero(none_extras["pooled_output"]) == 0
    padded, padded_extras = _cond(executor, prompt, "padded")
    text, text_extras = _cond(executor, prompt, "text")
    assert padded.shape == (1, 154, T5_WIDTH) and torch.equal(padded, text)
    assert torch.equal(padded_extras["pooled_output"], text_extras["pooled_output"])
    assert torch.count_nonzero(padded_extras["pooled_output"]) > 0
    # one empty CLIP text is padded to its partner with the empty prompt either way (ComfyUI's rule)
    assert torch.equal(_cond(executor, prompt, "no_l")[0], _cond(executor, prompt, "no_l_padded")[0])
    assert _cond(executor, prompt, "no_t5")[0].shape == (1, 77 + 1, T5_WIDTH)


def test_flux_prompt_node_sets_guidance(executor: Executor) -> None:
    clip = ["clip", 0]
    flux = {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": clip, "clip_l": PROMPT, "t5xxl": PROMPT,
                                                           "guidance": 2.5}}
    other_l = {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": clip, "clip_l": "a blue mat", "t5xxl": PROMPT,
                                                              "guidance": 3.5}}
    prompt = {"clip": _dual("t5xxl_tiny", "clip_l", "flux"), "flux": flux, "other": other_l,
              "text": _text(PROMPT, clip)}
    cond, extras = _cond(executor, prompt, "flux")
    text_cond, text_extras = _cond(executor, prompt, "text")
    assert cond.shape == (1, 256, T5_WIDTH) and extras["pooled_output"].shape == (1, CLIP_L_WIDTH)
    assert extras["guidance"] == 2.5 and "guidance" not in text_extras  # the sampler supplies Flux's default
    assert torch.equal(cond, text_cond) and torch.equal(extras["pooled_output"], text_extras["pooled_output"])
    other, other_extras = _cond(executor, prompt, "other")
    assert torch.equal(other, cond)  # clip_l's text feeds only the pooled output
    assert not torch.allclose(other_extras["pooled_output"], extras["pooled_output"], atol=1e-3)


def test_checkpoint_loader_and_clip_skip(executor: Executor) -> None:
    """CheckpointLoaderSimple's CLIP of an SD3 checkpoint encodes as the three files do; CLIPSetLastLayer -1
    (last layer instead of SD3's -2) changes it."""
    ckpt = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd3.safetensors"}}
    skip = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -1}}
    prompt = {"ckpt": ckpt, "clip": _triple(), "from_ckpt": _text(PROMPT, ["ckpt", 1]),
              "from_files": _text(PROMPT, ["clip", 0]), "skip": skip, "skipped": _text(PROMPT, ["skip", 0])}
    cond, extras = _cond(executor, prompt, "from_ckpt")
    files, files_extras = _cond(executor, prompt, "from_files")
    assert torch.equal(cond, files) and torch.equal(extras["pooled_output"], files_extras["pooled_output"])
    skipped, _ = _cond(executor, prompt, "skipped")
    assert skipped.shape == cond.shape and not torch.allclose(skipped, cond, atol=1e-3)


def test_single_t5_file(executor: Executor) -> None:
    prompt = {"clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5xxl_tiny.safetensors", "type": "sd3"}},
              "text": _text(PROMPT, ["clip", 0])}
    cond, extras = _cond(executor, prompt, "text")
    assert cond.shape == (1, 77, T5_WIDTH) and torch.count_nonzero(extras["pooled_output"]) == 0


def test_wrong_files_and_clips_name_the_node_and_input(executor: Executor) -> None:
    ctx = node_context(executor)
    with pytest.raises(ModelError, match=r"^DualCLIPLoader type flux needs one CLIP-L and one T5-XXL text encoder; "
                                         r"clip_name1 'clip_l.safetensors' is CLIP-L \(width 64\), clip_name2 "
                                         r"'clip_g.safetensors' is CLIP-G \(width 96\)"):
        DualCLIPLoader().run(ctx, "clip_l.safetensors", "clip_g.safetensors", "flux")
    with pytest.raises(ModelError, match=r"^TripleCLIPLoader needs one CLIP-L, one CLIP-G and one T5-XXL .*"
                                         r"clip_name3 't5xxl_tiny.safetensors' is T5-XXL"):
        TripleCLIPLoader().run(ctx, "t5xxl_tiny.safetensors", "clip_l.safetensors", "t5xxl_tiny.safetensors")
    with pytest.raises(ModelError, match=r"^TripleCLIPLoader clip_name2 'not_a_text_encoder.safetensors': "
                                         r"not_a_text_encoder.safetensors holds no CLIP or T5 text encoder"):
        TripleCLIPLoader().run(ctx, "clip_l.safetensors", "not_a_text_encoder.safetensors", "t5xxl_tiny.safetensors")
    (sd3_clip,) = TripleCLIPLoader().run(ctx, "clip_l.safetensors", "clip_g.safetensors", "t5xxl_tiny.safetensors")
    (flux_clip,) = DualCLIPLoader().run(ctx, "clip_l.safetensors", "t5xxl_tiny.safetensors", "flux")
    with pytest.raises(ValueError, match=r"^CLIPTextEncodeFlux clip: this CLIP is SD3's; CLIPTextEncodeFlux needs "
                                         r"FLUX's text encoders"):
        CLIPTextEncodeFlux().run(ctx, sd3_clip, PROMPT, PROMPT, 3.5)
    with pytest.raises(ValueError, match=r"^CLIPTextEncodeSD3 clip: this CLIP is Flux.1's; .*TripleCLIPLoader"):
        CLIPTextEncodeSD3().run(ctx, flux_clip, PROMPT, PROMPT, PROMPT, "none")
