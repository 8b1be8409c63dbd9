"""LoRAs for the rectified-flow transformers: SD3/SD3.5 (MMDiT) and Flux.1, on tiny real models and LoRA files.

The tiny models come from diffusers' own SD3Transformer2DModel / FluxTransformer2DModel with random weights,
renamed to the single-file layout by the parity tests' converters, written to .safetensors and loaded into
Loom's modules. LoRA files are written in each tool's spelling and applied through :class:`LoraPatcher`.

* Exact weights: the expected parameter and row block of every target are written out by hand below (not
  read from Loom's key tables), and the patched weight must equal ``W + strength * alpha / rank * up @ down``
  on exactly those rows (diffusers' (scale, shift) halves swapped where the checkpoint holds (shift, scale)),
  every other row and weight bit-equal.
* Independent check: a LoRA on every linear layer of diffusers' model, in diffusers' names, is added to
  diffusers' separate weights by hand; Loom's patched model must give the same outputs as that diffusers model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.backend.flow_text import FLUX_CLIP_L, FlowTextEncoder
from engine.backend.flux import Flux
from engine.backend.mmdit import MMDiT
from engine.backend.unet import UNetModel
from engine.errors import LoraMismatch
from engine.models.handles import FileRef, WeightPatch
from engine.models.patching import LoraPatcher
from tests.backend.conftest import relative_error
from tests.backend.flow_text_files import CLIP_L_WIDTH, T5_WIDTH, reference_towers, train_spiece
from tests.backend.test_flow_text import _clip as clip_tower
from tests.backend.test_flow_text import _t5 as t5_tower
from tests.backend.test_flux import _load_loom as load_loom_flux
from tests.backend.test_flux import _reference as flux_reference
from tests.backend.test_flux import _run_reference as run_flux_reference
from tests.backend.test_mmdit import TINY_SD35_MEDIUM, _save_checkpoint, _tiny_diffusers
from tests.backend.test_mmdit import _load_loom as load_loom_mmdit
from tests.fixtures.tiny_checkpoints import unet_config

FLUX = "Flux.1 dev"
SD35 = "SD3.5"
H = 32  # hidden width of both tiny transformers
MLP = 128  # their MLP width


# ------------------------------------------------------------------------------------ tiny models and files


def flux_models(tmp_path: Path, seed: int = 1) -> tuple[Any, Flux]:
    """diffusers' tiny Flux (2 double, 2 single blocks, guidance) and Loom's Flux loaded from it through a file."""
    reference = flux_reference(True, 2, 2, seed=seed)
    model = load_loom_flux(reference, tmp_path).requires_grad_(False)
    assert (model.config.hidden_size, model.config.mlp_hidden) == (H, MLP)
    return reference, model


def sd35_models(tmp_path: Path, seed: int = 2) -> tuple[Any, MMDiT]:
    """diffusers' tiny SD3.5 medium (3 joint blocks, attn2 in block 0) and Loom's MMDiT loaded from it."""
    reference = _tiny_diffusers(TINY_SD35_MEDIUM, seed=seed)
    path = tmp_path / "sd35-tiny.safetensors"
    _save_checkpoint(reference, TINY_SD35_MEDIUM["num_layers"], path)
    model = load_loom_mmdit(path, head_dim=TINY_SD35_MEDIUM["attention_head_dim"])
    assert model.config.hidden_size == H and model.config.x_block_self_attn_layers == (0,)
    return reference, model


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.1


@dataclass(frozen=True)
class Target:
    """One LoRA target in a file and where it must land: ``param`` rows ``start .. start + rows``."""

    name: str
    param: str
    start: int = 0
    rows: int | None = None  # None: all rows
    swap: bool = False  # the delta's two halves land swapped
    rank: int = 4
    alpha: float | None = 2.0
    peft: bool = False  # lora_A / lora_B instead of lora_down / lora_up
    kernel: tuple[int, ...] = ()  # a convolution's kernel (down is [rank, in, *kernel])


def lora_tensors(target: Target, out: int, inp: int, seed: int) -> dict[str, Tensor]:
    up, down = (".lora_B.weight", ".lora_A.weight") if target.peft else (".lora_up.weight", ".lora_down.weight")
    ones = (1,) * len(target.kernel)
    tensors = {target.name + up: randn(out, target.rank, *ones, seed=seed),
               target.name + down: randn(target.rank, inp, *target.kernel, seed=seed + 1)}
    if target.alpha is not None:
        tensors[target.name + ".alpha"] = torch.tensor(target.alpha)
    return tensors


def delta_of(tensors: Mapping[str, Tensor], target: Target) -> Tensor:
    """``alpha / rank * up @ down`` (scale 1 without alpha), from the definition, as a [rows, -1] matrix."""
    up, down = (".lora_B.weight", ".lora_A.weight") if target.peft else (".lora_up.weight", ".lora_down.weight")
    scale = target.alpha / target.rank if target.alpha is not None else 1.0
    return scale * (tensors[target.name + up].flatten(1) @ tensors[target.name + down].flatten(1))


def write_lora(path: Path, tensors: Mapping[str, Tensor]) -> FileRef:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return FileRef.of(path)


def weights(module: nn.Module) -> dict[str, Tensor]:
    return {name: param.detach().clone() for name, param in module.named_parameters()}


def lora_for(model: nn.Module, targets: list[Target]) -> dict[str, Tensor]:
    """LoRA tensors for ``targets``, sized from the model's weights (input width of the whole weight)."""
    shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
    tensors: dict[str, Tensor] = {}
    for index, target in enumerate(targets):
        shape = shapes[target.param]
        rows = target.rows if target.rows is not None else shape[0]
        tensors.update(lora_tensors(target, rows, shape[1], seed=100 + 7 * index))
    return tensors


def expected_weights(before: Mapping[str, Tensor], tensors: Mapping[str, Tensor], targets: list[Target],
                     strength: float) -> tuple[dict[str, Tensor], dict[str, set[int]]]:
    """The weights the targets should give, and the rows each touched parameter should change."""
    expected = {name: value.clone() for name, value in before.items()}
    touched: dict[str, set[int]] = {}
    for target in targets:
        weight = expected[target.param]
        rows = target.rows if target.rows is not None else weight.shape[0]
        delta = strength * delta_of(tensors, target)
        if target.swap:
            delta = torch.cat([delta[rows // 2:], delta[: rows // 2]])
        weight.view(weight.shape[0], -1)[target.start: target.start + rows] += delta
        touched.setdefault(target.param, set()).update(range(target.start, target.start + rows))
    return expected, touched


def assert_patched(after: Mapping[str, Tensor], before: Mapping[str, Tensor], expected: Mapping[str, Tensor],
                   touched: Mapping[str, set[int]]) -> None:
    for name, value in after.items():
        rows = touched.get(name, set())
        untouched = [row for row in range(value.shape[0]) if row not in rows]
        assert torch.equal(value[untouched], before[name][untouched]), f"{name}: rows outside the target changed"
        if rows:
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=f"{name} is off")
            assert not torch.equal(value, before[name])


def check_targets(model: nn.Module, label: str, targets: list[Target], path: Path, strength: float = 0.8) -> None:
    """Write ``targets`` as a LoRA file, apply it at ``strength`` and compare every weight with the definition."""
    tensors = lora_for(model, targets)
    ref = write_lora(path, tensors)
    before = weights(model)
    LoraPatcher().apply(model, [WeightPatch(ref, strength)], label)
    expected, touched = expected_weights(before, tensors, targets, strength)
    assert_patched(weights(model), before, expected, touched)


# ------------------------------------------------------------------------------------ Flux: names land on their rows


def test_flux_kohya_and_checkpoint_names(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    targets = [
        Target("lora_unet_double_blocks_0_img_attn_qkv", "double_blocks.0.img_attn.qkv.weight"),
        Target("lora_unet_double_blocks_1_txt_mod_lin", "double_blocks.1.txt_mod.lin.weight", rank=2, alpha=1.0),
        Target("lora_unet_single_blocks_1_linear1", "single_blocks.1.linear1.weight", rank=8, alpha=None),
        Target("lora_unet_single_blocks_0_linear2", "single_blocks.0.linear2.weight"),
        Target("lora_unet_final_layer_adaLN_modulation_1", "final_layer.adaLN_modulation.1.weight"),  # BFL order
        Target("lora_unet_img_in", "img_in.weight", rank=3, alpha=6.0),
        Target("diffusion_model.double_blocks.1.img_mlp.0", "double_blocks.1.img_mlp.0.weight", peft=True),
        Target("diffusion_model.guidance_in.in_layer", "guidance_in.in_layer.weight", peft=True, alpha=None),
        Target("diffusion_model.single_blocks.0.linear1_qkv", "single_blocks.0.linear1.weight", 0, 3 * H),
        Target("double_blocks.1.txt_attn.proj", "double_blocks.1.txt_attn.proj.weight", peft=True),  # bare BFL name
    ]
    check_targets(model, FLUX, targets, tmp_path / "flux-kohya.safetensors")


def flux_diffusers_targets() -> list[Target]:
    qkv0, txt1 = "double_blocks.0.img_attn.qkv.weight", "double_blocks.1.txt_attn.qkv.weight"
    linear1 = "single_blocks.{}.linear1.weight"
    t = "transformer."
    return [
        Target(t + "transformer_blocks.0.attn.to_q", qkv0, 0, H, peft=True),
        Target(t + "transformer_blocks.0.attn.to_k", qkv0, H, H, rank=2, alpha=1.0, peft=True),
        Target(t + "transformer_blocks.0.attn.to_v", qkv0, 2 * H, H, alpha=None, peft=True),
        Target(t + "transformer_blocks.1.attn.add_k_proj", txt1, H, H, peft=True),
        Target(t + "transformer_blocks.1.attn.add_q_proj", txt1, 0, H, rank=6, alpha=3.0, peft=True),
        Target(t + "transformer_blocks.0.attn.to_out.0", "double_blocks.0.img_attn.proj.weight", peft=True),
        Target(t + "transformer_blocks.1.attn.to_add_out", "double_blocks.1.txt_attn.proj.weight", peft=True),
        Target(t + "transformer_blocks.1.ff.net.0.proj", "double_blocks.1.img_mlp.0.weight", peft=True),
        Target(t + "transformer_blocks.0.norm1.linear", "double_blocks.0.img_mod.lin.weight", peft=True),
        Target(t + "transformer_blocks.1.norm1_context.linear", "double_blocks.1.txt_mod.lin.weight", peft=True),
        Target(t + "single_transformer_blocks.1.attn.to_v", linear1.format(1), 2 * H, H, peft=True),
        Target(t + "single_transformer_blocks.1.proj_mlp", linear1.format(1), 3 * H, MLP, rank=5, peft=True),
        Target(t + "single_transformer_blocks.0.proj_out", "single_blocks.0.linear2.weight", peft=True),
        Target(t + "single_transformer_blocks.0.norm.linear", "single_blocks.0.modulation.lin.weight", peft=True),
        Target(t + "norm_out.linear", "final_layer.adaLN_modulation.1.weight", 0, 2 * H, swap=True, peft=True),
        Target(t + "proj_out", "final_layer.linear.weight", peft=True),
        Target(t + "time_text_embed.text_embedder.linear_2", "vector_in.out_layer.weight", peft=True),
        # kohya's diffusers-style (OneTrainer) and LyCORIS spellings
        Target("lora_transformer_single_transformer_blocks_0_attn_to_q", linear1.format(0), 0, H, rank=3),
        Target("lycoris_transformer_blocks_0_ff_context_net_2", "double_blocks.0.txt_mlp.2.weight"),
        Target("lora_transformer_x_embedder", "img_in.weight", alpha=8.0),
    ]


def test_flux_diffusers_names_land_on_row_blocks(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    check_targets(model, FLUX, flux_diffusers_targets(), tmp_path / "flux-diffusers.safetensors", strength=-1.3)


def test_flux_separate_bias_diff_lands_on_its_rows(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    name = "transformer.transformer_blocks.1.attn.to_v"
    tensors = {**lora_tensors(Target(name, "", peft=True), H, H, seed=3), f"{name}.diff_b": randn(H, seed=4)}
    ref = write_lora(tmp_path / "bias.safetensors", tensors)
    before = weights(model)
    LoraPatcher().apply(model, [WeightPatch(ref, 0.5)], FLUX)
    bias = dict(model.named_parameters())["double_blocks.1.img_attn.qkv.bias"].detach()
    torch.testing.assert_close(bias[2 * H:], before["double_blocks.1.img_attn.qkv.bias"][2 * H:] + 0.5 * tensors[
        f"{name}.diff_b"])
    assert torch.equal(bias[: 2 * H], before["double_blocks.1.img_attn.qkv.bias"][: 2 * H])


def test_flux_lokr_and_loha_on_fused_and_whole_weights(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    mlp = "transformer.single_transformer_blocks.0.proj_mlp"  # LoKr on rows 96..224 of linear1 [224, 32]
    w1, w2 = randn(4, 2, seed=1), randn(MLP // 4, H // 2, seed=2)
    proj = "lora_unet_double_blocks_0_img_attn_proj"  # LoHa on the whole [32, 32] weight
    loha = {f"{proj}.hada_w1_a": randn(H, 4, seed=3), f"{proj}.hada_w1_b": randn(4, H, seed=4),
            f"{proj}.hada_w2_a": randn(H, 4, seed=5), f"{proj}.hada_w2_b": randn(4, H, seed=6),
            f"{proj}.alpha": torch.tensor(2.0)}
    ref = write_lora(tmp_path / "lycoris.safetensors", {f"{mlp}.lokr_w1": w1, f"{mlp}.lokr_w2": w2, **loha})
    before = weights(model)
    LoraPatcher().apply(model, [WeightPatch(ref, 0.6)], FLUX)
    after = weights(model)
    linear1 = "single_blocks.0.linear1.weight"
    torch.testing.assert_close(after[linear1][3 * H:], before[linear1][3 * H:] + 0.6 * torch.kron(w1, w2))
    assert torch.equal(after[linear1][: 3 * H], before[linear1][: 3 * H])
    hada = (loha[f"{proj}.hada_w1_a"] @ loha[f"{proj}.hada_w1_b"]) * (loha[f"{proj}.hada_w2_a"] @ loha[
        f"{proj}.hada_w2_b"])
    param = "double_blocks.0.img_attn.proj.weight"
    torch.testing.assert_close(after[param], before[param] + 0.6 * 2.0 / 4 * hada)


# ------------------------------------------------------------------------------------ SD3 / SD3.5


def test_sd3_kohya_and_checkpoint_names(tmp_path: Path) -> None:
    _, model = sd35_models(tmp_path)
    targets = [
        Target("lora_unet_joint_blocks_0_x_block_attn_qkv", "joint_blocks.0.x_block.attn.qkv.weight"),
        Target("lora_unet_joint_blocks_1_context_block_mlp_fc2", "joint_blocks.1.context_block.mlp.fc2.weight",
               rank=2, alpha=1.0),
        Target("lora_unet_joint_blocks_2_context_block_adaLN_modulation_1",  # pre-only: shift, scale; no swap
               "joint_blocks.2.context_block.adaLN_modulation.1.weight"),
        Target("lora_unet_x_embedder_proj", "x_embedder.proj.weight", kernel=(2, 2)),
        Target("diffusion_model.joint_blocks.0.x_block.attn2.proj", "joint_blocks.0.x_block.attn2.proj.weight",
               peft=True),
        Target("model.diffusion_model.final_layer.linear", "final_layer.linear.weight", alpha=None),
        Target("joint_blocks.1.x_block.adaLN_modulation.1", "joint_blocks.1.x_block.adaLN_modulation.1.weight"),
    ]
    check_targets(model, SD35, targets, tmp_path / "sd3-kohya.safetensors")


def test_sd3_diffusers_names_land_on_row_blocks(tmp_path: Path) -> None:
    _, model = sd35_models(tmp_path)
    x0, c0 = "joint_blocks.0.x_block", "joint_blocks.0.context_block"
    t = "transformer."
    targets = [
        Target(t + "transformer_blocks.0.attn.to_q", f"{x0}.attn.qkv.weight", 0, H, peft=True),
        Target(t + "transformer_blocks.0.attn.add_v_proj", f"{c0}.attn.qkv.weight", 2 * H, H, rank=2, peft=True),
        Target(t + "transformer_blocks.0.attn2.to_k", f"{x0}.attn2.qkv.weight", H, H, peft=True),
        Target(t + "transformer_blocks.0.attn2.to_out.0", f"{x0}.attn2.proj.weight", peft=True),
        Target(t + "transformer_blocks.0.norm1.linear", f"{x0}.adaLN_modulation.1.weight", peft=True),  # 9 chunks
        Target(t + "transformer_blocks.1.attn.to_add_out", "joint_blocks.1.context_block.attn.proj.weight", peft=True),
        Target(t + "transformer_blocks.1.ff_context.net.0.proj", "joint_blocks.1.context_block.mlp.fc1.weight",
               peft=True),
        Target(t + "transformer_blocks.1.norm1_context.linear",
               "joint_blocks.1.context_block.adaLN_modulation.1.weight", peft=True),
        Target(t + "transformer_blocks.2.norm1_context.linear",  # the pre-only block: (scale, shift) in diffusers
               "joint_blocks.2.context_block.adaLN_modulation.1.weight", 0, 2 * H, swap=True, peft=True),
        Target(t + "norm_out.linear", "final_layer.adaLN_modulation.1.weight", 0, 2 * H, swap=True, peft=True),
        Target(t + "pos_embed.proj", "x_embedder.proj.weight", kernel=(2, 2), peft=True),
        Target(t + "time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0.weight", peft=True),
        Target("lora_transformer_transformer_blocks_2_attn_to_v", "joint_blocks.2.x_block.attn.qkv.weight", 2 * H, H),
        Target("base_model.model.transformer_blocks.2.ff.net.2", "joint_blocks.2.x_block.mlp.fc2.weight", peft=True),
    ]
    check_targets(model, SD35, targets, tmp_path / "sd3-diffusers.safetensors", strength=1.7)


# ------------------------------------------------------------------------------------ against diffusers' own models


def linear_layers(reference: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, weight) of every linear / convolution layer of a diffusers transformer (all a LoRA trainer targets)."""
    for name, module in reference.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            yield name, module.weight


_SPELLINGS = (  # (how the diffusers name is written, PEFT names of up/down, with alpha)
    (lambda d: f"transformer.{d}", True, False),
    (lambda d: f"lora_transformer_{d.replace('.', '_')}", False, True),
    (lambda d: f"lycoris_{d.replace('.', '_')}", False, True),
    (lambda d: d, True, False),
    (lambda d: f"base_model.model.{d}", True, True),
)


def diffusers_lora(reference: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A LoRA on every layer of ``reference`` in its diffusers names (spellings and ranks varied), and the
    delta each layer's weight gets at strength 1 (computed from the definition)."""
    tensors: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}
    for index, (name, weight) in enumerate(linear_layers(reference)):
        spell, peft, alpha = _SPELLINGS[index % len(_SPELLINGS)]
        kernel = tuple(weight.shape[2:])
        target = Target(spell(name), "", rank=2 + index % 3, alpha=3.0 if alpha else None, peft=peft, kernel=kernel)
        part = lora_tensors(target, weight.shape[0], weight.shape[1], seed=1000 + 11 * index)
        tensors.update(part)
        deltas[name] = delta_of(part, target).reshape(weight.shape)
    return tensors, deltas


@torch.no_grad()
def add_by_hand(reference: nn.Module, deltas: Mapping[str, Tensor], strength: float) -> None:
    layers = dict(linear_layers(reference))
    for name, delta in deltas.items():
        layers[name].add_(delta, alpha=strength)


def test_flux_diffusers_lora_matches_diffusers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference, model = flux_models(tmp_path, seed=5)
    tensors, deltas = diffusers_lora(reference)
    assert any(".proj_mlp" in name for name in deltas) and "norm_out.linear" in deltas
    ref = write_lora(tmp_path / "flux-every-layer.safetensors", tensors)
    gen = torch.Generator().manual_seed(9)
    latent, ctx, y = torch.randn(2, 16, 8, 6, generator=gen), torch.randn(2, 5, 32, generator=gen), torch.randn(
        2, 16, generator=gen)
    t, g = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 1.0])
    with torch.no_grad():
        plain = model(latent, t, ctx, y, g)
        with caplog.at_level(logging.WARNING, logger="engine.models.lora_plan"):
            LoraPatcher().apply(model, [WeightPatch(ref, 0.9)], FLUX)
        assert not [r for r in caplog.records if r.name == "engine.models.lora_plan"], "some keys were not applied"
        add_by_hand(reference, deltas, 0.9)
        expected = run_flux_reference(reference, latent, t, ctx, y, g)
        actual = model(latent, t, ctx, y, g)
    assert relative_error(plain, expected) > 1e-2  # the LoRA changes the output
    assert relative_error(actual, expected) < 1e-4


def test_sd3_diffusers_lora_matches_diffusers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference, model = sd35_models(tmp_path, seed=6)
    tensors, deltas = diffusers_lora(reference)
    assert "transformer_blocks.0.attn2.to_q" in deltas and "transformer_blocks.2.norm1_context.linear" in deltas
    ref = write_lora(tmp_path / "sd35-every-layer.safetensors", tensors)
    gen = torch.Generator().manual_seed(4)
    x, context, pooled = torch.randn(2, 16, 12, 16, generator=gen), torch.randn(2, 7, 32, generator=gen), torch.randn(
        2, 16, generator=gen)
    timesteps = torch.tensor([300.0, 850.0])
    with torch.no_grad():
        plain = model(x, timesteps, context, pooled)
        with caplog.at_level(logging.WARNING, logger="engine.models.lora_plan"):
            LoraPatcher().apply(model, [WeightPatch(ref, 1.2)], SD35)
        assert not [r for r in caplog.records if r.name == "engine.models.lora_plan"], "some keys were not applied"
        add_by_hand(reference, deltas, 1.2)
        expected = reference(x, context, pooled, timesteps).sample
        actual = model(x, timesteps, context, pooled)
    assert (plain - expected).abs().max() > 1e-2
    assert (actual - expected).abs().max() < 1e-4


# ------------------------------------------------------------------------------------ Flux's text encoders


def test_flux_lora_text_encoder_keys_reach_clip_l_and_t5(tmp_path: Path) -> None:
    """kohya / OneTrainer (lora_te1_ CLIP-L, lora_te2_ and lora_te3_ T5) and diffusers (text_encoder.,
    text_encoder_2.) names on a Flux FlowTextEncoder; the file's transformer keys are not its business."""
    towers = reference_towers()
    encoder = FlowTextEncoder("flux", clip_l=clip_tower(towers, "clip_l", FLUX_CLIP_L),
                              t5xxl=t5_tower(towers, train_spiece(tmp_path / "spiece")))
    clip, t5 = "towers.clip_l.model.text_model.encoder.layers", "towers.t5xxl.model.encoder.block"
    targets = [
        Target("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", f"{clip}.0.self_attn.q_proj.weight"),
        Target("text_encoder.text_model.encoder.layers.1.mlp.fc1", f"{clip}.1.mlp.fc1.weight", peft=True),
        Target("lora_te2_encoder_block_0_layer_0_SelfAttention_q", f"{t5}.0.layer.0.SelfAttention.q.weight"),
        Target("lora_te3_encoder_block_2_layer_1_DenseReluDense_wo", f"{t5}.2.layer.1.DenseReluDense.wo.weight"),
        Target("text_encoder_2.encoder.block.1.layer.0.SelfAttention.v", f"{t5}.1.layer.0.SelfAttention.v.weight",
               peft=True),
    ]
    assert dict(encoder.named_parameters())[targets[2].param].shape[1] == T5_WIDTH
    assert dict(encoder.named_parameters())[targets[0].param].shape[1] == CLIP_L_WIDTH
    tensors = {**lora_for(encoder, targets),
               **lora_tensors(Target("lora_unet_double_blocks_0_img_attn_qkv", ""), 3 * H, H, seed=9)}
    ref = write_lora(tmp_path / "flux-with-te.safetensors", tensors)
    before = weights(encoder)
    LoraPatcher().apply(encoder, [WeightPatch(ref, 0.75)], FLUX)
    expected, touched = expected_weights(before, tensors, targets, 0.75)
    assert_patched(weights(encoder), before, expected, touched)


# ------------------------------------------------------------------------------------ strength 0 and restoring


def test_strength_zero_and_removal_restore_exactly(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    ref = write_lora(tmp_path / "flux.safetensors", lora_for(model, flux_diffusers_targets()))
    original = weights(model)
    patcher = LoraPatcher()

    def same() -> bool:
        return all(torch.equal(value, original[name]) for name, value in weights(model).items())

    patcher.apply(model, [WeightPatch(ref, 1.0)], FLUX)
    assert not same()
    patcher.apply(model, [WeightPatch(ref, 0.0)], FLUX)
    assert same()
    patcher.apply(model, [WeightPatch(ref, -0.7)], FLUX)
    patcher.apply(model, [], FLUX)
    assert same() and patcher.applied(model) == ()
    patcher.apply(model, [WeightPatch(ref, 2.0), WeightPatch(ref, 0.5)], FLUX)
    patcher.restore(model)
    assert same()


# ------------------------------------------------------------------------------------ another family's LoRA


def flux_kohya_lora(tmp_path: Path) -> FileRef:
    tensors: dict[str, Tensor] = {}
    for index, name in enumerate(("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1")):
        tensors.update(lora_tensors(Target(name, ""), 3 * H, H, seed=index))
    return write_lora(tmp_path / "a-flux-lora.safetensors", tensors)


def test_flux_lora_on_sd3_is_a_clear_error(tmp_path: Path) -> None:
    _, model = sd35_models(tmp_path)
    original = weights(model)
    with pytest.raises(LoraMismatch, match=r"a-flux-lora\.safetensors: 0 of its 2 targets for the SD3\.5 transformer "
                                           r".*looks like a LoRA for Flux\.1"):
        LoraPatcher().apply(model, [WeightPatch(flux_kohya_lora(tmp_path), 1.0)], SD35)
    assert all(torch.equal(value, original[name]) for name, value in weights(model).items())


def test_flux_diffusers_lora_on_sd3_is_refused_even_where_shapes_fit(tmp_path: Path) -> None:
    """The tiny models share widths, so a Flux LoRA's double-block layers fit SD3's: its names still tell."""
    _, model = sd35_models(tmp_path)
    targets = [Target("transformer.transformer_blocks.0.attn.to_q", "", peft=True),
               Target("transformer.single_transformer_blocks.0.attn.to_q", "", peft=True),
               Target("transformer.single_transformer_blocks.1.proj_mlp", "", peft=True)]
    tensors: dict[str, Tensor] = {}
    for index, target in enumerate(targets):
        tensors.update(lora_tensors(target, MLP if "proj_mlp" in target.name else H, H, seed=index))
    ref = write_lora(tmp_path / "flux-peft.safetensors", tensors)
    with pytest.raises(LoraMismatch, match=r"flux-peft\.safetensors: 1 of its 3 targets .*Flux\.1"):
        LoraPatcher().apply(model, [WeightPatch(ref, 1.0)], SD35)


def test_sd3_lora_on_flux_is_a_clear_error(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    tensors = lora_tensors(Target("lora_unet_joint_blocks_0_x_block_attn_qkv", ""), 3 * H, H, seed=1)
    ref = write_lora(tmp_path / "an-sd3-lora.safetensors", tensors)
    with pytest.raises(LoraMismatch, match=r"an-sd3-lora\.safetensors: 0 of its 1 targets for the Flux\.1 dev "
                                           r"transformer .*looks like a LoRA for SD3 / SD3\.5"):
        LoraPatcher().apply(model, [WeightPatch(ref, 1.0)], FLUX)


def test_sd1_lora_on_flux_is_a_clear_error(tmp_path: Path) -> None:
    _, model = flux_models(tmp_path)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {**lora_tensors(Target(name, ""), 320, 768, seed=1),
               **lora_tensors(Target("lora_te_text_model_encoder_layers_0_mlp_fc1", ""), 3072, 768, seed=2)}
    ref = write_lora(tmp_path / "an-sd1-lora.safetensors", tensors)
    with pytest.raises(LoraMismatch, match=r"an-sd1-lora\.safetensors: 0 of its 1 targets for the Flux\.1 dev "
                                           r"transformer .*looks like a LoRA for SD1\.x"):
        LoraPatcher().apply(model, [WeightPatch(ref, 1.0)], FLUX)


def test_flux_lora_on_a_unet_is_a_clear_error(tmp_path: Path) -> None:
    unet = UNetModel(unet_config("sd1")).requires_grad_(False)
    with pytest.raises(LoraMismatch, match=r"a-flux-lora\.safetensors: 0 of its 2 targets for the SD1\.x UNet "
                                           r".*looks like a LoRA for Flux\.1"):
        LoraPatcher().apply(unet, [WeightPatch(flux_kohya_lora(tmp_path), 1.0)], "SD1.x")


def test_unknown_and_misshaped_targets_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, model = sd35_models(tmp_path)
    good = Target("transformer.transformer_blocks.1.attn.to_k", "joint_blocks.1.x_block.attn.qkv.weight", H, H,
                  peft=True)
    tensors = {**lora_for(model, [good]),
               # the last block's context stream is pre-only: it has no output projection
               **lora_tensors(Target("transformer.transformer_blocks.2.attn.to_add_out", "", peft=True), H, H, seed=5),
               # 2*H rows do not fit the H rows of a q projection
               **lora_tensors(Target("transformer.transformer_blocks.1.attn.add_q_proj", "", peft=True), 2 * H, H,
                              seed=6)}
    ref = write_lora(tmp_path / "partly.safetensors", tensors)
    before = weights(model)
    with caplog.at_level(logging.WARNING, logger="engine.models.lora_plan"):
        LoraPatcher().apply(model, [WeightPatch(ref, 1.0)], SD35)
    messages = [r.getMessage() for r in caplog.records if r.name == "engine.models.lora_plan"]
    assert len(messages) == 1
    assert "transformer_blocks.2.attn.to_add_out (no such weight)" in messages[0]
    assert "add_q_proj (LoRA [64, 32] vs rows 0..32 of weight [96, 32])" in messages[0]
    expected, touched = expected_weights(before, tensors, [good], 1.0)
    assert_patched(weights(model), before, expected, touched)
