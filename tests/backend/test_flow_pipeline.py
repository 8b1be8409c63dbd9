"""SD3 and Flux models through Loom's sampling pipeline: recognised from real files, loaded by the model
manager, and sampled exactly as a hand-written rectified-flow Euler loop over the same modules says.

The reference loop uses the transformers themselves (their parity with diffusers is tests/backend/test_mmdit.py
and test_flux.py) and the flow model sampling (test_flow_sampling.py); what is checked here is the wiring:
the timestep each model gets (sigma * 1000 for SD3, sigma for Flux), the latent formats, the pooled vector,
Flux's per-entry guidance (3.5 by default), CFG, skip-layer guidance, fp8 storage and block streaming.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.backend.control_apply import ControlSpec
from engine.backend.controlnet import ControlNet, ControlNetConfig
from engine.backend.flow_apply import SkipLayerGuidancePatch, SkippedBlocks
from engine.backend.flux import Flux, FluxConfig
from engine.backend.latent_formats import FLUX, SD3, LatentFormat
from engine.backend.mmdit import MMDiT, MMDiTConfig
from engine.backend.model_sampling import DiscreteFlowSampling, FluxSampling, ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.pipeline import SamplingRequest, sample
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetConfig
from engine.errors import ModelError
from engine.models.families import ModelFamily
from engine.models.handles import FileRef, ModelHandle, WeightPatch
from engine.models.loaders import CheckpointFile, UnsupportedModel, detect_family
from engine.models.manager import ModelManager
from engine.sdk import model_parts
from engine.sdk.ops import model_traits
from tests.support.weights import seeded_state

SD3_CONFIG = MMDiTConfig(depth=3, hidden_size=128, num_heads=2, context_in_dim=32, pooled_dim=48,
                         pos_embed_max_size=16)
SD35_CONFIG = MMDiTConfig(depth=3, hidden_size=128, num_heads=2, context_in_dim=32, pooled_dim=48,
                          pos_embed_max_size=16, qk_norm="rms_norm", x_block_self_attn_layers=(0, 1))
FLUX_CONFIG = FluxConfig(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(4, 14, 14),
                         context_in_dim=32, vec_in_dim=24)
STEPS, CFG, SEED = 4, 3.0, 7


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    seeded_state(model, seed)
    return model


def _write(model: nn.Module, path: Path, prefix: str) -> Path:
    save_file({prefix + key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def _conds(context: int, pooled: int, guidance: float | None = None) -> list[list[Any]]:
    generator = torch.Generator().manual_seed(context + pooled + int(guidance or 0))
    extras: dict[str, Any] = {"pooled_output": torch.randn(1, pooled, generator=generator)}
    if guidance is not None:
        extras["guidance"] = guidance
    return [[torch.randn(1, 6, context, generator=generator), extras]]


def _run(manager: ModelManager, handle: ModelHandle, positive: list[Any], negative: list[Any],
         patches: tuple[Any, ...] = ()) -> Tensor:
    traits = model_traits(handle.family, patches=patches, sampling_spec=handle.sampling)
    request = SamplingRequest(seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
                              positive=positive, negative=negative, latent={"samples": torch.zeros(1, 4, 8, 8)})
    result = sample(request, traits, lambda shape, cfg: manager.sampling(handle, shape, cfg=cfg), manager.controlnet,
                    device=torch.device("cpu"), dtype=torch.float32, on_step=lambda *_: None)
    return result["samples"]


def _euler(velocity: Callable[[Tensor, Tensor, int], Tensor], ms: ModelSampling, latent_format: LatentFormat,
           scale: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """A plain CFG Euler loop over the flow model: ``velocity(x, sigma, 0 cond / 1 uncond)``."""
    sigmas = sigmas_for(ms, "simple", "euler", STEPS)
    noise = prepare_noise(torch.zeros(1, 16, 8, 8), SEED)
    x = sigmas[0] * noise + (1 - sigmas[0]) * latent_format.to_model(torch.zeros(1, 16, 8, 8))
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        cond = x - sigma * velocity(x, sigma, 0)
        uncond = x - sigma * velocity(x, sigma, 1)
        denoised = uncond + CFG * (cond - uncond)
        if scale is not None:
            denoised = scale(x, sigma, cond, denoised)
        x = x + (x - denoised) / sigma * (following - sigma)
    return latent_format.to_vae(x)


@pytest.fixture(scope="module")
def sd3_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MMDiT]:
    model = _randomized(MMDiT(SD3_CONFIG), 1)
    assert isinstance(model, MMDiT)
    path = _write(model, tmp_path_factory.mktemp("sd3") / "tiny-sd3.safetensors", "model.diffusion_model.")
    return path, model


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Flux]:
    model = _randomized(Flux(FLUX_CONFIG), 2)
    assert isinstance(model, Flux)
    return _write(model, tmp_path_factory.mktemp("flux") / "tiny-flux.safetensors", ""), model


def test_sd3_checkpoint_is_recognised_and_samples_like_a_plain_euler_loop(sd3_file: tuple[Path, MMDiT]) -> None:
    path, model = sd3_file
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    assert (family.name, family.prediction, family.latent_channels, family.label) == ("sd3", "flow", 16, "SD3")
    positive, negative = _conds(32, 48), _conds(32, 48, guidance=1.0)
    out = _run(ModelManager("cpu"), ModelHandle(FileRef.of(path), family), positive, negative)

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        context, extras = (positive, negative)[which][0]
        return model(x, (sigma * 1000).reshape(1), context, extras["pooled_output"])

    expected = _euler(velocity, DiscreteFlowSampling(3.0, 1000.0), SD3)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def test_flux_unet_file_samples_with_each_entrys_guidance(flux_file: tuple[Path, Flux]) -> None:
    path, model = flux_file
    handle = model_parts.unet_handle(path, "UNETLoader unet_name 'tiny-flux'")
    assert (handle.family.name, handle.family.variant, handle.family.label) == ("flux", "dev", "Flux.1 dev")
    positive, negative = _conds(32, 24), _conds(32, 24, guidance=2.0)  # the positive gets Flux's default 3.5
    out = _run(ModelManager("cpu"), handle, positive, negative)

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        context, extras = (positive, negative)[which][0]
        guidance = torch.tensor([3.5 if which == 0 else 2.0])
        return model(x, sigma.reshape(1), context, extras["pooled_output"], guidance=guidance)

    expected = _euler(velocity, FluxSampling(1.15), FLUX)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def test_sd3_skip_layer_guidance_adds_the_skipped_difference(sd3_file: tuple[Path, MMDiT]) -> None:
    path, model = sd3_file
    with CheckpointFile(path) as ckpt:
        handle = ModelHandle(FileRef.of(path), detect_family(ckpt))
    positive, negative = _conds(32, 48), _conds(32, 48, guidance=1.0)
    patch = SkipLayerGuidancePatch(SkippedBlocks(double=(1,)), scale=2.0, start_percent=0.0, end_percent=1.0)
    out = _run(ModelManager("cpu"), handle, positive, negative, patches=(patch,))
    context, extras = positive[0]

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        entry_context, entry = (positive, negative)[which][0]
        return model(x, (sigma * 1000).reshape(1), entry_context, entry["pooled_output"])

    def skip_layer(x: Tensor, sigma: Tensor, cond: Tensor, denoised: Tensor) -> Tensor:
        skipped = x - sigma * model(x, (sigma * 1000).reshape(1), context, extras["pooled_output"], skip_layers=(1,))
        return denoised + (cond - skipped) * 2.0

    expected = _euler(velocity, DiscreteFlowSampling(3.0, 1000.0), SD3, skip_layer)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)
    plain = _run(ModelManager("cpu"), handle, positive, negative)
    assert (out - plain).abs().max() > 1e-3


def test_streamed_and_fp8_stored_transformers(flux_file: tuple[Path, Flux], tmp_path: Path) -> None:
    path, model = flux_file
    handle = model_parts.unet_handle(path, "UNETLoader unet_name 'tiny-flux'")
    positive, negative = _conds(32, 24), _conds(32, 24)
    plain = _run(ModelManager("cpu", pack_weights=False), handle, positive, negative)  # streaming never packs
    streamed = ModelManager("cpu", vram="low")
    torch.testing.assert_close(_run(streamed, handle, positive, negative), plain, rtol=0, atol=1e-6)
    assert streamed.loaded()[0]["streamed"]

    fp8 = model_parts.unet_handle(path, "UNETLoader unet_name 'tiny-flux'", "fp8_e4m3fn")
    manager = ModelManager("cpu")
    loaded = manager.unet(fp8)
    assert isinstance(loaded, Flux)
    stored = dict(loaded.named_parameters())
    assert stored["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert stored["double_blocks.0.img_attn.norm.query_norm.scale"].dtype == torch.float32  # norms stay fp32
    # the same weights rounded through float8 by hand give the same images
    rounded = {key: (value.to(torch.float8_e4m3fn).float() if _cast(key) else value)
               for key, value in model.state_dict().items()}
    reference = _write(_loaded(Flux(FLUX_CONFIG), rounded), tmp_path / "rounded.safetensors", "")
    expected = _run(ModelManager("cpu"), model_parts.unet_handle(reference, "UNETLoader"), positive, negative)
    torch.testing.assert_close(_run(manager, fp8, positive, negative), expected, rtol=0, atol=1e-5)


def _cast(key: str) -> bool:
    """Whether a Flux weight belongs to a Linear layer (stored in float8 under weight_dtype fp8)."""
    return not key.endswith(".scale")


def _loaded(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model


def test_sd35_qk_norm_checkpoint_is_told_apart(tmp_path: Path) -> None:
    model = _randomized(MMDiT(SD35_CONFIG), 3)
    path = _write(model, tmp_path / "tiny-sd35.safetensors", "model.diffusion_model.")
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    assert (family.variant, family.label) == ("sd3.5", "SD3.5")
    bare = model_parts.unet_handle(_write(model, tmp_path / "bare.safetensors", ""), "UNETLoader")
    assert bare.family == family
    loaded = ModelManager("cpu").unet(bare)
    assert isinstance(loaded, MMDiT) and loaded.config.x_block_self_attn_layers == (0, 1)


def test_flux_variants_from_their_keys(tmp_path: Path) -> None:
    for config, variant in ((FluxConfig(**{**FLUX_CONFIG.__dict__, "guidance_embed": False}), "schnell"),
                            (FluxConfig(**{**FLUX_CONFIG.__dict__, "in_channels": 384}), "fill")):
        path = _write(Flux(config).to_empty(device="cpu"), tmp_path / f"{variant}.safetensors", "")
        family = model_parts.unet_handle(path, "UNETLoader").family
        assert family.variant == variant
    schnell_traits = model_traits(ModelFamily("flux", "flow", 16, 16, variant="schnell"))
    assert schnell_traits.sampling_spec is not None and schnell_traits.sampling_spec.shift == 1.0


def test_sd_controlnets_and_wrong_pooled_outputs_are_refused_on_flow_models(sd3_file: tuple[Path, MMDiT]) -> None:
    path, _ = sd3_file
    with CheckpointFile(path) as ckpt:
        handle = ModelHandle(FileRef.of(path), detect_family(ckpt))
    with torch.device("meta"):
        sd1 = ControlNet(ControlNetConfig(UNetConfig()))
    control = ControlSpec(sd1, torch.zeros(1, 3, 64, 64))
    positive = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 48), "control": control}]]
    with pytest.raises(ValueError, match=r"SD1.x ControlNet.*does not fit this SD3 model: it is not an SD3 ControlNet"):
        _run(ModelManager("cpu"), handle, positive, _conds(32, 48))
    wrong = [[torch.zeros(1, 6, 32), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(ValueError, match="pooled output has 768 values but this model takes 48"):
        _run(ModelManager("cpu"), handle, wrong, _conds(32, 48))


def test_diffusers_format_transformers_are_refused_with_a_way_out(tmp_path: Path) -> None:
    path = tmp_path / "diffusers-flux.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.weight": torch.zeros(4, 4),
               "single_transformer_blocks.0.proj_out.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(ModelError, match="diffusers-format SD3/Flux transformer"):
        model_parts.unet_handle(path, "UNETLoader unet_name 'diffusers-flux'")
    with CheckpointFile(path) as ckpt, pytest.raises(UnsupportedModel, match="diffusers-format"):
        detect_family(ckpt)


@pytest.mark.parametrize("scale_key", ["scale_weight", "weight_scale"])
def test_scaled_fp8_files_keep_float8_weights_and_their_scales(flux_file: tuple[Path, Flux], tmp_path: Path,
                                                               scale_key: str) -> None:
    """ComfyUI's scaled-fp8 releases: float8 weights, one float32 scale per layer, activation scales unused."""
    _, model = flux_file
    stored: dict[str, Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    dequantized: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if not _cast(key) or not key.endswith(".weight"):
            stored[key] = dequantized[key] = value
            continue
        scale = value.abs().max() / 448.0
        quantized = (value / scale).to(torch.float8_e4m3fn)
        layer = key.removesuffix(".weight")
        stored |= {key: quantized, f"{layer}.{scale_key}": scale.reshape(()), f"{layer}.scale_input": torch.ones(())}
        dequantized[key] = quantized.float() * scale
    path = tmp_path / "flux-fp8-scaled.safetensors"
    save_file(stored, str(path))
    reference = _write(_loaded(Flux(FLUX_CONFIG), dequantized), tmp_path / "dequantized.safetensors", "")
    positive, negative = _conds(32, 24), _conds(32, 24)
    manager = ModelManager("cpu")
    handle = model_parts.unet_handle(path, "UNETLoader")  # weight_dtype default: the file's float8 is kept
    out = _run(manager, handle, positive, negative)
    loaded = dict(manager.unet(handle).named_parameters())
    assert loaded["single_blocks.0.linear1.weight"].dtype == torch.float8_e4m3fn
    expected = _run(ModelManager("cpu"), model_parts.unet_handle(reference, "UNETLoader"), positive, negative)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_flux_fill_gets_the_masked_image_and_the_unshuffled_mask(tmp_path: Path) -> None:
    """Flux.1 Fill: 16 latent + 16 masked-image + 64 mask channels (each latent pixel's 8x8 mask pixels)."""
    config = FluxConfig(**{**FLUX_CONFIG.__dict__, "in_channels": 384})
    model = _randomized(Flux(config), 4)
    assert isinstance(model, Flux)
    handle = model_parts.unet_handle(_write(model, tmp_path / "fill.safetensors", ""), "UNETLoader")
    assert handle.family.variant == "fill"
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 16, 8, 8, generator=generator)
    mask = (torch.rand(1, 1, 64, 64, generator=generator) > 0.5).float()
    inpaint = {"concat_latent_image": image, "concat_mask": mask}
    positive, negative = _conds(32, 24), _conds(32, 24)
    positive = [[positive[0][0], {**positive[0][1], **inpaint}]]
    negative = [[negative[0][0], {**negative[0][1], **inpaint}]]
    out = _run(ModelManager("cpu"), handle, positive, negative)
    concat = torch.cat([FLUX.to_model(image), torch.nn.functional.pixel_unshuffle(mask, 8)], dim=1)

    def velocity(x: Tensor, sigma: Tensor, which: int) -> Tensor:
        context, extras = (positive, negative)[which][0]
        return model(torch.cat([x, concat], dim=1), sigma.reshape(1), context, extras["pooled_output"],
                     guidance=torch.tensor([3.5]))

    expected = _euler(velocity, FluxSampling(1.15), FLUX)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def test_two_sd3_models_merge_weight_by_weight(sd3_file: tuple[Path, MMDiT], tmp_path: Path) -> None:
    path, model = sd3_file
    other_model = _randomized(MMDiT(SD3_CONFIG), 9)
    other_path = _write(other_model, tmp_path / "other-sd3.safetensors", "model.diffusion_model.")
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    base, other = ModelHandle(FileRef.of(path), family), ModelHandle(FileRef.of(other_path), family)
    merged = ModelManager("cpu").unet(base.merged_with(other, rules=(), default=(0.25, 0.75)))
    assert isinstance(merged, MMDiT)
    mine, theirs = model.state_dict(), other_model.state_dict()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(value, 0.25 * mine[name] + 0.75 * theirs[name], rtol=0, atol=1e-6)


def test_a_lora_on_a_scaled_fp8_layer_patches_the_dequantized_weight(tmp_path: Path) -> None:
    model = _randomized(Flux(FLUX_CONFIG), 6)
    stored: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key == "double_blocks.0.img_attn.qkv.weight":
            scale = value.abs().max() / 448.0
            stored |= {key: (value / scale).to(torch.float8_e4m3fn), "double_blocks.0.img_attn.qkv.scale_weight": scale}
        else:
            stored[key] = value
    path = tmp_path / "scaled.safetensors"
    save_file(stored, str(path))
    generator = torch.Generator().manual_seed(3)
    down, up = torch.randn(4, 64, generator=generator) * 0.1, torch.randn(192, 4, generator=generator) * 0.1
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0)}, str(lora))
    handle = model_parts.unet_handle(path, "UNETLoader")
    manager = ModelManager("cpu")
    patched_model = manager.unet(handle.with_patch(WeightPatch(FileRef.of(lora), 0.8)))
    layer = patched_model.get_submodule("double_blocks.0.img_attn.qkv")
    quantized = stored["double_blocks.0.img_attn.qkv.weight"]
    scale = stored["double_blocks.0.img_attn.qkv.scale_weight"]
    patched = quantized.float() * scale + 0.8 * (2.0 / 4) * (up @ down)
    torch.testing.assert_close(layer.weight, (patched / scale).to(torch.float8_e4m3fn).float() * scale, rtol=0, atol=0)
    unpatched = manager.unet(handle).get_submodule("double_blocks.0.img_attn.qkv")
    torch.testing.assert_close(unpatched.weight, quantized.float() * scale, rtol=0, atol=0)
