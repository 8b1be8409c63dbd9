"""A minimal text-to-image loop for the tiny SD3 demo, independent of Loom's sampler and nodes.

Tokens by :func:`engine.backend.t5_tokenizer.tokenize_t5_prompt` (ComfyUI's SD3 rules), the T5 last hidden
state as the context, zeros as the pooled vector, Euler over the ``simple`` schedule of
``DiscreteFlowSampling(shift)`` with classifier-free guidance on the denoised estimate
(``denoised = x - sigma * v``), and the SD3 latent format undone before the VAE decodes. This is what
a ComfyUI graph ``ModelSamplingSD3 -> KSampler (euler, simple)`` computes, written out so the trainer
can check its file before Loom's SD3 wiring exists. :func:`score_held_out` measures prompt following
with the evaluator's classifier on held-out prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import T5EncoderModel

from engine.backend.latent_formats import SD3
from engine.backend.mmdit import MMDiT
from engine.backend.model_sampling import DiscreteFlowSampling
from engine.backend.schedules import simple_scheduler
from engine.backend.t5_tokenizer import T5Tokenizer, tokenize_t5_prompt
from engine.backend.vae import AutoencoderKL
from tools.eval_tiny_shapes import classify, score
from tools.tiny_sd3_parts import pooled_zeros
from tools.tiny_shapes_data import canonical_caption, eval_specs

SCORED = ("color", "shape", "position", "background")


class PromptIds:
    """Prompt -> T5 token ids ``[L]`` with ComfyUI's SD3 rules (end token, padding to 77), cached."""

    def __init__(self, tokenizer: T5Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, texts: Sequence[str]) -> Tensor:
        rows = []
        for text in texts:
            ids = self.cache.get(text)
            if ids is None:
                ids = self.cache[text] = tokenize_t5_prompt(text, self.tokenizer).ids
            rows.append(ids)
        lengths = {len(row) for row in rows}
        if len(lengths) != 1:
            raise ValueError(f"prompts of different token lengths {sorted(lengths)} cannot share a batch")
        return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def generate(mmdit: MMDiT, t5: T5EncoderModel, vae: AutoencoderKL, ids: PromptIds, texts: Sequence[str],
             seeds: Sequence[int], *, steps: int = 20, cfg: float = 4.5, shift: float = 3.0, size: int = 64,
             negative: str = "") -> np.ndarray:
    """uint8 images ``[N, size, size, 3]``, one per prompt; each seed's noise is one ``torch.randn`` of a
    ``[1, 16, size / 8, size / 8]`` latent on a CPU generator, as ComfyUI makes it."""
    device = next(mmdit.parameters()).device
    latent = size // 8
    noise = torch.cat([torch.randn(1, mmdit.config.in_channels, latent, latent,
                                   generator=torch.Generator().manual_seed(int(seed))) for seed in seeds])
    cond = t5(input_ids=ids(texts).to(device)).last_hidden_state.float()
    uncond = t5(input_ids=ids([negative] * len(texts)).to(device)).last_hidden_state.float()
    context = torch.cat([uncond, cond])
    pooled = pooled_zeros(2 * len(texts), device)
    sigmas = simple_scheduler(DiscreteFlowSampling(shift=shift), steps).tolist()
    x = noise.to(device) * sigmas[0]  # flow noise scaling of an empty latent: sigma * noise + (1 - sigma) * 0
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        timestep = torch.full((2 * len(texts),), sigma * 1000.0, device=device)
        velocity = mmdit(torch.cat([x, x]), timestep, context, pooled).float()
        denoised_uncond, denoised_cond = (torch.cat([x, x]) - sigma * velocity).chunk(2)
        denoised = denoised_uncond + cfg * (denoised_cond - denoised_uncond)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    images = vae.decode(SD3.to_vae(x)).float().clamp(-1, 1)
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def score_held_out(mmdit: MMDiT, t5: T5EncoderModel, vae: AutoencoderKL, ids: PromptIds, *, count: int, seed: int,
                   steps: int = 20, cfg: float = 4.5, batch: int = 16) -> tuple[dict[str, Any], np.ndarray, list[str],
                                                                            list[dict[str, bool]]]:
    """Percent correct colour / shape / position / background on ``count`` held-out prompts (canonical
    captions of :func:`tools.tiny_shapes_data.eval_specs`), with the images, prompts and per-image marks."""
    specs = eval_specs(count, seed)
    texts = [canonical_caption(spec) for spec in specs]
    seeds = [seed * 1000 + i for i in range(len(specs))]
    chunks = [generate(mmdit, t5, vae, ids, texts[i:i + batch], seeds[i:i + batch], steps=steps, cfg=cfg)
              for i in range(0, len(texts), batch)]
    images = np.concatenate(chunks)
    marks = [score(spec, classify(image)) for spec, image in zip(specs, images, strict=True)]
    result: dict[str, Any] = {key: round(100.0 * sum(m[key] for m in marks) / len(marks), 1) for key in SCORED}
    result.update(count=count, seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="simple", shift=3.0)
    return result, images, texts, marks
