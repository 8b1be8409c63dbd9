"""Safe Latent Diffusion against diffusers' StableDiffusionPipelineSafe (an independent implementation).

The parity test runs diffusers' whole pipeline ``__call__`` (its prompt encoding, its three-way batch,
its guidance loop with the safety concept, momentum and warmup, and its scheduler steps) on a tiny
random ``UNet2DConditionModel``, a tiny ``CLIPTextModel`` and a tiny VAE, and Loom's sampling stack
(``ksample`` + ``CFGDenoiser`` + ``UNetApply`` with the :class:`SafeLatentDiffusionPatch` installed
through ``gather_hooks``) on Loom's ``UNetModel`` loaded with the same UNet weights. Shared, so that
the guidance is what is under test: the sigmas (Loom's karras schedule handed to diffusers'
``EulerDiscreteScheduler``, Loom's sampler ``euler``, the same update rule as shown in
test_sampling_diffusers.py), the sigma -> timestep map, the seeded starting noise, and the text
contexts (diffusers' text encoder output for the same token ids, which are checked equal to Loom's
tokenizer's). Compared: the latent after every step, within 1e-4 relative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.conditioning import CondSpec, UNetApply
from engine.backend.guidance import CFGDenoiser, GuidanceStep, ParameterizedModel, gather_hooks
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.schedules import sigmas_for
from engine.backend.sld import PRESETS, SafeLatentDiffusionPatch, SafetyRun, SafetySettings, safety_guidance
from engine.backend.tokenizer import ClipTokenizer
from engine.backend.unet import UNetConfig, UNetModel
from engine.models.convert_diffusers import diffusers_unet_to_ldm
from nodes.safety import DEFAULT_SAFETY_CONCEPT
from tests.backend.conftest import randomize_norms, relative_error
from tests.backend.test_sampling_diffusers import SD_BETAS, TINY_UNET
from tests.backend.test_tokenizer import _reference_vocab_files

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
safe = pytest.importorskip("diffusers.pipelines.deprecated.stable_diffusion_safe")

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:Safety checker disabled:UserWarning",
)

TOLERANCE = 1e-4
STEPS, CFG, SEED, BATCH, SIZE = 7, 7.5, 42, 2, 8
PROMPT, NEGATIVE, CONCEPT = "a photo of a cat", "blurry", "a dog with a red hat"


# Fixtures: one set of tiny weights shared by both sides ---------------------------------------------------


@pytest.fixture(scope="module")
def unets() -> tuple[Any, UNetModel]:
    torch.manual_seed(0)
    reference = diffusers.UNet2DConditionModel(**TINY_UNET).eval()
    randomize_norms(reference, torch.Generator().manual_seed(0))
    weights = diffusers_unet_to_ldm(reference.state_dict())
    config = UNetConfig(**{**UNetConfig.from_state_dict(weights).__dict__, "num_heads": 8, "num_head_channels": -1})
    unet = UNetModel(config).eval()
    unet.load_state_dict(weights, strict=True)
    return reference, unet


@pytest.fixture(scope="module")
def text_encoder() -> Any:
    torch.manual_seed(1)
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=TINY_UNET["cross_attention_dim"],
                                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=77, projection_dim=32)
    return transformers.CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    vocab, merges = _reference_vocab_files(tmp_path_factory.mktemp("sld_vocab"))
    return transformers.CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


class _SharedSigmasEuler(diffusers.EulerDiscreteScheduler):  # type: ignore[name-defined]
    """diffusers' Euler scheduler over Loom's sigmas, with Loom's sigma -> timestep map."""

    loom_sigmas: Tensor
    loom_timesteps: Tensor

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        super().set_timesteps(sigmas=self.loom_sigmas.numpy(), device=device)
        torch.testing.assert_close(self.sigmas, self.loom_sigmas, rtol=0, atol=0)
        self.timesteps = self.loom_timesteps.clone()


# The two sides -----------------------------------------------------------------------------------------


def _run_diffusers(unet: Any, text_encoder: Any, tokenizer: Any, sigmas: Tensor, ms: ModelSampling, noise: Tensor,
                   settings: SafetySettings) -> list[Tensor]:
    scheduler = _SharedSigmasEuler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    scheduler.loom_sigmas = sigmas
    scheduler.loom_timesteps = ms.timestep(sigmas[:-1]).float()
    vae = diffusers.AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32)
    pipe = safe.StableDiffusionPipelineSafe(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.safety_concept = CONCEPT
    after_steps: list[Tensor] = []
    pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG,
         num_images_per_prompt=BATCH, latents=noise.clone(), output_type="np",
         callback=lambda i, t, latents: after_steps.append(latents.clone()),
         sld_guidance_scale=settings.guidance_scale, sld_warmup_steps=settings.warmup_steps,
         sld_threshold=settings.threshold, sld_momentum_scale=settings.momentum_scale,
         sld_mom_beta=settings.mom_beta)
    return after_steps


def _context(text_encoder: Any, text: str) -> Tensor:
    """The text encoder's last hidden state for Loom's token ids of ``text`` (one 77-token chunk)."""
    ids = ClipTokenizer().tokenize(text)
    assert len(ids) == 1
    return text_encoder(torch.tensor(ids))[0]


def _run_loom(unet: UNetModel, text_encoder: Any, sigmas: Tensor, ms: ModelSampling, noise: Tensor,
              settings: SafetySettings) -> list[Tensor]:
    cond, uncond, concept = (_context(text_encoder, text) for text in (PROMPT, NEGATIVE, CONCEPT))
    hooks = gather_hooks([SafeLatentDiffusionPatch([CondSpec(concept)], settings)], ms)
    assert hooks.cfg_function is not None and len(hooks.extra_conditioning) == 1
    denoiser = CFGDenoiser(ParameterizedModel(UNetApply(unet), ms), [CondSpec(cond)], [CondSpec(uncond)], CFG,
                           cfg_function=hooks.cfg_function, extra=hooks.extra_conditioning)
    starts: list[Tensor] = []
    final = ksample(denoiser, ms, "euler", sigmas, noise, torch.zeros_like(noise), seed=SEED,
                    callback=lambda info: starts.append(info["x"]))
    return [*starts[1:], final]


# Tests -------------------------------------------------------------------------------------------------


SETTINGS = {
    # diffusers' defaults (MEDIUM) with a warmup inside the 7 steps: clamp, threshold, momentum, warmup.
    "medium_warmup_2": SafetySettings(guidance_scale=1000, warmup_steps=2, threshold=0.01, momentum_scale=0.3,
                                      mom_beta=0.4),
    # a small scale keeps |diff| * scale below 1 in many elements (the clamp is not saturated).
    "unsaturated": SafetySettings(guidance_scale=3, warmup_steps=1, threshold=0.0, momentum_scale=0.5, mom_beta=0.7),
    "MAX": PRESETS["MAX"],
}


@pytest.mark.parametrize("name", list(SETTINGS))
@torch.no_grad()
def test_sampling_with_safety_guidance_matches_diffusers_pipeline(
    unets: tuple[Any, UNetModel], text_encoder: Any, tokenizer: Any, ms: ModelSampling, name: str
) -> None:
    settings = SETTINGS[name]
    reference_unet, unet = unets
    sigmas = sigmas_for(ms, "karras", "euler", STEPS)
    noise = prepare_noise(torch.zeros(BATCH, 4, SIZE, SIZE), SEED)
    for text in (PROMPT, NEGATIVE, CONCEPT):  # both sides read the same token ids
        assert tokenizer(text, padding="max_length", max_length=77).input_ids == ClipTokenizer().tokenize(text)[0]

    expected = _run_diffusers(reference_unet, text_encoder, tokenizer, sigmas, ms, noise, settings)
    actual = _run_loom(unet, text_encoder, sigmas, ms, noise, settings)
    errors = [relative_error(a, b) for a, b in zip(actual, expected, strict=True)]
    assert len(errors) == STEPS and max(errors) < TOLERANCE, f"per-step relative errors {errors}"

    plain = CFGDenoiser(ParameterizedModel(UNetApply(unet), ms), [CondSpec(_context(text_encoder, PROMPT))],
                        [CondSpec(_context(text_encoder, NEGATIVE))], CFG)
    unguided = ksample(plain, ms, "euler", sigmas, noise, torch.zeros_like(noise), seed=SEED)
    assert relative_error(unguided, expected[-1]) > 10 * TOLERANCE  # the safety guidance changed the result


def test_presets_and_default_concept_are_diffusers() -> None:
    config = safe.SafetyConfig
    for preset in ("WEAK", "MEDIUM", "STRONG", "MAX"):
        ours = PRESETS[preset]
        theirs = getattr(config, preset)
        assert (ours.guidance_scale, ours.warmup_steps, ours.threshold, ours.momentum_scale, ours.mom_beta) == (
            theirs["sld_guidance_scale"], theirs["sld_warmup_steps"], theirs["sld_threshold"],
            theirs["sld_momentum_scale"], theirs["sld_mom_beta"])
    assert SafetySettings() == PRESETS["MEDIUM"]
    source = Path(safe.pipeline_stable_diffusion_safe.__file__).read_text()
    pieces = [piece for piece in DEFAULT_SAFETY_CONCEPT.split(" ") if piece]
    assert all(piece in source for piece in pieces)
    assert safe.StableDiffusionPipelineSafe.__init__.__code__.co_consts.count(DEFAULT_SAFETY_CONCEPT) == 1


def _step(x: Tensor, sigma: float, cond: Tensor, uncond: Tensor | None, concept: Tensor,
          cfg: float = 5.0) -> GuidanceStep:
    return GuidanceStep(x=x, sigma=torch.full((x.shape[0],), sigma), cfg_scale=cfg, cond_denoised=cond,
                        uncond_denoised=uncond, extra_denoised=(concept,), model_fn=lambda *a, **k: x, cond=None,
                        uncond=None, kwargs={})


def test_step_index_follows_sigma_order_and_each_run_starts_afresh() -> None:
    patch = SafeLatentDiffusionPatch(["concept"], SafetySettings(warmup_steps=2))
    hooks = gather_hooks([patch], None)
    run = hooks.cfg_function
    assert isinstance(run, SafetyRun)
    # Heun-like: sigma 10, 5 (step 1), 5 again, 2 (step 2), 2 again.
    assert [run.step_index(torch.tensor([s])) for s in (10.0, 5.0, 5.0, 2.0, 2.0)] == [0, 1, 1, 2, 2]
    again = gather_hooks([patch], None).cfg_function
    assert isinstance(again, SafetyRun) and again is not run
    assert again.step_index(torch.tensor([3.0])) == 0 and again.momentum is None


def test_warmup_momentum_and_the_eps_round_trip() -> None:
    """Before warmup the result is plain CFG, yet momentum builds up; after warmup it equals the eps formula."""
    generator = torch.Generator().manual_seed(0)
    x, cond, uncond, concept = (torch.randn(2, 4, 3, 3, generator=generator) for _ in range(4))
    settings = SafetySettings(guidance_scale=5.0, warmup_steps=1, threshold=0.0, momentum_scale=0.5, mom_beta=0.7)
    run = SafetyRun(settings, 0)
    first = run(_step(x, 4.0, cond, uncond, concept))
    torch.testing.assert_close(first, uncond + (cond - uncond) * 5.0)
    assert run.momentum is not None and run.momentum.abs().max() > 0
    momentum = run.momentum.clone()
    second = run(_step(x, 2.0, cond, uncond, concept))
    eps_uncond, eps_cond, eps_concept = ((x - d) / 2.0 for d in (uncond, cond, concept))
    guidance, _ = safety_guidance(eps_uncond, eps_cond, eps_concept, momentum, 1, settings)
    torch.testing.assert_close(second, x - (eps_uncond + 5.0 * guidance) * 2.0)
    assert (second - (uncond + (cond - uncond) * 5.0)).abs().max() > 1e-3


def test_no_uncond_or_disabled_scale_means_no_safety_guidance() -> None:
    x, cond, concept = torch.randn(3, 1, 4, 2, 2).unbind(0)
    run = SafetyRun(SafetySettings(), 0)
    assert run(_step(x, 3.0, cond, None, concept, cfg=1.0)) is cond and run.momentum is None
    off = gather_hooks([SafeLatentDiffusionPatch(["concept"], SafetySettings(guidance_scale=1.0))], None)
    assert off.cfg_function is None and off.extra_conditioning == []
