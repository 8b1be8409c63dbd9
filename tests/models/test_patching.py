"""LoRA patching through the ModelManager, on tiny real checkpoints and LoRA files written in each format.

Expected weights are computed here from the formats' definitions (``W + strength * alpha / rank *
up @ down`` and so on); target names are written out by hand in each tool's spelling, so the key
tables are checked, not reused. Convolution adapters are also checked by running the adapter's
layers one after another and comparing with one convolution by the patched delta.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from engine.errors import LoraMismatch, ModelError
from engine.models.handles import ClipHandle, FileRef, ModelHandle, WeightPatch
from engine.models.loaders import CheckpointFile, detect_family
from engine.models.manager import ModelManager
from engine.models.patching import LoraPatcher, kohya_text_key, kohya_unet_key
from tests.fixtures.tiny_checkpoints import build_checkpoint, unet_config

RANK = 4
Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # [32, 32] in the tiny SD1 UNet
K2 = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [32, 64]: context width 64
CONV = "input_blocks.1.0.in_layers.2.weight"  # [32, 32, 3, 3]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {family: build_checkpoint(root / f"tiny-{family}.safetensors", family, dtype=torch.float32)
            for family in ("sd1", "sd2", "sdxl")}


def handles(path: Path) -> tuple[ModelHandle, ClipHandle]:
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    ref = FileRef.of(path)
    return ModelHandle(ref, family), ClipHandle(ref, family)


def write_lora(path: Path, tensors: Mapping[str, Tensor]) -> FileRef:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return FileRef.of(path)


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + sum(shape))) * 0.1


def lora_pair(name: str, out: int, inp: int, *, alpha: float | None = 2.0, seed: int = 0,
              up: str = ".lora_up.weight", down: str = ".lora_down.weight") -> dict[str, Tensor]:
    tensors = {name + up: randn(out, RANK, seed=seed), name + down: randn(RANK, inp, seed=seed + 1)}
    if alpha is not None:
        tensors[name + ".alpha"] = torch.tensor(alpha)
    return tensors


def lora_delta(tensors: Mapping[str, Tensor], name: str, *, up: str = ".lora_up.weight",
               down: str = ".lora_down.weight") -> Tensor:
    """scale * up @ down from the definition (scale = alpha / rank, 1 without alpha)."""
    alpha = tensors.get(name + ".alpha")
    scale = float(alpha) / RANK if alpha is not None else 1.0
    return scale * (tensors[name + up].flatten(1) @ tensors[name + down].flatten(1))


def weights(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: param.detach().clone() for name, param in module.named_parameters()}


def patched(manager: ModelManager, handle: ModelHandle, *patches: WeightPatch) -> dict[str, Tensor]:
    model = handle
    for patch in patches:
        model = model.with_patch(patch)
    return weights(manager.unet(model))


def assert_delta(after: Tensor, before: Tensor, delta: Tensor) -> None:
    torch.testing.assert_close(after, before + delta.reshape(before.shape), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ UNet names and formats


def test_kohya_diffusers_names_linear_and_conv(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    names = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (Q, 32, 32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (K2, 32, 64),
        "lora_unet_down_blocks_0_attentions_0_proj_in": ("input_blocks.1.1.proj_in.weight", 32, 32),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2":
            ("middle_block.1.transformer_blocks.0.ff.net.2.weight", 64, 256),
        "lora_unet_up_blocks_0_attentions_1_proj_out": ("output_blocks.1.1.proj_out.weight", 64, 64),
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut": ("input_blocks.3.0.skip_connection.weight", 64, 32),
        "lora_unet_up_blocks_0_resnets_1_time_emb_proj": ("output_blocks.1.0.emb_layers.1.weight", 64, 128),
    }
    tensors: dict[str, Tensor] = {}
    for index, (name, (_, out, inp)) in enumerate(names.items()):
        tensors.update(lora_pair(name, out, inp, seed=10 * index, alpha=None if index == 2 else 2.0))
    ref = write_lora(tmp_path / "kohya.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 0.8))
    for name, (param, _, _) in names.items():
        assert_delta(after[param], before[param], 0.8 * lora_delta(tensors, name))
    untouched = set(before) - {param for param, _, _ in names.values()}
    assert all(torch.equal(after[name], before[name]) for name in untouched)


def test_kohya_ldm_names(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    tensors = {**lora_pair("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", 32, 32),
               **lora_pair("lora_unet_output_blocks_1_2_conv", 64, 64 * 9, seed=5)}
    ref = write_lora(tmp_path / "ldm.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.0))
    assert_delta(after[Q], before[Q], lora_delta(tensors, "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"))
    upsample = "output_blocks.1.2.conv.weight"
    assert_delta(after[upsample], before[upsample], lora_delta(tensors, "lora_unet_output_blocks_1_2_conv"))


def test_peft_and_attention_processor_names(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    peft = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    processor = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out"
    tensors = {**lora_pair(peft, 32, 32, alpha=None, up=".lora_B.weight", down=".lora_A.weight"),
               **lora_pair(processor, 64, 64, alpha=None, up="_lora.up.weight", down="_lora.down.weight")}
    ref = write_lora(tmp_path / "peft.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.5))
    assert_delta(after[Q], before[Q], 1.5 * lora_delta(tensors, peft, up=".lora_B.weight", down=".lora_A.weight"))
    out = "input_blocks.3.1.transformer_blocks.0.attn1.to_out.0.weight"
    assert_delta(after[out], before[out],
                 1.5 * lora_delta(tensors, processor, up="_lora.up.weight", down="_lora.down.weight"))


def conv_delta(after: Mapping[str, Tensor], before: Mapping[str, Tensor], name: str, scale: float) -> Tensor:
    return (after[name] - before[name]) / scale


def test_locon_conv_3x3_down_1x1_up(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    down, up = randn(RANK, 32, 3, 3, seed=1), randn(32, RANK, 1, 1, seed=2)
    ref = write_lora(tmp_path / "locon.safetensors", {f"{name}.lora_down.weight": down,
                                                      f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)})
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 2.0))
    delta = conv_delta(after, before, CONV, 2.0 * 1.0 / RANK)
    x = randn(1, 32, 6, 6, seed=3)
    layered = F.conv2d(F.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), layered, rtol=1e-4, atol=1e-5)


def test_locon_tucker_mid(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    down, mid, up = randn(RANK, 32, 1, 1, seed=4), randn(RANK, RANK, 3, 3, seed=5), randn(32, RANK, 1, 1, seed=6)
    ref = write_lora(tmp_path / "tucker.safetensors", {
        f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up,
        f"{name}.alpha": torch.tensor(8.0)})
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 0.5))
    delta = conv_delta(after, before, CONV, 0.5 * 8.0 / RANK)
    x = randn(1, 32, 6, 6, seed=7)
    layered = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), layered, rtol=1e-4, atol=1e-5)


def tucker_layers(x: Tensor, core: Tensor, w_a: Tensor, w_b: Tensor) -> Tensor:
    """A Tucker factor run as layers: 1x1 conv by w_b (down), the kxk core, 1x1 conv by w_a^T (up)."""
    return F.conv2d(F.conv2d(F.conv2d(x, w_b[:, :, None, None]), core, padding=1), w_a.T[:, :, None, None])


def ones_factor(rank: int, out: int, inp: int) -> tuple[Tensor, Tensor, Tensor]:
    """(core, w_a, w_b) of a Tucker factor that is 1 everywhere."""
    core, w_a, w_b = torch.zeros(rank, rank, 3, 3), torch.zeros(rank, out), torch.zeros(rank, inp)
    core[0, 0], w_a[0], w_b[0] = 1.0, 1.0, 1.0
    return core, w_a, w_b


def test_loha_linear_and_tucker_conv(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    w = {f"{lin}.hada_w1_a": randn(32, RANK, seed=1), f"{lin}.hada_w1_b": randn(RANK, 32, seed=2),
         f"{lin}.hada_w2_a": randn(32, RANK, seed=3), f"{lin}.hada_w2_b": randn(RANK, 32, seed=4),
         f"{lin}.alpha": torch.tensor(2.0)}
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    core, w_a, w_b = randn(RANK, RANK, 3, 3, seed=5), randn(RANK, 32, seed=6), randn(RANK, 32, seed=7)
    ones = ones_factor(RANK, 32, 32)  # the Hadamard partner is all ones, so the delta is the first factor
    t = {f"{conv}.hada_t1": core, f"{conv}.hada_w1_a": w_a, f"{conv}.hada_w1_b": w_b,
         f"{conv}.hada_t2": ones[0], f"{conv}.hada_w2_a": ones[1], f"{conv}.hada_w2_b": ones[2]}
    ref = write_lora(tmp_path / "loha.safetensors", {**w, **t})
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 0.7))
    expected = (w[f"{lin}.hada_w1_a"] @ w[f"{lin}.hada_w1_b"]) * (w[f"{lin}.hada_w2_a"] @ w[f"{lin}.hada_w2_b"])
    assert_delta(after[Q], before[Q], 0.7 * 2.0 / RANK * expected)
    delta = conv_delta(after, before, CONV, 0.7)  # no alpha: scale 1
    x = randn(1, 32, 6, 6, seed=8)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), tucker_layers(x, core, w_a, w_b), rtol=1e-4, atol=1e-5)


def test_lokr_tucker_conv(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    core, w_a, w_b = randn(RANK, RANK, 3, 3, seed=1), randn(RANK, 32, seed=2), randn(RANK, 32, seed=3)
    ref = write_lora(tmp_path / "lokr-tucker.safetensors", {  # kron([[1]], w2) = w2
        f"{conv}.lokr_w1": torch.ones(1, 1), f"{conv}.lokr_t2": core, f"{conv}.lokr_w2_a": w_a,
        f"{conv}.lokr_w2_b": w_b, f"{conv}.alpha": torch.tensor(2.0)})
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.0))
    delta = conv_delta(after, before, CONV, 2.0 / RANK)
    x = randn(1, 32, 6, 6, seed=4)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), tucker_layers(x, core, w_a, w_b), rtol=1e-4, atol=1e-5)


def test_lokr_linear_and_conv(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    lin = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    w1, w2_a, w2_b = randn(4, 2, seed=1), randn(8, 2, seed=2), randn(2, 16, seed=3)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    c1_a, c1_b, c2 = randn(2, 1, seed=4), randn(1, 4, seed=5), randn(16, 8, 3, 3, seed=6)
    ref = write_lora(tmp_path / "lokr.safetensors", {
        f"{lin}.lokr_w1": w1, f"{lin}.lokr_w2_a": w2_a, f"{lin}.lokr_w2_b": w2_b, f"{lin}.alpha": torch.tensor(1.0),
        f"{conv}.lokr_w1_a": c1_a, f"{conv}.lokr_w1_b": c1_b, f"{conv}.lokr_w2": c2, f"{conv}.alpha": torch.tensor(3.0),
    })
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.0))
    assert_delta(after[Q], before[Q], torch.kron(w1, w2_a @ w2_b) * (1.0 / 2))  # alpha / rank of w2_a @ w2_b
    conv_expected = torch.kron((c1_a @ c1_b)[:, :, None, None], c2) * (3.0 / 1)  # alpha / rank of w1_a @ w1_b
    assert_delta(after[CONV], before[CONV], conv_expected)


def test_diff_weight_and_bias(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "diffusion_model.input_blocks.1.1.proj_out"
    diff, diff_b = randn(32, 32, 1, 1, seed=1), randn(32, seed=2)
    ref = write_lora(tmp_path / "diff.safetensors", {f"{name}.diff": diff, f"{name}.diff_b": diff_b})
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 0.25))
    assert_delta(after["input_blocks.1.1.proj_out.weight"], before["input_blocks.1.1.proj_out.weight"], 0.25 * diff)
    assert_delta(after["input_blocks.1.1.proj_out.bias"], before["input_blocks.1.1.proj_out.bias"], 0.25 * diff_b)


def test_sdxl_unet_kohya_ldm_names(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sdxl"])
    name = "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k"  # kohya's SDXL spelling
    tensors = lora_pair(name, 128, 192)
    ref = write_lora(tmp_path / "xl.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.0))
    param = "input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight"
    assert_delta(after[param], before[param], lora_delta(tensors, name))


# ------------------------------------------------------------------------------------ text encoders


def tower_linear(encoder: torch.nn.Module, tower: str, layer: int, path: str) -> Tensor:
    module = encoder.towers[tower].text_model.encoder.layers[layer]
    for part in path.split("."):
        module = getattr(module, part)
    return module.weight.detach().clone()


@pytest.mark.parametrize(("family", "tower"), [("sd1", "clip_l"), ("sd2", "clip_h")])
def test_text_encoder_lora_te(checkpoints: dict[str, Path], tmp_path: Path, family: str, tower: str) -> None:
    _, clip = handles(checkpoints[family])
    kohya = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    peft = "text_encoder.text_model.encoder.layers.1.mlp.fc1"
    tensors = {**lora_pair(kohya, 64, 64), **lora_pair(peft, 256, 64, up=".lora_B.weight", down=".lora_A.weight")}
    ref = write_lora(tmp_path / "te.safetensors", tensors)
    manager = ModelManager("cpu")
    encoder = manager.text_encoder(clip)
    q0, fc1 = tower_linear(encoder, tower, 0, "self_attn.q_proj"), tower_linear(encoder, tower, 1, "mlp.fc1")
    encoder = manager.text_encoder(clip.with_patch(WeightPatch(ref, 0.6)))
    assert_delta(tower_linear(encoder, tower, 0, "self_attn.q_proj"), q0, 0.6 * lora_delta(tensors, kohya))
    assert_delta(tower_linear(encoder, tower, 1, "mlp.fc1"), fc1,
                 0.6 * lora_delta(tensors, peft, up=".lora_B.weight", down=".lora_A.weight"))
    encoder = manager.text_encoder(clip)
    assert torch.equal(tower_linear(encoder, tower, 0, "self_attn.q_proj"), q0)


def test_sdxl_text_encoders_te1_te2(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    _, clip = handles(checkpoints["sdxl"])
    te1 = "lora_te1_text_model_encoder_layers_1_self_attn_v_proj"
    te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc2"
    peft2 = "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj"
    tensors = {**lora_pair(te1, 64, 64), **lora_pair(te2, 128, 512, seed=3),
               **lora_pair(peft2, 128, 128, seed=5, up=".lora_B.weight", down=".lora_A.weight")}
    ref = write_lora(tmp_path / "xl-te.safetensors", tensors)
    manager = ModelManager("cpu")
    encoder = manager.text_encoder(clip)
    before = (tower_linear(encoder, "clip_l", 1, "self_attn.v_proj"), tower_linear(encoder, "clip_g", 0, "mlp.fc2"),
              tower_linear(encoder, "clip_g", 1, "self_attn.out_proj"))
    encoder = manager.text_encoder(clip.with_patch(WeightPatch(ref, 1.0)))
    assert_delta(tower_linear(encoder, "clip_l", 1, "self_attn.v_proj"), before[0], lora_delta(tensors, te1))
    assert_delta(tower_linear(encoder, "clip_g", 0, "mlp.fc2"), before[1], lora_delta(tensors, te2))
    assert_delta(tower_linear(encoder, "clip_g", 1, "self_attn.out_proj"), before[2],
                 lora_delta(tensors, peft2, up=".lora_B.weight", down=".lora_A.weight"))


# ------------------------------------------------------------------------------------ stacking, strengths, restore


def test_two_loras_stack_additively(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    first, second = lora_pair(name, 32, 32, seed=1), lora_pair(name, 32, 32, seed=2, alpha=1.0)
    second.update(lora_pair("lora_unet_down_blocks_0_resnets_0_conv1", 32, 32 * 9, seed=3))
    a, b = write_lora(tmp_path / "a.safetensors", first), write_lora(tmp_path / "b.safetensors", second)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(a, 0.5), WeightPatch(b, -1.25))
    assert_delta(after[Q], before[Q], 0.5 * lora_delta(first, name) - 1.25 * lora_delta(second, name))
    assert_delta(after[CONV], before[CONV], -1.25 * lora_delta(second, "lora_unet_down_blocks_0_resnets_0_conv1"))


def unet_output(unet: torch.nn.Module) -> Tensor:
    x, context = randn(1, 4, 8, 8, seed=1) * 10, randn(1, 77, 64, seed=2) * 10
    with torch.no_grad():
        return unet(x, torch.tensor([500.0]), context)


def sd1_lora(tmp_path: Path) -> FileRef:
    tensors = {**lora_pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
               **lora_pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", 64, 64, seed=4),
               **lora_pair("lora_te_text_model_encoder_layers_0_mlp_fc2", 64, 256, seed=6)}
    return write_lora(tmp_path / "sd1-lora.safetensors", {k: v * 10 for k, v in tensors.items()})


def test_strength_zero_is_bit_equal_to_no_lora(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    ref = sd1_lora(tmp_path)
    manager = ModelManager("cpu")
    plain = unet_output(manager.unet(model))
    assert not torch.equal(unet_output(manager.unet(model.with_patch(WeightPatch(ref, 1.0)))), plain)
    assert torch.equal(unet_output(manager.unet(model.with_patch(WeightPatch(ref, 0.0)))), plain)


def test_unpatch_restores_every_weight_exactly(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, clip = handles(checkpoints["sd1"])
    ref = sd1_lora(tmp_path)
    manager = ModelManager("cpu")
    original, original_text = weights(manager.unet(model)), weights(manager.text_encoder(clip))
    for strength in (1.0, -3.0, 0.37):  # switch between patch sets several times
        changed = weights(manager.unet(model.with_patch(WeightPatch(ref, strength))))
        assert not torch.equal(changed[Q], original[Q])
        weights(manager.text_encoder(clip.with_patch(WeightPatch(ref, strength))))
    restored = weights(manager.unet(model))
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[name], original[name]) for name in original)
    restored_text = weights(manager.text_encoder(clip))
    assert all(torch.equal(restored_text[name], original_text[name]) for name in original_text)
    # A patch set reached by way of others equals the same set applied to fresh weights.
    direct = patched(ModelManager("cpu"), model, WeightPatch(ref, 0.37))
    assert torch.equal(patched(manager, model, WeightPatch(ref, 0.37))[Q], direct[Q])


def test_fp16_weights_are_patched_in_fp32_and_restored(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = lora_pair(name, 32, 32)
    ref = write_lora(tmp_path / "half.safetensors", tensors)
    manager = ModelManager("cpu", dtype=torch.float16)
    before = weights(manager.unet(model))
    after = patched(manager, model, WeightPatch(ref, 1.0))
    assert after[Q].dtype == torch.float16
    expected = (before[Q].float() + lora_delta(tensors, name)).half()
    torch.testing.assert_close(after[Q], expected, rtol=0, atol=1e-3)
    assert all(torch.equal(value, before[key]) for key, value in patched(manager, model).items())


def test_changing_strength_does_not_reread_the_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = lora_pair(name, 32, 32)
    ref = write_lora(tmp_path / "once.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    patched(manager, model, WeightPatch(ref, 1.0))
    assert manager.patcher.files.reads == 1
    Path(ref.path).unlink()  # from now on only the cache can provide the tensors
    for strength in (0.5, -2.0):
        after = patched(manager, model, WeightPatch(ref, strength))
        assert_delta(after[Q], before[Q], strength * lora_delta(tensors, name))
    assert manager.patcher.files.reads == 1


def test_edited_file_is_a_new_entry(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sd1"])
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "edited.safetensors"
    first = write_lora(path, lora_pair(name, 32, 32, seed=1))
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    patched(manager, model, WeightPatch(first, 1.0))
    tensors = lora_pair(name, 32, 32, seed=2, alpha=None)
    second = write_lora(path, tensors)
    if second == first:  # same size and an mtime clock too coarse to tell: make the edit visible
        os.utime(path, ns=(first.mtime_ns + 1_000_000, first.mtime_ns + 1_000_000))
        second = FileRef.of(path)
    after = patched(manager, model, WeightPatch(second, 1.0))
    assert_delta(after[Q], before[Q], lora_delta(tensors, name))
    assert manager.patcher.files.reads == 2


# ------------------------------------------------------------------------------------ warnings and errors


def test_unmatched_keys_are_named_in_one_warning(checkpoints: dict[str, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    model, _ = handles(checkpoints["sd1"])
    good = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {**lora_pair(good, 32, 32), **lora_pair("lora_unet_down_blocks_0_attentions_0_no_such_layer", 32, 32),
               **lora_pair("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 48),  # wrong shape: skipped
               "something_else.weight": torch.zeros(3)}
    ref = write_lora(tmp_path / "partly.safetensors", tensors)
    manager = ModelManager("cpu")
    before = weights(manager.unet(model))
    with caplog.at_level(logging.WARNING, logger="engine.models.lora_plan"):
        after = patched(manager, model, WeightPatch(ref, 1.0))
        patched(manager, model, WeightPatch(ref, 0.5))  # same file, other strength: no second warning
    records = [r for r in caplog.records if r.name == "engine.models.lora_plan" and r.levelno == logging.WARNING]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "partly.safetensors" in message and "no_such_layer" in message
    assert "proj_in" in message and "something_else.weight" in message
    assert_delta(after[Q], before[Q], lora_delta(tensors, good))
    assert torch.equal(after["input_blocks.1.1.proj_in.weight"], before["input_blocks.1.1.proj_in.weight"])


def sdxl_lora(tmp_path: Path) -> FileRef:
    tensors = {**lora_pair("lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k", 128, 192),
               **lora_pair("lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", 128, 128),
               **lora_pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 64, 64),
               **lora_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 128, 128)}
    return write_lora(tmp_path / "an-sdxl-lora.safetensors", tensors)


def test_sdxl_lora_on_sd1_is_a_clear_error(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, clip = handles(checkpoints["sd1"])
    ref = sdxl_lora(tmp_path)
    manager = ModelManager("cpu")
    original = weights(manager.unet(model))
    with pytest.raises(LoraMismatch, match=r"an-sdxl-lora\.safetensors.*192.*SD1\.x UNet"):
        manager.unet(model.with_patch(WeightPatch(ref, 1.0)))
    second_tower = r"an-sdxl-lora\.safetensors.*SDXL's second text encoder.*SD1\.x text encoder"
    with pytest.raises(LoraMismatch, match=second_tower):
        manager.text_encoder(clip.with_patch(WeightPatch(ref, 1.0)))
    unchanged = weights(manager.unet(model))
    assert all(torch.equal(unchanged[name], original[name]) for name in original)


def test_sd1_lora_on_sdxl_is_a_clear_error(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, _ = handles(checkpoints["sdxl"])
    manager = ModelManager("cpu")
    with pytest.raises(LoraMismatch, match=r"sd1-lora\.safetensors.*SDXL UNet"):
        manager.unet(model.with_patch(WeightPatch(sd1_lora(tmp_path), 1.0)))


def test_a_checkpoint_is_not_a_lora(checkpoints: dict[str, Path]) -> None:
    model, _ = handles(checkpoints["sd1"])
    manager = ModelManager("cpu")
    with pytest.raises(ModelError, match="holds no LoRA weights"):
        manager.unet(model.with_patch(WeightPatch(FileRef.of(checkpoints["sd2"]), 1.0)))


# ------------------------------------------------------------------------------------ names for LoRA makers


def test_kohya_key_helpers() -> None:
    sd1 = unet_config("sd1")
    assert (kohya_unet_key("input_blocks.1.1.transformer_blocks.0.attn1.to_q", sd1)
            == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert kohya_unet_key("output_blocks.1.0.in_layers.2", sd1) == "lora_unet_up_blocks_0_resnets_1_conv1"
    assert (kohya_unet_key("input_blocks.3.1.transformer_blocks.1.attn2.to_k", unet_config("sdxl"))
            == "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k")
    assert (kohya_text_key("encoder.layers.0.self_attn.q_proj")
            == "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    assert kohya_text_key("encoder.layers.11.mlp.fc2", encoder=2) == "lora_te2_text_model_encoder_layers_11_mlp_fc2"


@pytest.mark.parametrize(("reuse_buffers", "backup_device"), [(False, None), (True, "cpu"), (False, "cpu")])
def test_patcher_options_give_the_same_weights(checkpoints: dict[str, Path], tmp_path: Path,
                                               reuse_buffers: bool, backup_device: str | None) -> None:
    model, _ = handles(checkpoints["sd1"])
    ref = sd1_lora(tmp_path)
    expected = patched(ModelManager("cpu"), model, WeightPatch(ref, 0.7))
    unet = ModelManager("cpu").unet(model)
    original = weights(unet)
    patcher = LoraPatcher(reuse_buffers=reuse_buffers, backup_device=backup_device)
    for strength in (2.0, 0.7):
        patcher.apply(unet, [WeightPatch(ref, strength)], "SD1.x")
    assert all(torch.equal(value, expected[name]) for name, value in weights(unet).items())
    patcher.apply(unet, [], "SD1.x")
    assert all(torch.equal(value, original[name]) for name, value in weights(unet).items())
    assert patcher.applied(unet) == ()
