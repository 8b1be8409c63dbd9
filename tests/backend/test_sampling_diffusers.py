"""Whole sampling loops against diffusers' schedulers, an independent implementation of the same update
rules, on a tiny random UNet in fp32.

Each test runs one loop twice from the same starting latent over the same sigmas:

* Loom: ``ModelSampling`` (eps), our schedule (``sigmas_for``), ``ParameterizedModel`` and our
  ``sample_<name>`` (the CFG test: the node stack, ``UNetApply`` + ``CFGDenoiser`` + ``ksample``);
* diffusers: the matching scheduler (``EulerDiscreteScheduler`` for euler, ``HeunDiscreteScheduler``
  for heun, ``LMSDiscreteScheduler`` for lms, ``KDPM2DiscreteScheduler`` for dpm_2,
  ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2, midpoint) for dpmpp_2m,
  ``EulerAncestralDiscreteScheduler`` for euler_ancestral) with SD's betas (scaled_linear
  0.00085..0.012, 1000 steps), driven as a pipeline drives it: ``scale_model_input``, the network,
  ``step``.

Independent (diffusers' own code): the update rule of every step and its multistep / second-stage
coefficients (LMS's integrated Lagrange weights, DPM-Solver++'s r, the Heun average, the DPM-2
midpoint sigma, the ancestral sigma_up / sigma_down split), the interleaving of second-stage
evaluations, the lower-order first / final steps, the input scaling c_in = 1 / sqrt(sigma^2 + 1), the
eps -> denoised conversion and, for DPM-Solver, the VP parameterisation (alpha_t, sigma_t, lambda_t);
in the CFG test also the guidance combination (applied to eps there, to the denoised estimate in
Loom: equal since denoised is affine in eps) and the initial noise scale (``init_noise_sigma``).

Shared, so that only the sampler math is under test:

* the network: the tiny diffusers ``UNet2DConditionModel``'s weights converted into Loom's
  ``UNetModel`` (as ``test_unet_diffusers`` does, which checks that conversion), evaluated on both
  sides; one CFG case also runs diffusers' own UNet on its side;
* the sigma -> network timestep map: diffusers' side feeds ``ModelSampling.timestep(sigma)`` for the
  sigma its scheduler is at (diffusers' own timesteps are log-interpolated, ComfyUI's the nearest
  integer; that map is ComfyUI semantics, not sampler math, and is tested elsewhere);
* the sigmas: Loom's karras / normal schedules are handed to diffusers. ``EulerDiscreteScheduler``
  takes them through ``set_timesteps(sigmas=...)``; Heun, LMS, KDPM2 and DPMSolverMultistep have no
  such argument, so the ``use_karras_sigmas`` path is used with ``_convert_to_karras`` replaced by
  one returning our sigmas: diffusers' ``set_timesteps`` then builds everything else (final 0,
  interleaving, interpolated sigmas, solver state) itself. ``EulerAncestralDiscreteScheduler`` has
  neither, so its ``sigmas`` / ``timesteps`` are assigned after ``set_timesteps``. Each scheduler's
  table is checked against ours before the run;
* the per-step noise of euler_ancestral: two generators with the same seed.

Compared: the latent at the start of every step and the final latent, within 1e-4 relative (max
abs difference over max abs value). Reached: exactly 0 for euler, heun, dpm_2 and euler_ancestral
(the same float operations), < 1e-7 for lms (quadrature vs Gauss-Legendre weights), < 1e-6 for
dpmpp_2m (VP vs VE arithmetic) and the CFG loops, ~2e-6 with diffusers' own UNet. Scaling one update
coefficient of a Loom sampler by ~0.1% (Euler's step, the LMS sum, the DPM-2 midpoint, DPM-Solver's
first-order step, eta), dropping the LMS order to 3, or swapping cond / uncond fails these tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from engine.backend.conditioning import CondSpec, UNetApply
from engine.backend.guidance import CFGDenoiser, ParameterizedModel
from engine.backend.ksampler import ksample
from engine.backend.model_sampling import ModelSampling
from engine.backend.noise import prepare_noise
from engine.backend.samplers import get_sampler
from engine.backend.schedules import sigmas_for
from engine.backend.unet import UNetConfig, UNetModel
from engine.models.convert_diffusers import diffusers_unet_to_ldm
from tests.backend.conftest import randomize_norms, relative_error

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("scipy")  # LMSDiscreteScheduler integrates its coefficients with scipy

TOLERANCE = 1e-4
STEPS = 7
BATCH, HEIGHT, WIDTH, TOKENS, CONTEXT_DIM = 2, 8, 8, 7, 32
SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
TINY_UNET: dict[str, Any] = {
    "sample_size": HEIGHT,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "cross_attention_dim": CONTEXT_DIM,
    "attention_head_dim": 8,  # 8 heads
    "norm_num_groups": 32,
}
# diffusers' own numpy conversions of tensors (scheduler set-up) warn under this numpy / torch pair.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:__array_wrap__ must accept context:DeprecationWarning",
)

SAMPLERS = ["euler", "heun", "lms", "dpm_2", "dpmpp_2m", "euler_ancestral"]
# A KSampler schedule, and a KSamplerAdvanced run (normal, end_at_step 5 of 8, force_full_denoise)
# whose last step jumps from sigma ~1.3 to 0, so the final-step rules matter (from sigma_min ~0.03
# they hardly do).
SCHEDULES: dict[str, dict[str, Any]] = {
    "karras": {"scheduler": "karras", "steps": STEPS},
    "normal": {"scheduler": "normal", "steps": STEPS},
    "normal_cut": {"scheduler": "normal", "steps": 8, "last_step": 5, "force_full_denoise": True},
}

EpsFn = Callable[[Tensor, Tensor], Tensor]


@pytest.fixture(scope="module")
def networks() -> tuple[Any, UNetModel]:
    """A seeded tiny diffusers UNet and Loom's UNet loaded (strict) with its renamed weights."""
    torch.manual_seed(0)
    reference = diffusers.UNet2DConditionModel(**TINY_UNET).eval()
    randomize_norms(reference, torch.Generator().manual_seed(0))
    weights = diffusers_unet_to_ldm(reference.state_dict())
    config = UNetConfig(**{**UNetConfig.from_state_dict(weights).__dict__, "num_heads": 8, "num_head_channels": -1})
    unet = UNetModel(config).eval()
    unet.load_state_dict(weights, strict=True)
    return reference, unet


@pytest.fixture(scope="module")
def unet(networks: tuple[Any, UNetModel]) -> UNetModel:
    return networks[1]


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling.from_betas()


@pytest.fixture(scope="module")
def contexts() -> tuple[Tensor, Tensor]:
    """(cond, uncond) text contexts, one per prompt: [1, TOKENS, CONTEXT_DIM]."""
    generator = torch.Generator().manual_seed(3)
    cond = torch.randn(1, TOKENS, CONTEXT_DIM, generator=generator)
    uncond = torch.randn(1, TOKENS, CONTEXT_DIM, generator=generator)
    return cond, uncond


def _unit_noise(seed: int = 1) -> Tensor:
    return torch.randn(BATCH, 4, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


# diffusers' side ----------------------------------------------------------------------------------------


def _inject_sigmas(scheduler: Any, sigmas: Tensor) -> None:
    """Make the scheduler's ``use_karras_sigmas`` path yield our sigmas (without the final 0, which
    diffusers appends itself)."""
    assert float(sigmas[-1]) == 0.0
    ours = sigmas[:-1].double().numpy()
    scheduler._convert_to_karras = lambda in_sigmas, num_inference_steps=None: ours.copy()


def _diffusers_scheduler(name: str, sigmas: Tensor) -> Any:
    """diffusers' scheduler for the sampler ``name``, set up over ``sigmas`` (Loom's, ending in 0)."""
    steps = len(sigmas) - 1
    if name == "euler":
        scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS)
        scheduler.set_timesteps(sigmas=sigmas.numpy())
        table = scheduler.sigmas
    elif name == "euler_ancestral":
        # No custom sigmas in this scheduler: assign its table (timesteps only serve the index lookup,
        # which set_begin_index below bypasses, and the loop length).
        scheduler = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS)
        scheduler.set_timesteps(steps)
        scheduler.sigmas = sigmas.clone()
        scheduler.timesteps = torch.arange(steps, 0, -1, dtype=torch.float32)
        table = scheduler.sigmas
    else:
        options: dict[str, Any] = {}
        if name == "heun":
            cls = diffusers.HeunDiscreteScheduler
        elif name == "lms":
            cls = diffusers.LMSDiscreteScheduler
        elif name == "dpm_2":
            cls = diffusers.KDPM2DiscreteScheduler
        elif name == "dpmpp_2m":
            cls = diffusers.DPMSolverMultistepScheduler
            # ComfyUI's dpmpp_2m: data prediction, second order with the midpoint rule, first order on
            # the first step and on the last step to sigma 0 (final_sigmas_type "zero" forces that).
            options = {
                "algorithm_type": "dpmsolver++",
                "solver_order": 2,
                "solver_type": "midpoint",
                "lower_order_final": True,
                "final_sigmas_type": "zero",
            }
        else:
            raise AssertionError(name)
        scheduler = cls(**SD_BETAS, use_karras_sigmas=True, **options)
        _inject_sigmas(scheduler, sigmas)
        scheduler.set_timesteps(steps)
        # Heun and KDPM2 store every sigma twice (first / second stage); the distinct values are ours.
        table = torch.unique_consecutive(scheduler.sigmas)
    torch.testing.assert_close(table, sigmas, rtol=0, atol=0)
    scheduler.set_begin_index(0)
    return scheduler


def _model_sigma(name: str, scheduler: Any, index: int) -> Tensor:
    """The sigma diffusers evaluates the model at for call number ``index`` (its step index)."""
    if name == "dpm_2" and not scheduler.state_in_first_order:
        return scheduler.sigmas_interpol[index]
    return scheduler.sigmas[index]


def _run_diffusers(
    name: str, scheduler: Any, x: Tensor, eps_fn: EpsFn, generator: torch.Generator | None = None
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Drive ``scheduler`` from the VE latent ``x`` (``x0 + sigma * noise``, k-diffusion's form).

    Returns the VE latent at the start of every step, the final sample and the last step's
    ``pred_original_sample`` (diffusers' denoised estimate; the same as the final sample for DPM-Solver).
    """
    # DPM-Solver holds the VP latent x / sqrt(1 + sigma^2); the others hold x itself.
    vp = isinstance(scheduler, diffusers.DPMSolverMultistepScheduler)
    sample = x / (1 + scheduler.sigmas[0] ** 2) ** 0.5 if vp else x.clone()
    starts: list[Tensor] = []
    denoised = sample
    for index, t in enumerate(scheduler.timesteps):
        first_stage = getattr(scheduler, "state_in_first_order", True)
        sigma = _model_sigma(name, scheduler, index)
        if first_stage:
            starts.append(sample * (1 + sigma**2) ** 0.5 if vp else sample)
        model_input = scheduler.scale_model_input(sample, t)
        extra = {} if generator is None else {"generator": generator}
        out = scheduler.step(eps_fn(model_input, sigma), t, sample, **extra)
        sample = out.prev_sample
        denoised = getattr(out, "pred_original_sample", sample)
    assert scheduler.step_index == len(scheduler.timesteps)
    return starts, sample, denoised


def _eps_fn(unet: UNetModel, ms: ModelSampling, context: Tensor) -> EpsFn:
    """The network's eps at (scaled input, sigma), with Loom's sigma -> timestep map (shared)."""

    def eps(model_input: Tensor, sigma: Tensor) -> Tensor:
        timestep = ms.timestep(sigma).float().expand(model_input.shape[0])
        return unet(model_input, timestep, context.expand(model_input.shape[0], -1, -1))

    return eps


def _schedule(ms: ModelSampling, schedule: str, sampler: str) -> Tensor:
    options = dict(SCHEDULES[schedule])
    return sigmas_for(ms, options.pop("scheduler"), sampler, **options)


def _assert_trajectories_match(loom: list[Tensor], reference: list[Tensor], final: Tensor, expected: Tensor) -> None:
    assert len(loom) == len(reference) > 1
    errors = [relative_error(a, b) for a, b in zip(loom, reference, strict=True)]
    assert max(errors) < TOLERANCE, f"per-step relative errors {errors}"
    error = relative_error(final, expected)
    assert error < TOLERANCE, f"final relative error {error:.3g} (per step {errors})"


# Tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["karras", "normal_cut"])
@pytest.mark.parametrize("name", SAMPLERS)
@torch.no_grad()
def test_sampler_loop_matches_diffusers_scheduler(
    unet: UNetModel, ms: ModelSampling, contexts: tuple[Tensor, Tensor], name: str, schedule: str
) -> None:
    """One sampler, no guidance: the latent at every step and the final latent as diffusers'."""
    context = contexts[0]
    sigmas = _schedule(ms, schedule, name)
    x = _unit_noise() * (1 + sigmas[0] ** 2) ** 0.5

    model = ParameterizedModel(lambda x_in, t, conds: unet(x_in, t, conds[0].expand(x_in.shape[0], -1, -1)), ms)
    starts: list[Tensor] = []
    options: dict[str, Any] = {}
    diffusers_generator = None
    if name == "euler_ancestral":  # the same noise stream on both sides
        loom_generator = torch.Generator().manual_seed(11)
        diffusers_generator = torch.Generator().manual_seed(11)
        options["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=loom_generator)
    loom = get_sampler(name)(
        model, x, sigmas, extra_args={"conds": [context]}, callback=lambda info: starts.append(info["x"]), **options
    )

    scheduler = _diffusers_scheduler(name, sigmas)
    reference, final, denoised = _run_diffusers(name, scheduler, x, _eps_fn(unet, ms, context), diffusers_generator)
    if name == "lms":
        # ComfyUI's lms lands on the denoised estimate on the step to sigma 0; diffusers takes one more
        # LMS step there (no option changes that). Compare with diffusers' denoised estimate of that
        # step. (The two differ by O(last sigma) terms: ~3e-7 after sigma_min ~0.03, ~4e-3 in normal_cut.)
        final = denoised
    _assert_trajectories_match(starts, reference, loom, final)


@pytest.mark.parametrize(("schedule", "network"), [("karras", "loom"), ("normal", "diffusers")])
@torch.no_grad()
def test_ksampler_euler_with_cfg_matches_a_diffusers_pipeline_loop(
    networks: tuple[Any, UNetModel], ms: ModelSampling, contexts: tuple[Tensor, Tensor], schedule: str, network: str
) -> None:
    """A KSampler run (txt2img, cfg 7.5: ``ksample`` + ``CFGDenoiser`` + ``UNetApply``, uncond and cond
    in one batch) against diffusers' pipeline loop with manual CFG on eps.

    ``network="diffusers"`` evaluates diffusers' own UNet on its side (with our timestep map), so the
    whole loop but that map is independent."""
    reference_unet, unet = networks
    cond, uncond = contexts
    cfg, seed = 7.5, 42
    latent = torch.zeros(BATCH, 4, HEIGHT, WIDTH)
    noise = prepare_noise(latent, seed)
    sigmas = _schedule(ms, schedule, "euler")

    denoiser = CFGDenoiser(ParameterizedModel(UNetApply(unet), ms), [CondSpec(cond)], [CondSpec(uncond)], cfg)
    starts: list[Tensor] = []
    loom = ksample(denoiser, ms, "euler", sigmas, noise, latent, seed=seed, callback=lambda i: starts.append(i["x"]))

    # diffusers' StableDiffusionPipeline loop: "leading" spacing (SD's config) makes init_noise_sigma
    # sqrt(sigma_max^2 + 1), ComfyUI's txt2img start.
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(sigmas=sigmas.numpy())
    context = torch.cat([uncond.expand(BATCH, -1, -1), cond.expand(BATCH, -1, -1)])
    latents = noise * scheduler.init_noise_sigma
    reference: list[Tensor] = []
    for index, t in enumerate(scheduler.timesteps):
        reference.append(latents)
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        timestep = ms.timestep(scheduler.sigmas[index]).float().expand(2 * BATCH)
        if network == "diffusers":
            eps = reference_unet(model_input, timestep, encoder_hidden_states=context).sample
        else:
            eps = unet(model_input, timestep, context)
        eps_uncond, eps_cond = eps.chunk(2)
        latents = scheduler.step(eps_uncond + cfg * (eps_cond - eps_uncond), t, latents).prev_sample
    _assert_trajectories_match(starts, reference, loom, latents)
