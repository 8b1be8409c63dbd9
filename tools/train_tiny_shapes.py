"""Train the tiny-shapes demo model from scratch: a complete, tiny Stable Diffusion 1.x checkpoint.

All three parts are trained on the procedural Tiny Shapes dataset (:mod:`tools.tiny_shapes_data`,
64x64 images with captions) and saved in the SD1 checkpoint layout, in fp16, so Loom loads the file
through exactly the same path as a real SD1.5 checkpoint (``detect_family`` -> "sd1"):

1. VAE (``first_stage_model.*``, Loom's :class:`~engine.backend.vae.AutoencoderKL`): factor 8,
   4 latent channels, ``ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1``, trained on fresh rendered
   images (75% of the steps on 32x32 crops, the rest on whole images). Loss: L1 + MSE + a small KL
   term against an ``N(0, (1/0.18215)^2)`` prior. Afterwards the latent statistics are folded into
   ``quant_conv`` / ``post_quant_conv`` (an exact reparametrisation) so that the posterior means have
   zero mean and standard deviation ``1/0.18215`` per channel: the SD1 scale factor then gives the
   UNet unit-variance latents, as it does for the real SD1 VAE.
2. Text encoder (``cond_stage_model.transformer.text_model.*``): transformers' CLIPTextModel with the
   real CLIP vocabulary (49408 ids, Loom's :class:`~engine.backend.tokenizer.ClipTokenizer`), 77
   positions, width 64 (one 64-wide head, as Loom infers), 3 layers, quick_gelu, trained jointly with
3. the UNet (``model.diffusion_model.*``, Loom's :class:`~engine.backend.unet.UNetModel`):
   ``model_channels=64, channel_mult=(1, 2)``, one ResBlock per level, cross-attention
   (context 64, 64-wide heads, conv projections) in both input levels, the middle block and the
   first output block of each level, on 8x8
   latents scaled by 0.18215, with the standard eps-prediction DDPM objective over SD's scaled-linear
   schedule (betas 0.00085..0.012, 1000 steps, uniform timesteps), Min-SNR-5 loss weighting, 10%
   empty captions (so classifier-free guidance works), EMA weights exported.

Reproducible from ``--seed`` on a given machine and thread count (float reductions may round
differently with other thread counts or devices). Progress and time estimates are logged.

    python -m tools.train_tiny_shapes --seed 0 --threads 2                 # full run, ~1 h on 2 CPU cores
    python -m tools.train_tiny_shapes --estimate 20 --threads 2            # time 20 steps/phase, estimate
    python -m tools.train_tiny_shapes --steps-vae 30 --steps-unet 30 --dataset-size 512 --out /tmp/smoke.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from engine.backend.model_sampling import ModelSampling
from engine.backend.tokenizer import CHUNK_LENGTH, END_TOKEN, START_TOKEN, VOCAB_SIZE, ClipTokenizer
from engine.backend.unet import UNetConfig, UNetModel
from engine.backend.vae import SD1_SCALE_FACTOR, AutoencoderKL, VAEConfig
from tools.tiny_shapes_data import POSITIONS, RESOLUTION, ShapeSpec, random_caption, render_batch, sample_spec

log = logging.getLogger("tools.train_tiny_shapes")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

# Width 64 at full resolution: the VAE's GroupNorm has 32 groups, and at width 32 each group is a single
# channel (instance norm), which erases every channel's mean, i.e. the flat colours this data is made of;
# such a VAE was still brown mush after 150 steps where this one reconstructs colours.
VAE_CONFIG = VAEConfig(ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4, embed_dim=4)
UNET_CONFIG = UNetConfig(
    model_channels=64,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    transformer_depth=(1, 1),
    transformer_depth_middle=1,
    transformer_depth_output=(1, 0, 1, 0),
    context_dim=64,
    num_heads=-1,
    num_head_channels=64,  # what UNetConfig.from_state_dict infers for attention widths 64 and 128
    use_linear_in_transformer=False,  # SD1: 1x1-conv proj_in / proj_out
)
TEXT_WIDTH = 64
TEXT_LAYERS = 3


def text_config() -> CLIPTextConfig:
    """The CLIP text encoder: real vocabulary and positions, width 64 (1 head of 64), OpenAI quick_gelu."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_WIDTH // 64,
        max_position_embeddings=CHUNK_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=START_TOKEN,
        eos_token_id=END_TOKEN,
        pad_token_id=END_TOKEN,
    )


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Training hyperparameters (the defaults are the shipped model's)."""

    seed: int = 0
    steps_vae: int = 1800
    steps_unet: int = 8000
    batch_vae: int = 16
    batch_unet: int = 64
    lr_vae: float = 6e-4
    lr_unet: float = 5e-4
    warmup: int = 100
    kl_weight: float = 1e-4
    vae_crop: int = 32
    vae_full_fraction: float = 0.25
    dataset_size: int = 20000
    caption_dropout: float = 0.1
    drop_position: float = 0.15
    min_snr_gamma: float = 5.0
    steps_layout: int = 3000
    lr_layout: float = 3e-4
    layout_weight_cap: float = 10.0
    layout_fraction: float = 0.3
    probe_weight: float = 0.05
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    calibration_images: int = 2048


# --------------------------------------------------------------------------------------------- helpers


class Progress:
    """Logs loss, seconds per step and the time left of one phase every ``every`` steps."""

    def __init__(self, name: str, total: int, every: int) -> None:
        self.name, self.total, self.every = name, total, max(1, every)
        self.start = time.perf_counter()
        self.losses: list[float] = []
        self.step_times: list[float] = []
        self.cpu_times: list[float] = []
        self._last = self.start
        self._last_cpu = time.process_time()

    def step(self, step: int, loss: float) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        self.step_times.append(now - self._last)
        self.cpu_times.append(now_cpu - self._last_cpu)
        self._last, self._last_cpu = now, now_cpu
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            per_step = self.seconds_per_step()
            log.info("%s step %d/%d  loss %.4f  %.3f s/step  %.1f min left", self.name, step + 1, self.total,
                     float(np.mean(self.losses[-self.every:])), per_step, per_step * (self.total - step - 1) / 60)

    def seconds_per_step(self) -> float:
        """Median wall-clock step time, ignoring the first (warm-up) step when there are others."""
        times = self.step_times[1:] or self.step_times
        return float(np.median(times)) if times else 0.0

    def cpu_seconds_per_step(self) -> float:
        """Median CPU time per step (all threads together): the wall time of one uncontended thread."""
        times = self.cpu_times[1:] or self.cpu_times
        return float(np.median(times)) if times else 0.0


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def to_tensor(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in -1..1."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Ema:
    """Exponential moving average of a module's parameters (decay warmed up as (1+n)/(10+n))."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            p.copy_(self.shadow[name])


# --------------------------------------------------------------------------------------------- VAE


def kl_to_scaled_prior(mean: Tensor, logvar: Tensor, scale: float) -> Tensor:
    """Mean KL divergence of ``N(mean, exp(logvar))`` from ``N(0, scale^2)``, per latent element."""
    log_scale2 = 2 * math.log(scale)
    return 0.5 * (mean.pow(2) / scale**2 + torch.exp(logvar - log_scale2) - 1 - logvar + log_scale2).mean()


def vae_batches(hyper: Hyper, rng: np.random.Generator, crop: int) -> Iterator[np.ndarray]:
    """Fresh rendered images forever, randomly cropped to ``crop`` pixels (held-out combinations excluded)."""
    while True:
        images = render_batch([sample_spec(rng) for _ in range(hyper.batch_vae)])
        if crop >= images.shape[1]:
            yield images
            continue
        offsets = rng.integers(0, images.shape[1] - crop + 1, size=(len(images), 2))
        yield np.stack([image[y:y + crop, x:x + crop] for image, (y, x) in zip(images, offsets, strict=True)])


def init_vae(config: VAEConfig) -> AutoencoderKL:
    """A VAE whose posterior starts nearly deterministic (logvar -8), so early sampling noise does not
    drown the small initial means."""
    vae = AutoencoderKL(config)
    with torch.no_grad():
        vae.quant_conv.bias[config.embed_dim:] = -8.0
    return vae


def train_vae(vae: AutoencoderKL, hyper: Hyper, steps: int, device: torch.device, log_every: int) -> Progress:
    rng = np.random.default_rng([hyper.seed, 1])
    generator = torch.Generator().manual_seed(hyper.seed + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=hyper.lr_vae, betas=(0.9, 0.99), weight_decay=0.0)
    progress = Progress("vae", steps, log_every)
    vae.train()
    # Most steps on 32x32 crops (4x cheaper; the VAE is convolutional), the last ones on whole images so
    # that the GroupNorm statistics match the 64x64 images the model is used on.
    full_from = steps - round(steps * hyper.vae_full_fraction)
    crops, wholes = vae_batches(hyper, rng, hyper.vae_crop), vae_batches(hyper, rng, RESOLUTION)
    prior_scale = 1.0 / SD1_SCALE_FACTOR
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, hyper.lr_vae, hyper.warmup))
        if step == full_from:
            log.info("vae: whole 64x64 images from step %d", step + 1)
        images = to_tensor(next(wholes if step >= full_from else crops), device)
        mean, logvar = vae.encode_moments(images)
        noise = torch.randn(mean.shape, generator=generator).to(device)
        z = mean + torch.exp(0.5 * logvar) * noise
        reconstruction = vae.decode(z)
        loss = (F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
                + hyper.kl_weight * kl_to_scaled_prior(mean, logvar, prior_scale))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), hyper.grad_clip)
        optimizer.step()
        progress.step(step, float(loss.detach()))
    vae.eval()
    return progress


@torch.no_grad()
def calibrate_latents(vae: AutoencoderKL, images: Tensor, target_std: float = 1.0 / SD1_SCALE_FACTOR) -> None:
    """Fold per-channel shift and scale into quant_conv / post_quant_conv so that posterior means over
    ``images`` have mean 0 and std ``target_std`` per channel. Decoding is unchanged: post_quant_conv
    absorbs the inverse map exactly (it is linear)."""
    means = torch.cat([vae.encode_moments(chunk)[0] for chunk in images.split(256)])
    shift = means.mean(dim=(0, 2, 3))
    gain = target_std / means.std(dim=(0, 2, 3)).clamp_min(1e-6)
    channels = shift.numel()
    quant_w, quant_b = vae.quant_conv.weight, vae.quant_conv.bias
    quant_w[:channels] *= gain[:, None, None, None]
    quant_b[:channels] = (quant_b[:channels] - shift) * gain
    quant_b[channels:] += 2 * torch.log(gain)
    post_w, post_b = vae.post_quant_conv.weight, vae.post_quant_conv.bias
    post_b += post_w[:, :, 0, 0] @ shift
    post_w /= gain[None, :, None, None]
    log.info("latent calibration: shift %s, gain %s", shift.cpu().numpy().round(3).tolist(),
             gain.cpu().numpy().round(3).tolist())


@torch.no_grad()
def encode_specs(vae: AutoencoderKL, specs: Sequence[ShapeSpec], device: torch.device,
                 chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Render ``specs`` chunk by chunk and return every image's posterior (mean, std), on the CPU."""
    means, stds = [], []
    for start in range(0, len(specs), chunk):
        mean, logvar = vae.encode_moments(to_tensor(render_batch(specs[start:start + chunk]), device))
        means.append(mean.float().cpu())
        stds.append(torch.exp(0.5 * logvar).float().cpu())
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------------------------- diffusion


class CaptionTokens:
    """Caption -> 77 token ids with the real CLIP tokenizer (SD1 padding), cached."""

    def __init__(self) -> None:
        self.tokenizer = ClipTokenizer()
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: Sequence[str]) -> Tensor:
        rows = []
        for text in captions:
            ids = self.cache.get(text)
            if ids is None:
                ids = self.cache[text] = self.tokenizer.tokenize(text)[0]
            rows.append(ids)
        return torch.tensor(rows, dtype=torch.long)


def init_unet(config: UNetConfig) -> UNetModel:
    """A UNet with the usual LDM initialisation: output convs and attention out-projections zeroed."""
    unet = UNetModel(config)
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name == "out.2" or name.endswith(("out_layers.3", "proj_out")):
                for p in module.parameters():
                    p.zero_()
    return unet


class NoiseObjective:
    """The eps-prediction DDPM objective over SD's scaled-linear schedule (1000 steps) with Min-SNR-gamma
    loss weights: shared by the base model, ControlNet and LoRA training.

    Where a shape goes is decided in the first, noisiest sampling steps, but there the eps loss hardly
    depends on the layout (the prediction is mostly the input). ``layout_weight_cap`` > 0 multiplies
    each sample's weight by ``min(1 / alpha_bar, cap)`` (the v-prediction error in eps units, capped),
    and ``layout_fraction`` of the timesteps are drawn from the noisiest ``layout_from``..999 only:
    both make the position words matter to the loss.
    """

    def __init__(self, min_snr_gamma: float, layout_weight_cap: float = 0.0, layout_fraction: float = 0.0,
                 layout_from: int = 600) -> None:
        alphas_cumprod = 1.0 / (1.0 + ModelSampling.from_betas().sigmas.double() ** 2)
        self.sqrt_ab = alphas_cumprod.sqrt().float()
        self.sqrt_1m_ab = (1 - alphas_cumprod).sqrt().float()
        snr = (alphas_cumprod / (1 - alphas_cumprod)).float()
        self.weights = (snr.clamp(max=min_snr_gamma) / snr) if min_snr_gamma > 0 else torch.ones_like(snr)
        if layout_weight_cap > 0:
            self.weights = self.weights * (1.0 / alphas_cumprod).clamp(max=layout_weight_cap).float()
        self.layout_fraction, self.layout_from = layout_fraction, layout_from

    def noised(self, latents: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(noisy latents, timesteps, noise)`` for a batch of clean latents (all on the CPU)."""
        steps = len(self.sqrt_ab)
        t = torch.randint(0, steps, (latents.shape[0],), generator=generator)
        if self.layout_fraction > 0:
            noisy_t = torch.randint(self.layout_from, steps, (latents.shape[0],), generator=generator)
            pick = torch.rand(latents.shape[0], generator=generator) < self.layout_fraction
            t = torch.where(pick, noisy_t, t)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = self.sqrt_ab[t, None, None, None] * latents + self.sqrt_1m_ab[t, None, None, None] * noise
        return noisy, t, noise

    def loss(self, prediction: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        per_sample = (prediction.float() - noise.to(prediction.device)).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * self.weights[t].to(prediction.device)).mean()


def sample_latents(latent_mean: Tensor, latent_std: Tensor, index: Tensor, generator: torch.Generator) -> Tensor:
    """Scaled latents (x 0.18215) drawn from the stored posteriors of the images at ``index``."""
    noise_latent = torch.randn(latent_mean[index].shape, generator=generator)
    return (latent_mean[index] + latent_std[index] * noise_latent) * SD1_SCALE_FACTOR


class PositionProbe(nn.Module):
    """Linear heads that read the column and the row of the caption's position (or "none said") from the
    text encoder's mean output token. Used only while training (the layout phase), never saved.

    Why: the first phase's text encoder separates "top"/"bottom" but maps "left" and "right" to nearly
    the same outputs (their token embeddings stay close), so the UNet never learns to place shapes
    horizontally, and with no horizontal placement there is no gradient that would separate the words.
    The probe's cross-entropy breaks that circle by making the encoder represent both axes.
    """

    NONE = 3

    def __init__(self, width: int) -> None:
        super().__init__()
        self.column = nn.Linear(width, 4)
        self.row = nn.Linear(width, 4)

    def loss(self, context: Tensor, labels: Tensor) -> Tensor:
        pooled = context.mean(dim=1)
        return F.cross_entropy(self.column(pooled), labels[:, 0]) + F.cross_entropy(self.row(pooled), labels[:, 1])

    @classmethod
    def labels(cls, specs: Sequence[ShapeSpec], captions: Sequence[str]) -> Tensor:
        """(column, row) per caption; ``NONE`` for both when the caption does not say the position."""
        rows = [POSITIONS[spec.position] if f", {spec.position}" in text else (cls.NONE, cls.NONE)
                for spec, text in zip(specs, captions, strict=True)]
        return torch.tensor(rows, dtype=torch.long)


def train_diffusion(unet: UNetModel, text: CLIPTextModel, specs: Sequence[ShapeSpec], latent_mean: Tensor,
                    latent_std: Tensor, hyper: Hyper, steps: int, device: torch.device,
                    log_every: int, *, layout: bool = False) -> tuple[Progress, Ema, Ema]:
    """UNet + text encoder training; ``layout`` selects the second phase (its own seeds and learning rate,
    the layout-weighted objective of :class:`NoiseObjective` and the :class:`PositionProbe` loss)."""
    stream = 9 if layout else 2
    rng = np.random.default_rng([hyper.seed, stream])
    generator = torch.Generator().manual_seed(hyper.seed + stream)
    objective = (NoiseObjective(hyper.min_snr_gamma, hyper.layout_weight_cap, hyper.layout_fraction) if layout
                 else NoiseObjective(hyper.min_snr_gamma))
    peak_lr = hyper.lr_layout if layout else hyper.lr_unet
    tokens = CaptionTokens()
    probe = PositionProbe(text.config.hidden_size).to(device) if layout else None
    params = [*unet.parameters(), *text.parameters(), *(probe.parameters() if probe else ())]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.99), weight_decay=0.0)
    unet_ema, text_ema = Ema(unet, hyper.ema_decay), Ema(text, hyper.ema_decay)
    progress = Progress("layout" if layout else "unet", steps, log_every)
    unet.train()
    text.train()
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, peak_lr, hyper.warmup))
        index = rng.integers(len(specs), size=hyper.batch_unet)
        captions = [random_caption(specs[i], rng, drop_position=hyper.drop_position)
                    if rng.random() >= hyper.caption_dropout else "" for i in index]
        latents = sample_latents(latent_mean, latent_std, torch.from_numpy(index), generator)
        noisy, t, noise = objective.noised(latents, generator)
        context = text(input_ids=tokens(captions).to(device)).last_hidden_state
        loss = objective.loss(unet(noisy.to(device), t.to(device), context), noise, t)
        if probe is not None:
            labels = PositionProbe.labels([specs[i] for i in index], captions).to(device)
            loss = loss + hyper.probe_weight * probe.loss(context, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper.grad_clip)
        optimizer.step()
        unet_ema.update(unet)
        text_ema.update(text)
        progress.step(step, float(loss.detach()))
    unet.eval()
    text.eval()
    return progress, unet_ema, text_ema


# --------------------------------------------------------------------------------------------- export


def checkpoint_state(unet: UNetModel, vae: AutoencoderKL, text: CLIPTextModel) -> dict[str, Tensor]:
    """All three parts under their SD1 checkpoint prefixes, floating tensors in fp16."""
    state: dict[str, Tensor] = {}
    for key, tensor in unet.state_dict().items():
        state[UNET_PREFIX + key] = tensor
    for key, tensor in vae.state_dict().items():
        state[VAE_PREFIX + key] = tensor
    for key, tensor in text.state_dict().items():
        state[TEXT_PREFIX + key.removeprefix("text_model.")] = tensor
    # Real SD1 files carry the position ids too (Loom ignores them and always uses 0..76).
    state[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(CHUNK_LENGTH, dtype=torch.long)[None]
    return {key: (t.detach().to("cpu", torch.float16) if t.is_floating_point() else t.detach().cpu()).contiguous()
            for key, t in state.items()}


def save_checkpoint(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    log.info("saved %s (%.2f MB, %d tensors)", path, path.stat().st_size / 1e6, len(state))


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Load ``path`` the way Loom does (family detection, the ModelManager's three parts) and check
    that the inferred configurations equal the trained ones."""
    from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
    from engine.models.loaders import CheckpointFile, detect_family
    from engine.models.manager import ModelManager

    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
        unet_config = UNetConfig.from_state_dict(ckpt.shapes(UNET_PREFIX))
        vae_config = VAEConfig.from_state_dict(ckpt.shapes(VAE_PREFIX))
    problems = []
    if family.name != "sd1" or family.prediction != "eps":
        problems.append(f"detected {family.label}, expected SD1.x (eps)")
    if unet_config != UNET_CONFIG:
        problems.append(f"UNet config does not round-trip: {unet_config}")
    if vae_config != VAE_CONFIG:
        problems.append(f"VAE config does not round-trip: {vae_config}")
    ref = FileRef.of(path)
    manager = ModelManager("cpu")
    manager.unet(ModelHandle(ref, family))
    encoder = manager.text_encoder(ClipHandle(ref, family))
    manager.vae(VaeHandle(ref, VAE_PREFIX))
    if encoder.cond_dim != UNET_CONFIG.context_dim:
        problems.append(f"text encoder width {encoder.cond_dim} != UNet context {UNET_CONFIG.context_dim}")
    if problems:
        raise RuntimeError(f"{path}: " + "; ".join(problems))
    return {"family": family.label, "parts": [entry["part"] for entry in manager.loaded()]}


# --------------------------------------------------------------------------------------------- main


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_models(seed: int, device: torch.device) -> tuple[AutoencoderKL, UNetModel, CLIPTextModel]:
    torch.manual_seed(seed)
    vae = init_vae(VAE_CONFIG).to(device)
    unet = init_unet(UNET_CONFIG).to(device)
    text = CLIPTextModel(text_config()).to(device)
    log.info("parameters: VAE %d, UNet %d, text encoder %d", count_parameters(vae), count_parameters(unet),
             count_parameters(text))
    return vae, unet, text


def training_specs(seed: int, stream: int, count: int) -> list[ShapeSpec]:
    """``count`` training specs (held-out combinations excluded) from the random stream ``(seed, stream)``."""
    rng = np.random.default_rng([seed, stream])
    return [sample_spec(rng) for _ in range(count)]


def _median_after_first(times: Sequence[float]) -> float:
    """Median step time without the first (warm-up) step; 0 for no steps."""
    if not times:
        return 0.0
    return float(np.median(times[1:] if len(times) > 1 else times))


def estimate(hyper: Hyper, steps: int, device: torch.device) -> dict[str, Any]:
    """Time ``steps`` steps of each kind (VAE on crops, VAE on whole images, UNet + text encoder) plus
    rendering and encoding, and project the full run.

    Two projections: from wall-clock time (as measured, under whatever else runs on the machine) and
    from CPU time (all threads together; with one thread it is the time the run takes on an idle core).
    """
    vae, unet, text = build_models(hyper.seed, device)
    probe = dataclasses.replace(hyper, vae_full_fraction=0.5)
    vae_progress = train_vae(vae, probe, 2 * (steps + 1), device, log_every=steps + 1)
    sample = min(hyper.dataset_size, 512)
    specs = training_specs(hyper.seed, 3, sample)
    wall, cpu = time.perf_counter(), time.process_time()
    mean, std = encode_specs(vae, specs, device)
    per_image = {"wall": (time.perf_counter() - wall) / sample, "cpu": (time.process_time() - cpu) / sample}
    unet_progress = train_diffusion(unet, text, specs, mean, std, hyper, steps + 1, device, log_every=steps)[0]
    full_steps = round(hyper.steps_vae * hyper.vae_full_fraction)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "steps_vae": hyper.steps_vae,
                              "steps_unet": hyper.steps_unet, "dataset_size": hyper.dataset_size}
    for kind, vae_times, unet_times in (("wall", vae_progress.step_times, unet_progress.step_times),
                                        ("cpu", vae_progress.cpu_times, unet_progress.cpu_times)):
        crop_s = _median_after_first(vae_times[: steps + 1])
        whole_s = _median_after_first(vae_times[steps + 1:])
        unet_s = _median_after_first(unet_times)
        vae_total = crop_s * (hyper.steps_vae - full_steps) + whole_s * full_steps
        data_total = per_image[kind] * (hyper.dataset_size + min(hyper.calibration_images, hyper.dataset_size))
        total = vae_total + unet_s * hyper.steps_unet + data_total
        result[kind] = {"vae_crop_s_per_step": round(crop_s, 3), "vae_whole_s_per_step": round(whole_s, 3),
                        "unet_s_per_step": round(unet_s, 3), "vae_min": round(vae_total / 60, 1),
                        "unet_min": round(unet_s * hyper.steps_unet / 60, 1), "data_min": round(data_total / 60, 1),
                        "total_min": round(total / 60, 1)}
    return result


def calibrate_and_check(vae: AutoencoderKL, hyper: Hyper, device: torch.device) -> dict[str, Any]:
    """Fold the latent statistics into the VAE, round it to fp16 and measure its reconstruction error."""
    calibration = render_batch(training_specs(hyper.seed, 4, min(hyper.calibration_images, hyper.dataset_size)))
    calibrate_latents(vae, to_tensor(calibration, device))
    round_to_fp16(vae)
    with torch.no_grad():
        check = to_tensor(calibration[:256], device)
        error = float((vae.decode(vae.encode(check)).clamp(-1, 1) - check).abs().mean() * 127.5)
    log.info("VAE mean absolute reconstruction error: %.2f / 255", error)
    return {"vae_reconstruction_error_255": round(error, 2)}


def round_to_fp16(*modules: nn.Module) -> None:
    """Round parameters through fp16 in place: what the saved file holds, so that a run resumed from
    the file (``--resume``) continues from the same weights as the uninterrupted run."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.half().float())


def train(hyper: Hyper, out: Path, device: torch.device, log_every: int, resume: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {"out": str(out)}
    if resume is None:
        vae, unet, text = build_models(hyper.seed, device)
        vae_progress = train_vae(vae, hyper, hyper.steps_vae, device, log_every)
        report.update(calibrate_and_check(vae, hyper, device))
        full_from = hyper.steps_vae - round(hyper.steps_vae * hyper.vae_full_fraction)
        report.update({"vae_crop_s_per_step": round(_median_after_first(vae_progress.step_times[:full_from]), 3),
                       "vae_whole_s_per_step": round(_median_after_first(vae_progress.step_times[full_from:]), 3),
                       "vae_final_loss": round(float(np.mean(vae_progress.losses[-50:])), 4)})
    else:
        from tools.tiny_shapes_base import load_base

        vae, unet, text = load_base(resume, device)
        unet.requires_grad_(True)
        text.requires_grad_(True)
    specs = training_specs(hyper.seed, 3, hyper.dataset_size)
    latent_mean, latent_std = encode_specs(vae, specs, device)
    log.info("encoded %d images: scaled latent std %.3f", len(specs), float((latent_mean * SD1_SCALE_FACTOR).std()))
    phases = [(False, hyper.steps_unet)] if resume is None else []
    phases += [(True, hyper.steps_layout)] if hyper.steps_layout > 0 else []
    for layout, steps in phases:
        progress, unet_ema, text_ema = train_diffusion(unet, text, specs, latent_mean, latent_std, hyper, steps,
                                                       device, log_every, layout=layout)
        unet_ema.copy_to(unet)
        text_ema.copy_to(text)
        round_to_fp16(unet, text)
        name = "layout" if layout else "unet"
        report[f"{name}_s_per_step"] = round(progress.seconds_per_step(), 3)
        report[f"{name}_final_loss"] = round(float(np.mean(progress.losses[-50:])), 4)
        if layout:
            unet.requires_grad_(True)
            text.requires_grad_(True)
    elapsed = time.perf_counter() - started
    metadata = {"loom.tool": "tools/train_tiny_shapes.py", "loom.hyper": json.dumps(dataclasses.asdict(hyper)),
                "loom.train_seconds": f"{elapsed:.0f}", "loom.threads": str(torch.get_num_threads())}
    if resume is not None:
        metadata["loom.resumed_from"] = resume.name
    save_checkpoint(checkpoint_state(unet, vae, text), out, metadata)
    report.update({"megabytes": round(out.stat().st_size / 1e6, 2), "train_minutes": round(elapsed / 60, 1),
                   "threads": torch.get_num_threads(),
                   "parameters": {"vae": count_parameters(vae), "unet": count_parameters(unet),
                                  "text": count_parameters(text)}})
    report["verify"] = verify_checkpoint(out)
    return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = Hyper()
    parser = argparse.ArgumentParser(description="Train the tiny-shapes SD1-layout demo checkpoint from scratch.")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=Path("models/checkpoints/tiny-shapes.safetensors"))
    parser.add_argument("--steps-vae", type=int, default=defaults.steps_vae)
    parser.add_argument("--steps-unet", type=int, default=defaults.steps_unet, help="UNet + text encoder steps")
    parser.add_argument("--steps-layout", type=int, default=defaults.steps_layout,
                        help="second phase: UNet + text encoder steps with the layout-weighted objective")
    parser.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                        help="skip the VAE and the first phase: run only the layout phase from this checkpoint")
    parser.add_argument("--batch-vae", type=int, default=defaults.batch_vae)
    parser.add_argument("--batch-unet", type=int, default=defaults.batch_unet)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size,
                        help="captioned images encoded for the diffusion phase")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--estimate", type=int, default=0, metavar="N",
                        help="only time N steps of each phase and print the projected full training time")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hyper = Hyper(seed=args.seed, steps_vae=args.steps_vae, steps_unet=args.steps_unet,
                  steps_layout=args.steps_layout, batch_vae=args.batch_vae,
                  batch_unet=args.batch_unet, dataset_size=args.dataset_size,
                  warmup=min(Hyper.warmup, max(1, min(args.steps_vae, args.steps_unet) // 10)))
    if args.estimate:
        result: dict[str, Any] = estimate(hyper, args.estimate, device)
        log.info("estimated full training (%d VAE + %d UNet steps, %d threads): %.1f min by wall-clock time, "
                 "%.1f CPU-minutes", hyper.steps_vae, hyper.steps_unet, result["threads"],
                 result["wall"]["total_min"], result["cpu"]["total_min"])
    else:
        result = train(hyper, args.out, device, args.log_every, resume=args.resume)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
