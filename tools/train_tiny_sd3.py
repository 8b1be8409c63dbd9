"""Train the tiny SD3-family demo model from scratch: a rectified-flow MMDiT with a T5 encoder and a 16-channel VAE.

Writes ``models/checkpoints/tiny-shapes-sd3.safetensors`` in ComfyUI's single-file SD3 layout (fp16; parts
and sizes in :mod:`tools.tiny_sd3_parts`) and its tokenizer ``models/checkpoints/tiny-shapes-sd3/spiece.model``:

1. Tokenizer: a 128-piece sentencepiece model with T5's special ids, trained on dataset captions
   (:mod:`tools.tiny_t5_tokenizer`).
2. VAE: 16 latent channels, factor 8, no quant convs, trained on fresh rendered images (80% of the steps on
   32x32 crops), loss L1 + MSE + a small KL term against ``N(0.0609, (1/1.5305)^2)``. At the switch to whole
   images and again at the end, the latent statistics are folded into ``encoder.conv_out`` /
   ``decoder.conv_in`` so that SD3's latent format ``(latent - 0.0609) * 1.5305`` gives zero mean and unit
   std per channel (see :func:`tools.tiny_sd3_parts.normalise_latents`; the training in between absorbs the
   first fold's border effect, the second one is small).
3. MMDiT + T5, trained together with the conditioning ComfyUI gives an SD3 model with only T5: the T5
   last hidden state of ``tokenize_t5_prompt`` ids (end token, padding to 77, no mask) and a zero pooled
   vector. Rectified flow: ``x_sigma = (1 - sigma) x0 + sigma * noise``, target ``v = noise - x0``,
   timestep ``sigma * 1000``, plain MSE; ``sigma = shift(t)`` with ``t`` uniform and SD3's shift 3
   (``3t / (1 + 2t)``), the shift ``ModelSamplingSD3`` samples with: the ``simple`` schedule's steps are
   uniform in the same ``t``, so training sees the noise levels in the proportions the sampler visits them,
   half of them above sigma 0.75, where colours and layout are decided. (SD3 itself draws ``t`` logit-normal, which
   concentrates on the middle; here the first sampling step, at sigma 1, decides the colours, and a
   denoised estimate's error is sigma times the velocity's, so the noisy end matters most.) 10% empty
   captions (classifier-free guidance), AdamW with warm-up and cosine decay, EMA weights exported.
4. Layout phase (``--steps-layout``, fresh AdamW and EMA): the same objective with 30% of the noise levels
   drawn from the noisy end (``t`` in [0.75, 1)), plus a probe's cross-entropy (weight 0.1) on the T5
   output's mean over tokens, trained with it and thrown away: ``--probe position`` asks for the caption's
   column and row (the SD1 demo's :class:`~tools.train_tiny_shapes.PositionProbe`), ``--probe caption``
   (the default) for those and the shape's colour, the background's colour and the shape, ``--probe roles``
   for those and, at each colour word's token, whether it names the shape or the background
   (:mod:`tools.tiny_sd3_probes` says why).

At the end the file is read back with Loom's loaders (configs from the key shapes must equal the
trained ones, the tokenizer must be found where ``T5Tokenizer.for_encoder`` looks; the family Loom detects
is reported), the read-back models sample held-out prompts with a minimal Euler loop
(:mod:`tools.tiny_sd3_sample`), and a JSON report is printed. Reproducible from ``--seed`` for a given
thread count and device.

The shipped file was made in four runs (tools/README.md has the times, the scores after each and what the
model still gets wrong: the seed, not the prompt, picks which named colour is the background)::

    python -m tools.train_tiny_sd3 --seed 0 --threads 1 --steps-layout 0
    python -m tools.train_tiny_sd3 --threads 1 --resume models/checkpoints/tiny-shapes-sd3.safetensors \
        --probe position --steps-layout 1200
    python -m tools.train_tiny_sd3 --threads 1 --resume models/checkpoints/tiny-shapes-sd3.safetensors \
        --probe caption --steps-layout 800
    python -m tools.train_tiny_sd3 --threads 1 --resume models/checkpoints/tiny-shapes-sd3.safetensors \
        --probe roles --steps-layout 800

    python -m tools.train_tiny_sd3 --estimate 10 --threads 1          # time each phase, project the run
    python -m tools.train_tiny_sd3 --steps-vae 20 --steps-mmdit 20 --steps-layout 10 --dataset-size 256 \
        --eval-count 4 --out /tmp/smoke/checkpoints/tiny-shapes-sd3.safetensors     # a smoke run (~1.5 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import shutil
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
from transformers import T5EncoderModel

from engine.backend.latent_formats import SD3
from engine.backend.mmdit import MMDiT, mmdit_config_from_state_dict
from engine.backend.t5 import t5_config_from_state_dict
from engine.backend.t5_tokenizer import T5Tokenizer, find_t5_tokenizer_file
from engine.backend.vae import AutoencoderKL, VAEConfig
from tools.eval_tiny_shapes import write_grid
from tools.tiny_sd3_parts import (
    MMDIT_CONFIG,
    MMDIT_PREFIX,
    T5_PREFIX,
    VAE_CONFIG,
    VAE_PREFIX,
    checkpoint_state,
    count_parameters,
    flow_sigmas,
    fp16_round,
    init_mmdit,
    init_vae,
    latent_statistics,
    load_parts,
    normalise_latents,
    pooled_zeros,
    shift_sigma,
    t5_config,
)
from tools.tiny_sd3_probes import PROBES, CaptionProbe, RoleProbe, color_token_ids
from tools.tiny_sd3_sample import PromptIds, score_held_out
from tools.tiny_shapes_data import RESOLUTION, ShapeSpec, random_caption, render_batch, sample_spec
from tools.tiny_t5_tokenizer import write_tokenizer
from tools.train_tiny_shapes import Ema, PositionProbe, Progress, lr_at, set_lr, to_tensor, training_specs

log = logging.getLogger("tools.train_tiny_sd3")

DEFAULT_OUT = Path("models/checkpoints/tiny-shapes-sd3.safetensors")


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Training hyperparameters (the shipped model's, except its layout phases: see the module docstring)."""

    seed: int = 0
    steps_vae: int = 600
    steps_mmdit: int = 2200
    batch_vae: int = 16
    batch_mmdit: int = 64
    lr_vae: float = 6e-4
    lr_mmdit: float = 6e-4
    warmup: int = 100
    kl_weight: float = 1e-4
    vae_crop: int = 32
    vae_full_fraction: float = 0.2
    dataset_size: int = 10000
    caption_dropout: float = 0.1
    shift: float = 3.0
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    steps_layout: int = 1200
    lr_layout: float = 4e-4
    layout_fraction: float = 0.3
    layout_from: float = 0.75
    probe_weight: float = 0.1
    probe: str = "caption"
    calibration_images: int = 1024
    tokenizer_captions: int = 4000


# --------------------------------------------------------------------------------------------- VAE


def kl_to_prior(mean: Tensor, logvar: Tensor, prior_mean: float, prior_std: float) -> Tensor:
    """Mean KL divergence of ``N(mean, exp(logvar))`` from ``N(prior_mean, prior_std^2)``, per latent element."""
    log_var_prior = 2 * np.log(prior_std)
    return 0.5 * ((mean - prior_mean).pow(2) / prior_std**2 + torch.exp(logvar - log_var_prior) - 1 - logvar
                  + log_var_prior).mean()


def image_batches(batch: int, rng: np.random.Generator, crop: int) -> Iterator[np.ndarray]:
    """Fresh rendered training images forever, randomly cropped to ``crop`` pixels."""
    while True:
        images = render_batch([sample_spec(rng) for _ in range(batch)])
        if crop >= images.shape[1]:
            yield images
            continue
        offsets = rng.integers(0, images.shape[1] - crop + 1, size=(len(images), 2))
        yield np.stack([image[y:y + crop, x:x + crop] for image, (y, x) in zip(images, offsets, strict=True)])


def calibration_images(hyper: Hyper, device: torch.device, stream: int = 4) -> Tensor:
    count = min(hyper.calibration_images, hyper.dataset_size)
    return to_tensor(render_batch(training_specs(hyper.seed, stream, count)), device)


def train_vae(vae: AutoencoderKL, hyper: Hyper, steps: int, device: torch.device, log_every: int) -> Progress:
    """The VAE phase; the latent normalisation is folded in when the whole-image steps begin."""
    rng = np.random.default_rng([hyper.seed, 1])
    generator = torch.Generator().manual_seed(hyper.seed + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=hyper.lr_vae, betas=(0.9, 0.99), weight_decay=0.0)
    progress = Progress("vae", steps, log_every)
    full_from = steps - round(steps * hyper.vae_full_fraction)
    crops, wholes = image_batches(hyper.batch_vae, rng, hyper.vae_crop), image_batches(hyper.batch_vae, rng, RESOLUTION)
    vae.train()
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, hyper.lr_vae, hyper.warmup))
        if step == full_from and step > 0:
            log.info("vae: whole 64x64 images from step %d; first latent normalisation", step + 1)
            normalise_latents(vae, calibration_images(hyper, device))
            optimizer = torch.optim.AdamW(vae.parameters(), lr=hyper.lr_vae, betas=(0.9, 0.99), weight_decay=0.0)
        images = to_tensor(next(wholes if step >= full_from else crops), device)
        mean, logvar = vae.encode_moments(images)
        noise = torch.randn(mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(mean + torch.exp(0.5 * logvar) * noise)
        loss = (F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
                + hyper.kl_weight * kl_to_prior(mean, logvar, SD3.shift, 1.0 / SD3.scale))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), hyper.grad_clip)
        optimizer.step()
        progress.step(step, float(loss.detach()))
    vae.eval()
    return progress


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, images: Tensor) -> float:
    """Mean absolute error of encode -> decode, in 0..255 units."""
    return float((vae.decode(vae.encode(images)).float().clamp(-1, 1) - images).abs().mean() * 127.5)


def finish_vae(vae: AutoencoderKL, hyper: Hyper, device: torch.device) -> dict[str, Any]:
    """The final latent normalisation, the fp16 rounding, and what they did to reconstruction and statistics."""
    calibration = calibration_images(hyper, device)
    check = calibration_images(hyper, device, stream=5)[:256]
    before = reconstruction_error(vae, check)
    normalise_latents(vae, calibration)
    fp16_round(vae)
    after = reconstruction_error(vae, check)
    mean, std = latent_statistics(vae, check)
    model_mean, model_std = (mean - SD3.shift) * SD3.scale, std * SD3.scale
    log.info("VAE reconstruction error %.2f / 255 (%.2f before the final fold); model-space latent mean %s std %s",
             after, before, model_mean.numpy().round(2).tolist(), model_std.numpy().round(2).tolist())
    return {"vae_reconstruction_error_255": round(after, 2), "vae_error_before_final_fold_255": round(before, 2),
            "model_latent_mean_abs_max": round(float(model_mean.abs().max()), 3),
            "model_latent_std_range": [round(float(model_std.min()), 3), round(float(model_std.max()), 3)]}


@torch.no_grad()
def encode_specs(vae: AutoencoderKL, specs: Sequence[ShapeSpec], device: torch.device,
                 chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Every spec's rendered image's posterior (mean, std) in the VAE's space, on the CPU."""
    means, stds = [], []
    for start in range(0, len(specs), chunk):
        mean, logvar = vae.encode_moments(to_tensor(render_batch(specs[start:start + chunk]), device))
        means.append(mean.float().cpu())
        stds.append(torch.exp(0.5 * logvar).float().cpu())
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------------------------- flow


def flow_batch(latent_mean: Tensor, latent_std: Tensor, index: Tensor, shift: float, generator: torch.Generator,
               layout_fraction: float = 0.0, layout_from: float = 0.75) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_sigma, sigma, v target)`` for the images at ``index``: model-space latents drawn from their
    posteriors, ``sigma = shift(uniform)``, ``x_sigma = (1 - sigma) x0 + sigma noise``, ``v = noise - x0``.

    ``layout_fraction`` of the samples take ``t`` uniform in ``[layout_from, 1)`` instead: the noisiest levels,
    where nothing but the prompt tells where the shape goes."""
    latents = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
    x0 = SD3.to_model(latents)
    sigma = flow_sigmas(len(index), shift, generator)
    if layout_fraction > 0:
        t = layout_from + (1 - layout_from) * torch.rand(len(index), generator=generator)
        pick = torch.rand(len(index), generator=generator) < layout_fraction
        sigma = torch.where(pick, shift_sigma(t, shift), sigma)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma[:, None, None, None]
    return (1 - s) * x0 + s * noise, sigma, noise - x0


def train_flow(mmdit: MMDiT, t5: T5EncoderModel, ids: PromptIds, specs: Sequence[ShapeSpec], latent_mean: Tensor,
               latent_std: Tensor, hyper: Hyper, steps: int, device: torch.device, log_every: int, *,
               layout: bool = False) -> tuple[Progress, Ema, Ema]:
    """MMDiT + T5 training on the rectified-flow objective (module docstring); ``layout`` selects the second
    phase: its own seeds and learning rate, ``layout_fraction`` of the noise levels from the noisy end and the
    probe's loss on the T5 output (``hyper.probe``: :class:`~tools.train_tiny_shapes.PositionProbe` or
    :class:`CaptionProbe`; thrown away afterwards)."""
    stream = PROBES[hyper.probe] if layout else 2
    rng = np.random.default_rng([hyper.seed, stream])
    generator = torch.Generator().manual_seed(hyper.seed + stream)
    peak_lr = hyper.lr_layout if layout else hyper.lr_mmdit
    probe: PositionProbe | CaptionProbe | None = None
    if layout:
        width = int(t5.config.d_model)
        probe = (PositionProbe(width) if hyper.probe == "position" else CaptionProbe(width) if hyper.probe == "caption"
                 else RoleProbe(width, color_token_ids(ids))).to(device)
    params = [*mmdit.parameters(), *t5.parameters(), *(probe.parameters() if probe else ())]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.99), weight_decay=0.0)
    mmdit_ema, t5_ema = Ema(mmdit, hyper.ema_decay), Ema(t5, hyper.ema_decay)
    progress = Progress("layout" if layout else "mmdit", steps, log_every)
    pooled = pooled_zeros(hyper.batch_mmdit, device)
    mmdit.train()
    t5.train()
    for step in range(steps):
        set_lr(optimizer, lr_at(step, steps, peak_lr, hyper.warmup))
        index = rng.integers(len(specs), size=hyper.batch_mmdit)
        captions = [random_caption(specs[i], rng) if rng.random() >= hyper.caption_dropout else "" for i in index]
        noisy, sigma, target = flow_batch(latent_mean, latent_std, torch.from_numpy(index), hyper.shift, generator,
                                          hyper.layout_fraction if layout else 0.0, hyper.layout_from)
        input_ids = ids(captions).to(device)
        context = t5(input_ids=input_ids).last_hidden_state
        velocity = mmdit(noisy.to(device), (sigma * 1000).to(device), context, pooled)
        loss = F.mse_loss(velocity.float(), target.to(device))
        if isinstance(probe, PositionProbe):
            labels = PositionProbe.labels([specs[i] for i in index], captions).to(device)
            loss = loss + hyper.probe_weight * probe.loss(context, labels)
        elif probe is not None:
            loss = loss + hyper.probe_weight * probe.loss(context, [specs[i] for i in index], captions)
            if isinstance(probe, RoleProbe):
                loss = loss + hyper.probe_weight * probe.token_loss(context, input_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hyper.grad_clip)
        optimizer.step()
        mmdit_ema.update(mmdit)
        t5_ema.update(t5)
        progress.step(step, float(loss.detach()))
    mmdit.eval()
    t5.eval()
    return progress, mmdit_ema, t5_ema


# --------------------------------------------------------------------------------------------- file


def tokenizer_folder(out: Path) -> Path:
    """Where ``T5Tokenizer.for_encoder(out)`` looks first: ``<folder>/<stem>/``."""
    return out.parent / out.stem


def verify_checkpoint(out: Path, vocab_size: int) -> dict[str, Any]:
    """Read the file back the way Loom does: configs from the key shapes, the tokenizer beside it, the family."""
    from engine.models.loaders import CheckpointFile, UnsupportedModel, detect_family

    problems = []
    with CheckpointFile(out) as ckpt:
        mmdit_config = mmdit_config_from_state_dict(ckpt.shapes(MMDIT_PREFIX), prefix="")
        vae_config = VAEConfig.from_state_dict(ckpt.shapes(VAE_PREFIX))
        t5 = t5_config_from_state_dict(ckpt.shapes(T5_PREFIX))
        try:
            family = detect_family(ckpt).label
        except UnsupportedModel as error:
            family = f"not detected ({error})"
    if mmdit_config != MMDIT_CONFIG:
        problems.append(f"MMDiT config does not round-trip: {mmdit_config}")
    if vae_config != VAE_CONFIG:
        problems.append(f"VAE config does not round-trip: {vae_config}")
    expected = t5_config(vocab_size)
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                 "feed_forward_proj"):
        if getattr(t5, name) != getattr(expected, name):
            problems.append(f"T5 {name} does not round-trip: {getattr(t5, name)} != {getattr(expected, name)}")
    tokenizer = find_t5_tokenizer_file(out)
    if tokenizer.parent != tokenizer_folder(out):
        problems.append(f"T5Tokenizer.for_encoder found {tokenizer}, not the trained one in {tokenizer_folder(out)}")
    if problems:
        raise RuntimeError(f"{out}: " + "; ".join(problems))
    if family.startswith("not detected"):
        log.warning("Loom's detect_family does not recognise the file yet: %s", family)
    return {"family": family, "tokenizer": str(tokenizer), "configs_round_trip": True}


# --------------------------------------------------------------------------------------------- main


def build_models(seed: int, vocab_size: int, device: torch.device) -> tuple[AutoencoderKL, MMDiT, T5EncoderModel]:
    torch.manual_seed(seed)
    vae = init_vae(VAE_CONFIG).to(device)
    mmdit = init_mmdit(MMDIT_CONFIG).to(device)
    t5 = T5EncoderModel(t5_config(vocab_size))
    nn.Module.to(t5, device)  # nn.Module.to: mypy does not accept a device for transformers' wrapped .to
    log.info("parameters: VAE %d, MMDiT %d, T5 %d", count_parameters(vae), count_parameters(mmdit),
             count_parameters(t5))
    return vae, mmdit, t5


def make_tokenizer(hyper: Hyper, out: Path) -> tuple[PromptIds, int]:
    path = write_tokenizer(tokenizer_folder(out), hyper.seed, hyper.tokenizer_captions)
    sentencepiece: Any = importlib.import_module("sentencepiece")
    vocab_size = int(sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size())
    return PromptIds(T5Tokenizer(path)), vocab_size


def median_after_first(times: Sequence[float]) -> float:
    return float(np.median(times[1:] if len(times) > 1 else times)) if times else 0.0


def estimate(hyper: Hyper, steps: int, out: Path, device: torch.device) -> dict[str, Any]:
    """Time ``steps`` steps of each phase and the encoding, and project the full run (wall and CPU time)."""
    ids, vocab_size = make_tokenizer(hyper, Path("/tmp/tiny-sd3-estimate") / out.name)
    vae, mmdit, t5 = build_models(hyper.seed, vocab_size, device)
    probe = dataclasses.replace(hyper, vae_full_fraction=0.5, calibration_images=64)
    vae_progress = train_vae(vae, probe, 2 * (steps + 1), device, log_every=steps + 1)
    specs = training_specs(hyper.seed, 3, 256)
    wall, cpu = time.perf_counter(), time.process_time()
    mean, std = encode_specs(vae, specs, device)
    per_image = {"wall": (time.perf_counter() - wall) / len(specs), "cpu": (time.process_time() - cpu) / len(specs)}
    flow_progress = train_flow(mmdit, t5, ids, specs, mean, std, hyper, steps + 1, device, log_every=steps)[0]
    full_steps = round(hyper.steps_vae * hyper.vae_full_fraction)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "steps_vae": hyper.steps_vae,
                              "steps_mmdit": hyper.steps_mmdit, "steps_layout": hyper.steps_layout,
                              "batch_mmdit": hyper.batch_mmdit}
    flow_steps = hyper.steps_mmdit + hyper.steps_layout  # a layout step costs what a first-phase step does
    for kind, vae_times, flow_times in (("wall", vae_progress.step_times, flow_progress.step_times),
                                        ("cpu", vae_progress.cpu_times, flow_progress.cpu_times)):
        crop_s, whole_s = median_after_first(vae_times[:steps + 1]), median_after_first(vae_times[steps + 1:])
        flow_s = median_after_first(flow_times)
        vae_total = crop_s * (hyper.steps_vae - full_steps) + whole_s * full_steps
        data_total = per_image[kind] * (hyper.dataset_size + 3 * hyper.calibration_images)
        total = vae_total + flow_s * flow_steps + data_total
        result[kind] = {"vae_crop_s_per_step": round(crop_s, 3), "vae_whole_s_per_step": round(whole_s, 3),
                        "mmdit_s_per_step": round(flow_s, 3), "vae_min": round(vae_total / 60, 1),
                        "mmdit_min": round(flow_s * flow_steps / 60, 1), "data_min": round(data_total / 60, 1),
                        "total_min": round(total / 60, 1)}
    return result


def resume_from(path: Path, out: Path, device: torch.device) -> tuple[PromptIds, AutoencoderKL, MMDiT, T5EncoderModel]:
    """A saved checkpoint's parts as trainable float32 modules, and its tokenizer (copied beside ``out``)."""
    mmdit, vae, t5 = load_parts(path, device)
    vae.requires_grad_(False).eval()
    mmdit.requires_grad_(True)
    t5.requires_grad_(True)
    tokenizer = find_t5_tokenizer_file(path)
    target = tokenizer_folder(out) / tokenizer.name
    if tokenizer.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, target)
    log.info("resumed from %s (tokenizer %s)", path, target)
    return PromptIds(T5Tokenizer(target)), vae, mmdit, t5


def train(hyper: Hyper, out: Path, device: torch.device, log_every: int, eval_count: int,
          grid: Path | None = None, resume: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {"out": str(out)}
    if resume is None:
        ids, vocab_size = make_tokenizer(hyper, out)
        vae, mmdit, t5 = build_models(hyper.seed, vocab_size, device)
        vae_progress = train_vae(vae, hyper, hyper.steps_vae, device, log_every)
        report.update(vae_final_loss=round(float(np.mean(vae_progress.losses[-50:])), 4),
                      vae_s_per_step=round(vae_progress.seconds_per_step(), 3))
        report.update(finish_vae(vae, hyper, device))
    else:
        ids, vae, mmdit, t5 = resume_from(resume, out, device)
        vocab_size = int(t5.config.vocab_size)
    report["vocab_size"] = vocab_size
    specs = training_specs(hyper.seed, 3, hyper.dataset_size)
    latent_mean, latent_std = encode_specs(vae, specs, device)
    log.info("encoded %d images: model-space latent std %.3f", len(specs), float(SD3.to_model(latent_mean).std()))
    phases = [(False, hyper.steps_mmdit)] if resume is None else []
    phases += [(True, hyper.steps_layout)] if hyper.steps_layout > 0 else []
    for layout, steps in phases:
        progress, mmdit_ema, t5_ema = train_flow(mmdit, t5, ids, specs, latent_mean, latent_std, hyper, steps,
                                                 device, log_every, layout=layout)
        mmdit_ema.copy_to(mmdit)
        t5_ema.copy_to(t5)
        fp16_round(mmdit, t5)  # what the file holds, so a resumed run continues from the same weights
        name = "layout" if layout else "mmdit"
        report[f"{name}_s_per_step"] = round(progress.seconds_per_step(), 3)
        report[f"{name}_final_loss"] = round(float(np.mean(progress.losses[-100:])), 4)
    elapsed = time.perf_counter() - started
    metadata = {"loom.tool": "tools/train_tiny_sd3.py", "loom.hyper": json.dumps(dataclasses.asdict(hyper)),
                "loom.train_seconds": f"{elapsed:.0f}", "loom.threads": str(torch.get_num_threads())}
    if resume is not None:
        metadata["loom.resumed_from"] = resume.name
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(mmdit, vae, t5), str(out), metadata=metadata)
    log.info("saved %s (%.2f MB)", out, out.stat().st_size / 1e6)
    report.update({"megabytes": round(out.stat().st_size / 1e6, 2), "train_minutes": round(elapsed / 60, 1),
                   "threads": torch.get_num_threads(),
                   "parameters": {"vae": count_parameters(vae), "mmdit": count_parameters(mmdit),
                                  "t5": count_parameters(t5)}})
    report["verify"] = verify_checkpoint(out, vocab_size)
    if eval_count > 0:
        loaded_mmdit, loaded_vae, loaded_t5 = load_parts(out, device)
        scores, images, texts, marks = score_held_out(loaded_mmdit, loaded_t5, loaded_vae,
                                                      PromptIds(T5Tokenizer.for_encoder(out)), count=eval_count, seed=0)
        report["held_out"] = scores
        if grid is not None:
            write_grid(list(images), texts, marks, grid, columns=min(6, len(texts)))
            report["grid"] = str(grid)
    return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = Hyper()
    parser = argparse.ArgumentParser(description="Train the tiny-shapes SD3-layout demo checkpoint from scratch.")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps-vae", type=int, default=defaults.steps_vae)
    parser.add_argument("--steps-mmdit", type=int, default=defaults.steps_mmdit, help="MMDiT + T5 steps")
    parser.add_argument("--steps-layout", type=int, default=defaults.steps_layout,
                        help="second phase: MMDiT + T5 steps with the noisy-end sampling and the position probe")
    parser.add_argument("--probe", choices=sorted(PROBES), default=defaults.probe,
                        help="the layout phase's probe: what it asks the T5 output to tell")
    parser.add_argument("--lr-layout", type=float, default=defaults.lr_layout)
    parser.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                        help="skip the tokenizer, the VAE and the first phase: run only the layout phase from CKPT")
    parser.add_argument("--batch-vae", type=int, default=defaults.batch_vae)
    parser.add_argument("--batch-mmdit", type=int, default=defaults.batch_mmdit)
    parser.add_argument("--lr-mmdit", type=float, default=defaults.lr_mmdit)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size,
                        help="captioned images encoded for the MMDiT phase")
    parser.add_argument("--eval-count", type=int, default=24, help="held-out prompts sampled from the saved file")
    parser.add_argument("--grid", type=Path, default=None, help="write the held-out samples as a PNG grid here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
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
    hyper = Hyper(seed=args.seed, steps_vae=args.steps_vae, steps_mmdit=args.steps_mmdit, batch_vae=args.batch_vae,
                  steps_layout=args.steps_layout, probe=args.probe, lr_layout=args.lr_layout,
                  batch_mmdit=args.batch_mmdit, lr_mmdit=args.lr_mmdit, dataset_size=args.dataset_size,
                  warmup=min(Hyper.warmup, max(1, min(args.steps_vae, args.steps_mmdit) // 10)))
    if args.estimate:
        result = estimate(hyper, args.estimate, args.out, device)
        log.info("estimated full training (%d VAE + %d MMDiT + %d layout steps, %d threads): %.1f min by wall-clock "
                 "time, %.1f CPU-minutes", hyper.steps_vae, hyper.steps_mmdit, hyper.steps_layout, result["threads"],
                 result["wall"]["total_min"], result["cpu"]["total_min"])
    else:
        result = train(hyper, args.out, device, args.log_every, args.eval_count, args.grid, args.resume)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
