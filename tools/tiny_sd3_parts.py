"""The tiny SD3-family demo model's parts: shapes, initialisation, the latent normalisation, the file layout.

The checkpoint is ComfyUI's single-file SD3 layout with only a T5 text encoder:

* ``model.diffusion_model.*``: an MMDiT (:class:`engine.backend.mmdit.MMDiT`; keys are SD3's);
* ``first_stage_model.*``: a 16-channel AutoencoderKL without quant convs, as SD3's VAE;
* ``text_encoders.t5xxl.transformer.*``: a T5 v1.1-style encoder (transformers' ``T5EncoderModel``,
  gated GELU), whose sentencepiece tokenizer sits beside the file in ``<stem>/spiece.model``.

With no CLIP towers, ComfyUI's SD3 conditioning is the T5 last hidden state (prompt, end token 1,
padding 0 up to 77 tokens, no attention mask) and a pooled vector of zeros ``[1, 2048]``; the demo is
trained with exactly that (:func:`pooled_zeros`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import T5Config, T5EncoderModel

from engine.backend.latent_formats import SD3
from engine.backend.mmdit import MMDiT, MMDiTConfig
from engine.backend.t5 import (
    LAYER_NORM_EPSILON,
    RELATIVE_ATTENTION_MAX_DISTANCE,
    build_t5_encoder,
    convert_t5_state_dict,
    t5_config_from_state_dict,
)
from engine.backend.t5_tokenizer import T5_EOS_TOKEN, T5_PAD_TOKEN
from engine.backend.vae import AutoencoderKL, VAEConfig

log = logging.getLogger("tools.tiny_sd3_parts")

MMDIT_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
T5_PREFIX = "text_encoders.t5xxl.transformer."
#: SD3's pooled text width (CLIP-L 768 + CLIP-G 1280); zeros when there are no CLIP towers.
POOLED_DIM = 2048
T5_WIDTH = 128
T5_LAYERS = 3
T5_HEADS = 2
T5_FF = 256
T5_BUCKETS = 32

# Width 64 at full resolution (GroupNorm's 32 groups need >= 2 channels each, see train_tiny_shapes.py).
VAE_CONFIG = VAEConfig(ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16, embed_dim=16,
                       use_quant_conv=False)
MMDIT_CONFIG = MMDiTConfig(
    patch_size=2,
    in_channels=16,
    out_channels=16,
    depth=4,
    hidden_size=128,
    num_heads=2,  # SD3's 64-wide heads: what mmdit_config_from_state_dict assumes without qk norm
    context_in_dim=T5_WIDTH,
    pooled_dim=POOLED_DIM,
    pos_embed_max_size=16,  # 32x32 latents (256 px) at most; 64 px uses the centre 4x4, 128 px the centre 8x8
)


def t5_config(vocab_size: int) -> T5Config:
    """A small T5 v1.1-style encoder (gated GELU, no dropout) with the constants Loom's loader assumes."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=T5_WIDTH,
        d_kv=T5_WIDTH // T5_HEADS,
        d_ff=T5_FF,
        num_layers=T5_LAYERS,
        num_decoder_layers=T5_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_num_buckets=T5_BUCKETS,
        relative_attention_max_distance=RELATIVE_ATTENTION_MAX_DISTANCE,
        dropout_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=T5_PAD_TOKEN,
        eos_token_id=T5_EOS_TOKEN,
    )


def pooled_zeros(batch: int, device: torch.device | str = "cpu") -> Tensor:
    """SD3's pooled vector when there are no CLIP towers: zeros ``[batch, 2048]``."""
    return torch.zeros(batch, POOLED_DIM, device=device)


# --------------------------------------------------------------------------------------------- init


def sincos_table(size: int, dim: int) -> Tensor:
    """A fixed 2-D sin-cos position table ``[1, size * size, dim]`` (row-major; half the channels per axis)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(size, dtype=torch.float64)
    angles = coords[:, None] * frequencies[None]  # [size, quarter]
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # [size, dim / 2]
    rows = axis[:, None, :].expand(size, size, dim // 2)
    cols = axis[None, :, :].expand(size, size, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(1, size * size, dim).float()


def init_mmdit(config: MMDiTConfig) -> MMDiT:
    """An MMDiT with DiT's initialisation: Xavier linears, N(0, 0.02) timestep MLP, adaLN-Zero (every
    modulation and the final projection zeroed), and a fixed sin-cos table in ``pos_embed``."""
    model = MMDiT(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = model.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(conv_bias(proj))
        for layer in model.t_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and (name.endswith("adaLN_modulation.1") or name == "final_layer.linear"):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
        model.pos_embed.copy_(sincos_table(config.pos_embed_max_size, config.hidden_size))
    return model


def conv_bias(conv: nn.Conv2d) -> Tensor:
    """A convolution's bias (every convolution these models build has one)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


def init_vae(config: VAEConfig) -> AutoencoderKL:
    """A VAE whose posterior starts nearly deterministic (log-variance bias -8 in ``encoder.conv_out``)."""
    vae = AutoencoderKL(config)
    with torch.no_grad():
        conv_bias(vae.encoder.conv_out)[config.z_channels:] = -8.0
    return vae


# --------------------------------------------------------------------------------------------- latents


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the posterior means of ``images`` ([N, 3, H, W] in -1..1)."""
    means = torch.cat([vae.encode_moments(chunk)[0].float() for chunk in images.split(256)])
    return means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3))


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, images: Tensor) -> dict[str, list[float]]:
    """Fold a per-channel affine map into ``encoder.conv_out`` and ``decoder.conv_in`` so that SD3's latent
    format, ``(latent - 0.0609) * 1.5305``, gives posterior means of mean 0 and std 1 per channel over ``images``.

    The encoder side is exact (an affine map of conv_out's output channels; the log-variance moves by
    ``2 log gain``). The decoder side is exact for the scale; the shift goes into ``decoder.conv_in``'s bias,
    which is exact away from the latent's border, where the conv's zero padding stood for the old zero,
    not the new one: train on after folding (or keep the shift small) to absorb that.
    """
    mean, std = latent_statistics(vae, images)
    gain = (1.0 / SD3.scale) / std.clamp_min(1e-6)
    channels = vae.config.z_channels
    conv_out, out_bias = vae.encoder.conv_out, conv_bias(vae.encoder.conv_out)
    conv_out.weight[:channels] *= gain[:, None, None, None]
    out_bias[:channels] = (out_bias[:channels] - mean) * gain + SD3.shift
    out_bias[channels:] += 2 * torch.log(gain)
    # The decoder needs the old latent z = z' / gain + offset back.
    offset = mean - SD3.shift / gain
    conv_in = vae.decoder.conv_in
    conv_bias(conv_in).add_(torch.einsum("oikl,i->o", conv_in.weight, offset))
    conv_in.weight /= gain[None, :, None, None]
    log.info("latent normalisation: mean %s, gain %s", mean.numpy().round(3).tolist(), gain.numpy().round(3).tolist())
    return {"mean": mean.tolist(), "gain": gain.tolist()}


# --------------------------------------------------------------------------------------------- file


def checkpoint_state(mmdit: MMDiT, vae: AutoencoderKL, t5: T5EncoderModel) -> dict[str, Tensor]:
    """All three parts under their SD3 single-file prefixes, floating tensors in fp16."""
    state: dict[str, Tensor] = {}
    for key, tensor in mmdit.state_dict().items():
        state[MMDIT_PREFIX + key] = tensor
    for key, tensor in vae.state_dict().items():
        state[VAE_PREFIX + key] = tensor
    for key, tensor in t5.state_dict().items():
        if key != "encoder.embed_tokens.weight":  # the same tensor as shared.weight (ComfyUI's files omit it)
            state[T5_PREFIX + key] = tensor
    return {key: (t.detach().to("cpu", torch.float16) if t.is_floating_point() else t.detach().cpu()).contiguous()
            for key, t in state.items()}


def part(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix``, prefix removed, in float32."""
    return {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}


def load_parts(path: Path, device: torch.device | str = "cpu") -> tuple[MMDiT, AutoencoderKL, T5EncoderModel]:
    """The checkpoint's three parts in float32, built by Loom's own backend loaders from configs read off the
    key shapes (``MMDiT.from_state_dict``, ``AutoencoderKL.from_state_dict``, ``build_t5_encoder``)."""
    state = load_file(str(path))
    mmdit = MMDiT.from_state_dict(part(state, MMDIT_PREFIX))
    vae = AutoencoderKL.from_state_dict(part(state, VAE_PREFIX))
    t5 = build_t5_encoder(t5_config_from_state_dict(state, T5_PREFIX), convert_t5_state_dict(state, T5_PREFIX),
                          device=device)
    return mmdit.to(device), vae.to(device), t5


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fp16_round(*modules: nn.Module) -> None:
    """Round parameters through fp16 in place (what the saved file holds)."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.half().float())


def shift_sigma(t: Tensor, shift: float) -> Tensor:
    """SD3's time shift ``shift * t / (1 + (shift - 1) * t)`` (engine.backend.model_sampling.time_snr_shift)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(batch: int, shift: float, generator: torch.Generator) -> Tensor:
    """Training noise levels: ``t`` uniform in [0, 1), then SD3's shift. The ``simple`` schedule of
    ``DiscreteFlowSampling(shift)`` spaces its steps uniformly in the same ``t``, so training sees noise levels
    in the proportions the sampler visits them (half of them above sigma 0.75 for shift 3)."""
    return shift_sigma(torch.rand(batch, generator=generator), shift)
