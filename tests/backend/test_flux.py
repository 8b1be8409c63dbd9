"""Numerical equivalence of Loom's Flux.1 transformer with diffusers' FluxTransformer2DModel (an
independent implementation) on tiny random models in fp32.

The diffusers weights are renamed to the single-file checkpoint layout (``flux1-dev.safetensors``)
by :func:`diffusers_flux_to_single_file` below, saved as a real .safetensors file, read back, the
configuration detected from the names and shapes, and loaded with ``strict=True``. The key map is
the fact check of the layout (diffusers name -> checkpoint name):

* ``x_embedder`` -> ``img_in``; ``context_embedder`` -> ``txt_in``
* ``time_text_embed.{timestep,guidance,text}_embedder.linear_{1,2}`` ->
  ``{time,guidance,vector}_in.{in,out}_layer``
* ``transformer_blocks.N`` -> ``double_blocks.N``: ``norm1.linear`` / ``norm1_context.linear`` ->
  ``img_mod.lin`` / ``txt_mod.lin``; ``attn.to_{q,k,v}`` (stacked in that order) -> ``img_attn.qkv``;
  ``attn.add_{q,k,v}_proj`` -> ``txt_attn.qkv``; ``attn.norm_{q,k}`` / ``attn.norm_added_{q,k}``
  (weight) -> ``{img,txt}_attn.norm.{query,key}_norm.scale``; ``attn.to_out.0`` / ``attn.to_add_out``
  -> ``{img,txt}_attn.proj``; ``ff.net.{0.proj,2}`` / ``ff_context.net.{0.proj,2}`` -> ``{img,txt}_mlp.{0,2}``
* ``single_transformer_blocks.N`` -> ``single_blocks.N``: ``norm.linear`` -> ``modulation.lin``;
  ``attn.to_{q,k,v}`` and ``proj_mlp`` stacked -> ``linear1``; ``attn.norm_{q,k}`` ->
  ``norm.{query,key}_norm.scale``; ``proj_out`` -> ``linear2``
* ``norm_out.linear`` -> ``final_layer.adaLN_modulation.1`` with its two halves swapped (diffusers
  stores scale then shift, the checkpoint shift then scale); ``proj_out`` -> ``final_layer.linear``

diffusers takes packed 64-channel tokens with explicit ids (its pipeline packs the latent 2x2 and
builds the ids); Loom's forward takes the 16-channel latent and does both inside, so the pipeline's
own packing helpers prepare diffusers' inputs here. Both multiply timestep and guidance by 1000.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.flux import (
    FLUX_DEV,
    FLUX_SCHNELL,
    Flux,
    FluxConfig,
    flux_config_from_state_dict,
    image_ids,
    patchify,
    unpatchify,
)
from tests.backend.conftest import relative_error

diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOLERANCE = 1e-4
AXES = (4, 6, 6)
TINY: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 16,
    "axes_dims_rope": AXES,
}

RENAMES: list[tuple[str, str]] = [
    (r"x_embedder\.", "img_in."),
    (r"context_embedder\.", "txt_in."),
    (r"time_text_embed\.timestep_embedder\.linear_1\.", "time_in.in_layer."),
    (r"time_text_embed\.timestep_embedder\.linear_2\.", "time_in.out_layer."),
    (r"time_text_embed\.guidance_embedder\.linear_1\.", "guidance_in.in_layer."),
    (r"time_text_embed\.guidance_embedder\.linear_2\.", "guidance_in.out_layer."),
    (r"time_text_embed\.text_embedder\.linear_1\.", "vector_in.in_layer."),
    (r"time_text_embed\.text_embedder\.linear_2\.", "vector_in.out_layer."),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.", r"double_blocks.\1.img_mod.lin."),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.", r"double_blocks.\1.txt_mod.lin."),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn.proj."),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn.proj."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"double_blocks.\1.img_mlp.0."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.", r"double_blocks.\1.img_mlp.2."),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.", r"double_blocks.\1.txt_mlp.0."),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.", r"double_blocks.\1.txt_mlp.2."),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear\.", r"single_blocks.\1.modulation.lin."),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"single_blocks.\1.norm.query_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"single_blocks.\1.norm.key_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.proj_out\.", r"single_blocks.\1.linear2."),
    (r"proj_out\.", "final_layer.linear."),
]

# (checkpoint name, diffusers names stacked along dim 0, in order); {n} is the block, {p} weight / bias.
STACKS: list[tuple[str, str, tuple[str, ...]]] = [
    ("transformer_blocks", "double_blocks.{n}.img_attn.qkv.{p}", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("transformer_blocks", "double_blocks.{n}.txt_attn.qkv.{p}",
     ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("single_transformer_blocks", "single_blocks.{n}.linear1.{p}", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]


def _stack(sd: dict[str, Tensor], out: dict[str, Tensor], group: str, target: str, parts: tuple[str, ...]) -> None:
    """Concatenate the ``parts`` of every block of ``group`` into ``target`` (consuming them from ``sd``)."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"{group}\.(\d+)\.", k))}
    for n in blocks:
        for p in ("weight", "bias"):
            out[target.format(n=n, p=p)] = torch.cat([sd.pop(f"{group}.{n}.{part}.{p}") for part in parts])


def diffusers_flux_to_single_file(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers FluxTransformer2DModel state dict to the flux1-dev.safetensors layout."""
    sd = dict(state_dict)
    out: dict[str, Tensor] = {}
    for group, target, parts in STACKS:
        _stack(sd, out, group, target, parts)
    shift_scale = [sd.pop(f"norm_out.linear.{p}").chunk(2) for p in ("weight", "bias")]
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat(shift_scale[0][::-1])
    out["final_layer.adaLN_modulation.1.bias"] = torch.cat(shift_scale[1][::-1])
    for key in list(sd):
        for pattern, replacement in RENAMES:
            new, hits = re.subn(rf"^{pattern}", replacement, key)
            if hits:
                out[new] = sd.pop(key)
                break
    assert not sd, f"unmapped diffusers keys: {sorted(sd)}"
    return out


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere: every weight, bias (zero in diffusers' init) and RMSNorm scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if re.search(r"norm_(added_)?[qk]\.weight$", name):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1] if param.ndim > 1 else 16
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)


def _reference(guidance: bool, layers: int, singles: int, seed: int) -> Any:
    torch.manual_seed(seed)
    model = diffusers.FluxTransformer2DModel(
        **TINY, num_layers=layers, num_single_layers=singles, guidance_embeds=guidance
    ).eval()
    _randomize(model, seed)
    return model


def _load_loom(reference: Any, tmp_path: Path) -> Flux:
    """The reference's weights through a single-file .safetensors checkpoint into Loom's Flux."""
    path = tmp_path / "flux-tiny.safetensors"
    converted = {k: v.contiguous() for k, v in diffusers_flux_to_single_file(reference.state_dict()).items()}
    safetensors_torch.save_file(converted, str(path))
    sd = safetensors_torch.load_file(str(path))
    config = flux_config_from_state_dict(sd, axes_dim=AXES)
    model = Flux(config).eval()
    model.load_state_dict(sd, strict=True)
    return model


def _run_reference(reference: Any, latent: Tensor, t: Tensor, ctx: Tensor, y: Tensor, g: Tensor | None) -> Tensor:
    """diffusers the way FluxPipeline drives it: packed tokens, 2-D ids, unpacked result."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    b, c, h, w = latent.shape
    packed = FluxPipeline._pack_latents(latent, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latent.device, latent.dtype)
    txt_ids = torch.zeros(ctx.shape[1], 3)
    out = reference(
        hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
        img_ids=img_ids, txt_ids=txt_ids, guidance=g, return_dict=False,
    )[0]
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)


@pytest.mark.parametrize(
    ("guidance", "layers", "singles", "size"),
    [(True, 2, 1, (8, 12)), (False, 1, 2, (6, 4))],
    ids=["dev-like", "schnell-like"],
)
@torch.no_grad()
def test_matches_diffusers(tmp_path: Path, guidance: bool, layers: int, singles: int, size: tuple[int, int]) -> None:
    reference = _reference(guidance, layers, singles, seed=layers * 10 + singles)
    loom = _load_loom(reference, tmp_path)
    assert loom.config.guidance_embed is guidance
    assert (loom.config.depth, loom.config.depth_single_blocks, loom.config.num_heads) == (layers, singles, 2)

    gen = torch.Generator().manual_seed(7)
    latent = torch.randn(2, 16, *size, generator=gen)
    t = torch.tensor([0.3, 0.85])
    ctx = torch.randn(2, 5, 32, generator=gen)
    y = torch.randn(2, 16, generator=gen)
    g = torch.tensor([3.5, 1.0]) if guidance else None

    expected = _run_reference(reference, latent, t, ctx, y, g)
    actual = loom(latent, t, ctx, y, g)
    assert actual.shape == latent.shape
    error = relative_error(actual, expected)
    assert error < TOLERANCE, f"relative error {error:.2e}"


@torch.no_grad()
def test_guidance_changes_the_output_of_a_distilled_model(tmp_path: Path) -> None:
    loom = _load_loom(_reference(True, 1, 1, seed=3), tmp_path)
    latent, ctx, y, t = torch.randn(1, 16, 4, 4), torch.randn(1, 3, 32), torch.randn(1, 16), torch.tensor([0.5])
    low, high = loom(latent, t, ctx, y, torch.tensor([1.0])), loom(latent, t, ctx, y, torch.tensor([4.0]))
    assert (low - high).abs().max() > 1e-3


@torch.no_grad()
def test_odd_latent_is_padded_and_cropped() -> None:
    torch.manual_seed(0)
    model = Flux(FluxConfig(hidden_size=32, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=AXES,
                            context_in_dim=8, vec_in_dim=4)).eval()
    latent = torch.randn(1, 16, 5, 7)
    out = model(latent, torch.tensor([0.5]), torch.randn(1, 3, 8), torch.randn(1, 4), torch.tensor([2.0]))
    assert out.shape == latent.shape and torch.isfinite(out).all()


def test_patchify_round_trip_and_ids() -> None:
    x = torch.randn(2, 16, 6, 8)
    tokens = patchify(x)
    assert tokens.shape == (2, 12, 64)
    # channel order (c, dy, dx): token 0 holds channel 0's top-left 2x2 patch first
    assert torch.equal(tokens[0, 0, :4], x[0, 0, :2, :2].reshape(4))
    assert torch.equal(unpatchify(tokens, 3, 4), x)
    ids = image_ids(2, 3, 4)
    assert ids.shape == (2, 12, 3)
    assert ids[0, 5].tolist() == [0.0, 1.0, 1.0]  # row-major: token 5 = row 1, col 1


def _meta_shapes(config: FluxConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Flux(config)
    return {prefix + k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_real_flux_dev_layout() -> None:
    """Names and shapes of flux1-dev.safetensors (the published key listing) and its 11.9B parameters."""
    shapes = _meta_shapes(FLUX_DEV)
    assert shapes["img_in.weight"] == (3072, 64)
    assert shapes["txt_in.weight"] == (3072, 4096)
    assert shapes["time_in.in_layer.weight"] == (3072, 256)
    assert shapes["guidance_in.in_layer.weight"] == (3072, 256)
    assert shapes["vector_in.in_layer.weight"] == (3072, 768)
    assert shapes["double_blocks.18.img_attn.qkv.weight"] == (9216, 3072)
    assert shapes["double_blocks.0.txt_attn.norm.key_norm.scale"] == (128,)
    assert shapes["double_blocks.0.img_mod.lin.weight"] == (18432, 3072)
    assert shapes["double_blocks.0.txt_mlp.2.weight"] == (3072, 12288)
    assert shapes["single_blocks.37.linear1.weight"] == (21504, 3072)
    assert shapes["single_blocks.0.linear2.weight"] == (3072, 15360)
    assert shapes["single_blocks.0.modulation.lin.weight"] == (9216, 3072)
    assert shapes["single_blocks.0.norm.query_norm.scale"] == (128,)
    assert shapes["final_layer.adaLN_modulation.1.weight"] == (6144, 3072)
    assert shapes["final_layer.linear.weight"] == (64, 3072)
    assert len(shapes) == 780
    assert sum(torch.Size(shape).numel() for shape in shapes.values()) == 11_901_408_320
    assert "guidance_in.in_layer.weight" not in _meta_shapes(FLUX_SCHNELL)


def test_config_detection() -> None:
    assert flux_config_from_state_dict(_meta_shapes(FLUX_DEV)) == FLUX_DEV
    prefix = "model.diffusion_model."
    assert flux_config_from_state_dict(_meta_shapes(FLUX_SCHNELL, prefix), prefix) == FLUX_SCHNELL
    fill = FluxConfig(in_channels=384)
    assert flux_config_from_state_dict(_meta_shapes(fill)) == fill


def test_config_detection_errors() -> None:
    with pytest.raises(ValueError, match="not a Flux transformer"):
        flux_config_from_state_dict({"input_blocks.0.0.weight": (320, 4, 3, 3)})
    shapes = _meta_shapes(FLUX_DEV)
    with pytest.raises(ValueError, match="not a Flux transformer"):
        flux_config_from_state_dict(shapes, "model.diffusion_model.")
    gap = {k.replace("double_blocks.3.", "double_blocks.30."): v for k, v in shapes.items()}
    with pytest.raises(ValueError, match="numbered"):
        flux_config_from_state_dict(gap)
    tiny = _meta_shapes(FluxConfig(hidden_size=32, num_heads=2, axes_dim=AXES, depth=1, depth_single_blocks=1))
    with pytest.raises(ValueError, match="axes_dim"):
        flux_config_from_state_dict(tiny)
    assert flux_config_from_state_dict(tiny, axes_dim=AXES).num_heads == 2
