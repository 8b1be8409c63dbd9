"""Numerical equivalence of Loom's SD3/SD3.5 MMDiT (engine/backend/mmdit.py) with diffusers'
SD3Transformer2DModel (an independent implementation) on tiny random models in fp32.

The diffusers weights are renamed to the single-file checkpoint layout by :func:`diffusers_to_single_file`
below, saved as a real .safetensors file under ``model.diffusion_model.``, the configuration is detected
from the file's keys and shapes, and both models run on the same inputs. The key map is the fact check
of the layout (written for this test from the two naming schemes):

    diffusers                                        single-file (model.diffusion_model. ...)
    pos_embed.pos_embed                              pos_embed                [1, max**2, hidden]
    pos_embed.proj                                   x_embedder.proj          patch conv
    time_text_embed.timestep_embedder.linear_1/2     t_embedder.mlp.0/2
    time_text_embed.text_embedder.linear_1/2         y_embedder.mlp.0/2
    context_embedder                                 context_embedder
    transformer_blocks.N.attn.to_q/to_k/to_v         joint_blocks.N.x_block.attn.qkv        (q, k, v stacked)
    transformer_blocks.N.attn.add_q/k/v_proj         joint_blocks.N.context_block.attn.qkv
    transformer_blocks.N.attn.norm_q/norm_k          joint_blocks.N.x_block.attn.ln_q/ln_k
    transformer_blocks.N.attn.norm_added_q/k         joint_blocks.N.context_block.attn.ln_q/ln_k
    transformer_blocks.N.attn.to_out.0               joint_blocks.N.x_block.attn.proj
    transformer_blocks.N.attn.to_add_out             joint_blocks.N.context_block.attn.proj  (not in the last block)
    transformer_blocks.N.attn2.to_q/k/v, norm_q/k, to_out.0  joint_blocks.N.x_block.attn2.qkv, ln_q/k, proj
    transformer_blocks.N.norm1.linear                joint_blocks.N.x_block.adaLN_modulation.1
    transformer_blocks.N.norm1_context.linear        joint_blocks.N.context_block.adaLN_modulation.1
                                                     (last block: diffusers' (scale, shift) -> SD3's (shift, scale))
    transformer_blocks.N.ff.net.0.proj / ff.net.2    joint_blocks.N.x_block.mlp.fc1 / fc2
    transformer_blocks.N.ff_context.net.0.proj / .2  joint_blocks.N.context_block.mlp.fc1 / fc2
    norm_out.linear                                  final_layer.adaLN_modulation.1   (scale, shift swapped)
    proj_out                                         final_layer.linear
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.attention import load_weights
from engine.backend.mmdit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiT, MMDiTConfig, mmdit_config_from_state_dict

diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOLERANCE = 1e-4
PREFIX = "model.diffusion_model."

TINY: dict[str, Any] = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 3,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 16,
    "out_channels": 16,
    "pos_embed_max_size": 16,
}
TINY_SD35_MEDIUM: dict[str, Any] = {**TINY, "qk_norm": "rms_norm", "dual_attention_layers": (0,)}

RENAMES = [  # (diffusers pattern, single-file replacement), applied with re.fullmatch
    (r"pos_embed\.pos_embed", "pos_embed"),
    (r"pos_embed\.proj\.(.+)", r"x_embedder.proj.\1"),
    (r"time_text_embed\.timestep_embedder\.linear_1\.(.+)", r"t_embedder.mlp.0.\1"),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(.+)", r"t_embedder.mlp.2.\1"),
    (r"time_text_embed\.text_embedder\.linear_1\.(.+)", r"y_embedder.mlp.0.\1"),
    (r"time_text_embed\.text_embedder\.linear_2\.(.+)", r"y_embedder.mlp.2.\1"),
    (r"context_embedder\.(.+)", r"context_embedder.\1"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_([qk])\.(.+)", r"joint_blocks.\1.x_block.attn.ln_\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_([qk])\.(.+)", r"joint_blocks.\1.context_block.attn.ln_\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(.+)", r"joint_blocks.\1.x_block.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(.+)", r"joint_blocks.\1.context_block.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.attn2\.norm_([qk])\.(.+)", r"joint_blocks.\1.x_block.attn2.ln_\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn2\.to_out\.0\.(.+)", r"joint_blocks.\1.x_block.attn2.proj.\2"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(.+)", r"joint_blocks.\1.x_block.adaLN_modulation.1.\2"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(.+)", r"joint_blocks.\1.context_block.adaLN_modulation.1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(.+)", r"joint_blocks.\1.x_block.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(.+)", r"joint_blocks.\1.x_block.mlp.fc2.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(.+)", r"joint_blocks.\1.context_block.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(.+)", r"joint_blocks.\1.context_block.mlp.fc2.\2"),
    (r"norm_out\.linear\.(.+)", r"final_layer.adaLN_modulation.1.\1"),
    (r"proj_out\.(.+)", r"final_layer.linear.\1"),
]
FUSED_QKV = [  # (diffusers prefix of q, k, v; single-file qkv name)
    (r"transformer_blocks\.(\d+)\.attn\.to_([qkv])\.(.+)", r"joint_blocks.\1.x_block.attn.qkv.\3"),
    (r"transformer_blocks\.(\d+)\.attn\.add_([qkv])_proj\.(.+)", r"joint_blocks.\1.context_block.attn.qkv.\3"),
    (r"transformer_blocks\.(\d+)\.attn2\.to_([qkv])\.(.+)", r"joint_blocks.\1.x_block.attn2.qkv.\3"),
]
SWAPPED_HALVES = re.compile(r"final_layer\.adaLN_modulation\.1\..+")  # plus the last context block


def _swap_halves(tensor: Tensor) -> Tensor:
    """diffusers' AdaLayerNormContinuous chunks (scale, shift); SD3 stores (shift, scale)."""
    scale, shift = tensor.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def diffusers_to_single_file(state_dict: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Rename a diffusers SD3Transformer2DModel state dict to single-file names (without the prefix).
    Every diffusers key must be used exactly once."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    last_context = f"joint_blocks.{num_layers - 1}.context_block.adaLN_modulation.1."
    for key, value in state_dict.items():
        for pattern, target in FUSED_QKV:
            if match := re.fullmatch(pattern, key):
                fused.setdefault(match.expand(target), {})[match.group(2)] = value
                break
        else:
            new = next((re.sub(p, t, key) for p, t in RENAMES if re.fullmatch(p, key)), None)
            assert new is not None, f"no single-file name for diffusers key {key}"
            swap = SWAPPED_HALVES.fullmatch(new) or new.startswith(last_context)
            out[new] = _swap_halves(value) if swap else value
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _tiny_diffusers(config: dict[str, Any], seed: int) -> Any:
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".norm_" in name:  # RMSNorm weights start at 1: make a swapped/missing norm visible
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def _save_checkpoint(model: Any, num_layers: int, path: Path) -> None:
    state = dict(model.state_dict())
    state.setdefault("pos_embed.pos_embed", model.pos_embed.pos_embed)  # a non-persistent buffer in some versions
    single = diffusers_to_single_file(state, num_layers)
    safetensors_torch.save_file({PREFIX + k: v.contiguous() for k, v in single.items()}, str(path))


def _inputs(config: dict[str, Any], height: int, width: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, config["in_channels"], height, width, generator=generator)
    timesteps = torch.tensor([0.3, 0.85]) * 1000  # SD3: sigma * 1000, as diffusers' scheduler passes them
    context = torch.randn(2, 7, config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(2, config["pooled_projection_dim"], generator=generator)
    return x, timesteps, context, pooled


def _load_loom(path: Path, head_dim: int) -> MMDiT:
    tensors = safetensors_torch.load_file(str(path))
    config = mmdit_config_from_state_dict(tensors, PREFIX, head_dim=head_dim)
    return MMDiT.from_state_dict(tensors, PREFIX, config)


@pytest.mark.parametrize(
    ("config", "qk_norm", "dual"),
    [(TINY, None, ()), (TINY_SD35_MEDIUM, "rms_norm", (0,))],
    ids=["sd3", "sd35-medium"],
)
def test_mmdit_matches_diffusers(
    tmp_path: Path, config: dict[str, Any], qk_norm: str | None, dual: tuple[int, ...]
) -> None:
    reference = _tiny_diffusers(config, seed=0)
    path = tmp_path / "sd3-tiny.safetensors"
    _save_checkpoint(reference, config["num_layers"], path)
    model = _load_loom(path, head_dim=config["attention_head_dim"])
    assert model.config == MMDiTConfig(
        depth=3, hidden_size=32, num_heads=4, context_in_dim=32, pooled_dim=16,
        pos_embed_max_size=16, qk_norm=qk_norm, x_block_self_attn_layers=dual,
    )
    for height, width in [(16, 16), (12, 20)]:  # 8x8 and 6x10 patches of the 16x16 position table
        x, timesteps, context, pooled = _inputs(config, height, width, seed=height)
        with torch.no_grad():
            expected = reference(x, context, pooled, timesteps).sample
            actual = model(x, timesteps, context, pooled)
        assert actual.shape == expected.shape == x.shape
        assert (actual - expected).abs().max() < TOLERANCE


def test_skip_layers_match_diffusers(tmp_path: Path) -> None:
    """Skip-layer guidance (SD3.5): leaving joint blocks out, as diffusers' ``skip_layers`` does."""
    reference = _tiny_diffusers(TINY_SD35_MEDIUM, seed=3)
    path = tmp_path / "sd35-tiny.safetensors"
    _save_checkpoint(reference, TINY_SD35_MEDIUM["num_layers"], path)
    model = _load_loom(path, head_dim=8)
    x, timesteps, context, pooled = _inputs(TINY_SD35_MEDIUM, 16, 16, seed=5)
    with torch.no_grad():
        expected = reference(x, context, pooled, timesteps, skip_layers=[1]).sample
        actual = model(x, timesteps, context, pooled, skip_layers={1})
        full = model(x, timesteps, context, pooled)
    assert (actual - expected).abs().max() < TOLERANCE
    assert (actual - full).abs().max() > 1e-3


def test_meta_build_and_streamed_load_equal_strict_load(tmp_path: Path) -> None:
    """The model loader's path: build on the meta device, assign tensors one at a time."""
    reference = _tiny_diffusers(TINY, seed=7)
    path = tmp_path / "sd3-tiny.safetensors"
    _save_checkpoint(reference, TINY["num_layers"], path)
    tensors = safetensors_torch.load_file(str(path))
    config = mmdit_config_from_state_dict(tensors, PREFIX, head_dim=8)
    with torch.device("meta"):
        streamed = MMDiT(config)
    load_weights(streamed, ((k[len(PREFIX):], v) for k, v in tensors.items()), dtype=torch.float32)
    x, timesteps, context, pooled = _inputs(TINY, 16, 16, seed=1)
    with torch.no_grad():
        assert torch.equal(streamed(x, timesteps, context, pooled), _load_loom(path, 8)(x, timesteps, context, pooled))


def test_latent_not_a_multiple_of_the_patch_is_padded_and_cropped() -> None:
    """A 15x13 latent runs as its circular padding to 16x14, cropped back (ComfyUI's behaviour)."""
    torch.manual_seed(0)
    model = MMDiT(MMDiTConfig(depth=2, hidden_size=32, num_heads=4, context_in_dim=32, pooled_dim=16,
                              pos_embed_max_size=16)).eval()
    x, timesteps = torch.randn(1, 16, 15, 13), torch.tensor([500.0])
    context, pooled = torch.randn(1, 5, 32), torch.randn(1, 16)
    with torch.no_grad():
        out = model(x, timesteps, context, pooled)
        padded = model(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular"), timesteps, context, pooled)
    assert out.shape == x.shape
    assert torch.allclose(out, padded[..., :15, :13], atol=1e-6)


def test_latent_larger_than_the_position_table_is_refused() -> None:
    model = MMDiT(MMDiTConfig(depth=1, hidden_size=32, num_heads=4, context_in_dim=32, pooled_dim=16,
                              pos_embed_max_size=4))
    with pytest.raises(ValueError, match="position table"):
        model(torch.randn(1, 16, 10, 8), torch.tensor([1.0]), torch.randn(1, 3, 32), torch.randn(1, 16))


@pytest.mark.parametrize(
    "preset", [SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM], ids=["sd3-medium", "sd35-large", "sd35-medium"]
)
def test_config_detection_round_trips_the_real_model_shapes(preset: MMDiTConfig) -> None:
    """Built on the meta device (no memory): names + shapes of the real models give their config back."""
    with torch.device("meta"):
        shapes = {PREFIX + k: tuple(v.shape) for k, v in MMDiT(preset).state_dict().items()}
    assert mmdit_config_from_state_dict(shapes) == preset
    assert shapes[PREFIX + "joint_blocks.0.x_block.attn.qkv.weight"] == (3 * preset.hidden_size, preset.hidden_size)
    last = preset.depth - 1
    assert PREFIX + f"joint_blocks.{last}.context_block.attn.proj.weight" not in shapes
    assert shapes[PREFIX + f"joint_blocks.{last}.context_block.adaLN_modulation.1.weight"][0] == 2 * preset.hidden_size


def test_config_detection_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"model\.diffusion_model\.pos_embed"):
        mmdit_config_from_state_dict({PREFIX + "x_embedder.proj.weight": (32, 16, 2, 2)})
    with torch.device("meta"):
        shapes = {PREFIX + k: tuple(v.shape) for k, v in MMDiT(SD3_MEDIUM).state_dict().items()}
    gapped = {k: v for k, v in shapes.items() if ".joint_blocks.5." not in k}
    with pytest.raises(ValueError, match=r"no block\(s\) \[5\]"):
        mmdit_config_from_state_dict(gapped)
