"""Model and CLIP merging (ModelMerge*, CLIPMerge*): the merged weights equal ComfyUI's formulas, computed here
from the files in float32; LoRAs and merges on the inputs are baked in; LoRAs on a merge apply and come off
bit-exactly; weights of another shape stay model1's (add-difference inpainting merges); merges are lazy and
hold one model, not three; models of two families are refused with the node's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.errors import ModelError
from engine.models.handles import ClipHandle, FileRef, ModelHandle, WeightPatch
from engine.models.loaders import UNET_PREFIX, CheckpointFile, detect_family
from engine.models.manager import ModelManager
from nodes.model_merging import (
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSD1,
    ModelMergeSimple,
    ModelMergeSubtract,
)
from tests.fixtures.tiny_checkpoints import build_checkpoint

CTX = None  # the merge nodes only build handles: they never touch the run context
Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # [32, 32] in the tiny sd1 UNet


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    out = {f"sd1_{seed}": build_checkpoint(root / f"sd1-{seed}.safetensors", "sd1", seed=seed) for seed in (0, 1, 2)}
    out["inpaint"] = build_checkpoint(root / "sd1-inpaint.safetensors", "sd1", inpaint=True, seed=3)
    out["sdxl"] = build_checkpoint(root / "sdxl.safetensors", "sdxl")
    generator = torch.Generator().manual_seed(9)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    lora = {f"{name}.lora_up.weight": torch.randn(32, 4, generator=generator) * 0.1,
            f"{name}.lora_down.weight": torch.randn(4, 32, generator=generator) * 0.1}
    out["lora"] = root / "lora.safetensors"
    save_file(lora, str(out["lora"]))
    return out


def _handles(path: Path) -> tuple[ModelHandle, ClipHandle]:
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family), ClipHandle(FileRef.of(path), family)


def _unet_file(path: Path) -> dict[str, Tensor]:
    """The UNet's weights as stored, by Loom's names, in float32."""
    with CheckpointFile(path) as ckpt:
        return {k[len(UNET_PREFIX):]: ckpt.load(k, torch.float32) for k in ckpt.keys() if k.startswith(UNET_PREFIX)}


def _params(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: param.detach().clone() for name, param in module.named_parameters()}


def _assert_weights(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def test_simple_merge_is_ratio_of_model1_plus_the_rest_of_model2(files: dict[str, Path]) -> None:
    model1, _ = _handles(files["sd1_0"])
    model2, _ = _handles(files["sd1_1"])
    [merged] = ModelMergeSimple().run(CTX, model1, model2, 0.3)  # type: ignore[arg-type]
    manager = ModelManager("cpu")
    w1, w2 = _unet_file(files["sd1_0"]), _unet_file(files["sd1_1"])
    _assert_weights(_params(manager.unet(merged)), {k: 0.3 * w1[k] + 0.7 * w2[k] for k in w1})
    [same] = ModelMergeSimple().run(CTX, model1, model2, 1.0)  # type: ignore[arg-type]
    assert all(torch.equal(value, w1[name]) for name, value in _params(manager.unet(same)).items())


def test_block_merges_pick_the_longest_matching_input(files: dict[str, Path]) -> None:
    model1, _ = _handles(files["sd1_0"])
    model2, _ = _handles(files["sd1_1"])
    w1, w2 = _unet_file(files["sd1_0"]), _unet_file(files["sd1_1"])
    manager = ModelManager("cpu")
    [blocks] = ModelMergeBlocks().run(CTX, model1, model2, input=0.2, middle=0.5, out=0.9)  # type: ignore[arg-type]

    def ratio(name: str) -> float:  # "out" covers output_blocks and out.*; time_embed falls to the first input's
        return 0.5 if name.startswith("middle") else 0.9 if name.startswith("out") else 0.2
    _assert_weights(_params(manager.unet(blocks)), {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})

    ratios = {spec.name: 1.0 for spec in ModelMergeSD1.inputs[2:]}
    ratios |= {"input_blocks.1.": 0.0, "out.": 0.25}
    [per_block] = ModelMergeSD1().run(CTX, model1, model2, **ratios)  # type: ignore[arg-type]
    merged = _params(manager.unet(per_block))
    assert torch.equal(merged[Q], w2[Q])  # input_blocks.1.* taken from model2
    assert torch.equal(merged["input_blocks.2.0.op.weight"], w1["input_blocks.2.0.op.weight"])
    torch.testing.assert_close(merged["out.2.weight"], 0.25 * w1["out.2.weight"] + 0.75 * w2["out.2.weight"])
    assert torch.equal(merged["output_blocks.1.0.in_layers.2.weight"], w1["output_blocks.1.0.in_layers.2.weight"])


def test_add_difference_keeps_the_inpainting_models_own_first_conv(files: dict[str, Path]) -> None:
    """inpaint + 2 * (tuned - base): ModelMergeAdd of a ModelMergeSubtract, ComfyUI's inpainting recipe."""
    tuned, _ = _handles(files["sd1_0"])
    base, _ = _handles(files["sd1_1"])
    inpaint, _ = _handles(files["inpaint"])
    [difference] = ModelMergeSubtract().run(CTX, tuned, base, 2.0)  # type: ignore[arg-type]
    [merged] = ModelMergeAdd().run(CTX, inpaint, difference)  # type: ignore[arg-type]
    assert merged.family.in_channels == 9
    wt, wb, wi = _unet_file(files["sd1_0"]), _unet_file(files["sd1_1"]), _unet_file(files["inpaint"])
    manager = ModelManager("cpu")
    expected = {k: wi[k] if wi[k].shape != wt[k].shape else wi[k] + 2.0 * (wt[k] - wb[k]) for k in wi}
    _assert_weights(_params(manager.unet(merged)), expected)
    assert torch.equal(_params(manager.unet(merged))["input_blocks.0.0.weight"], wi["input_blocks.0.0.weight"])
    assert len(manager.loaded()) == 1  # only the result was built: no UNet of an input


def test_loras_on_the_inputs_are_baked_in_and_loras_on_the_merge_come_off_exactly(files: dict[str, Path]) -> None:
    model1, _ = _handles(files["sd1_0"])
    model2, _ = _handles(files["sd1_1"])
    lora = WeightPatch(FileRef.of(files["lora"]), 0.8)
    manager = ModelManager("cpu")
    patched2 = _params(manager.unet(model2.with_patch(lora)))
    assert not torch.equal(patched2[Q], _unet_file(files["sd1_1"])[Q])
    w1 = _unet_file(files["sd1_0"])
    [merged] = ModelMergeSimple().run(CTX, model1, model2.with_patch(lora), 0.4)  # type: ignore[arg-type]
    plain = _params(manager.unet(merged))
    _assert_weights(plain, {k: 0.4 * w1[k] + 0.6 * patched2[k] for k in w1})
    on_top = _params(manager.unet(merged.with_patch(lora)))
    assert not torch.equal(on_top[Q], plain[Q])
    assert all(torch.equal(value, plain[name]) for name, value in _params(manager.unet(merged)).items())
    # A merge of merges: the inner merge's weights feed the outer one.
    [inner] = ModelMergeSimple().run(CTX, model1, model2, 0.5)  # type: ignore[arg-type]
    [outer] = ModelMergeSimple().run(CTX, inner, _handles(files["sd1_2"])[0], 0.5)  # type: ignore[arg-type]
    w2, w3 = _unet_file(files["sd1_1"]), _unet_file(files["sd1_2"])
    _assert_weights(_params(manager.unet(outer)), {k: 0.25 * w1[k] + 0.25 * w2[k] + 0.5 * w3[k] for k in w1})


def test_merging_is_lazy_and_changes_no_sampling_option(files: dict[str, Path]) -> None:
    model1, _ = _handles(files["sd1_0"])
    model2, _ = _handles(files["sd1_1"])
    model1 = model1.with_compute_dtype("fp32")
    [merged] = ModelMergeSimple().run(CTX, model1, model2, 0.5)  # type: ignore[arg-type]
    assert merged.compute_dtype == "fp32" and merged.checkpoint == model1.checkpoint and merged.patches == ()
    assert merged.merge is not None and merged.merge.other == model2
    again = ModelMergeSimple().run(CTX, model1, model2, 0.5)[0]  # type: ignore[arg-type]
    manager = ModelManager("cpu")
    assert manager.unet(merged) is manager.unet(again)  # equal recipes share one built model


def test_clip_merges_blend_every_weight_but_positions_and_logit_scale(files: dict[str, Path]) -> None:
    _, clip1 = _handles(files["sd1_0"])
    _, clip2 = _handles(files["sd1_1"])
    manager = ModelManager("cpu")
    c1, c2 = _params(manager.text_encoder(clip1)), _params(manager.text_encoder(clip2))
    cases = [(CLIPMergeSimple().run(CTX, clip1, clip2, 0.25)[0], 0.25, 0.75),  # type: ignore[arg-type]
             (CLIPMergeAdd().run(CTX, clip1, clip2)[0], 1.0, 1.0),  # type: ignore[arg-type]
             (CLIPMergeSubtract().run(CTX, clip1, clip2, 0.5)[0], 0.5, -0.5)]  # type: ignore[arg-type]
    for merged, a, b in cases:
        weights = _params(manager.text_encoder(merged))
        expected = {k: c1[k] if k.endswith((".position_ids", ".logit_scale")) else a * c1[k] + b * c2[k] for k in c1}
        _assert_weights(weights, expected)
        assert merged.layer_idx == clip1.layer_idx


def test_models_of_two_families_are_refused_with_the_node_name(files: dict[str, Path]) -> None:
    sd1, clip = _handles(files["sd1_0"])
    sdxl, clip_xl = _handles(files["sdxl"])
    with pytest.raises(ModelError, match=r"ModelMergeSimple: model1 is SD1\.x but model2 is SDXL"):
        ModelMergeSimple().run(CTX, sd1, sdxl, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="CLIPMergeAdd"):
        CLIPMergeAdd().run(CTX, clip, clip_xl)  # type: ignore[arg-type]
