"""Custom sampling through the real executor on the demo model (models/): the SD-Turbo and LCM workflow
shapes, SamplerCustom(Advanced) == KSampler on the same settings, noise sources, guiders and the
sampler-parameter nodes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.executor import Executor
from tests.nodes.sd_workflow import (
    DEMO_MODELS,
    DEMO_SIZE,
    checkpoint_loader,
    make_executor,
    require_demo_model,
    run_prompt,
)

LATENT = DEMO_SIZE // 8
SD_SCALE = 0.18215  # the SD1 VAE's latent scale factor: model latent = VAE latent * SD_SCALE


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    """One executor for the module: the demo model loads once and shared nodes stay cached."""
    require_demo_model()
    return make_executor(tmp_path_factory.mktemp("custom_sampling"), DEMO_MODELS)


def base(text: str = "a red circle on a blue background") -> dict[str, Any]:
    return {
        "ckpt": checkpoint_loader(),
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "green", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": DEMO_SIZE, "height": DEMO_SIZE,
                                                               "batch_size": 1}},
    }


def ksampler(seed: int, steps: int, cfg: float, sampler: str, scheduler: str, denoise: float = 1.0,
             latent: list[Any] | None = None, model: list[Any] | None = None) -> dict[str, Any]:
    return {"class_type": "KSampler", "inputs": {
        "model": model or ["ckpt", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": latent or ["empty", 0], "denoise": denoise}}


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def latents(executor: Executor, prompt: dict[str, Any], first: list[Any], second: list[Any] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    capture = {"latent": first, **({"latent_in": second} if second else {})}
    got = run_prompt(executor, prompt, **capture)
    return got["latent"]["samples"], (got["latent_in"]["samples"] if second else None)


def test_sd_turbo_shape(executor: Executor) -> None:
    """SamplerCustom + SDTurboScheduler + KSamplerSelect euler_ancestral, 1 step, cfg 1 (the SD-Turbo
    workflow): the same latent as KSampler's 1-step euler_ancestral from sigma_max (simple scheduler)."""
    prompt = {**base(),
              "sigmas": node("SDTurboScheduler", model=["ckpt", 0], steps=1, denoise=1.0),
              "select": node("KSamplerSelect", sampler_name="euler_ancestral"),
              "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=11, cfg=1.0,
                             positive=["pos", 0], negative=["neg", 0], sampler=["select", 0],
                             sigmas=["sigmas", 0], latent_image=["empty", 0]),
              "decode": node("VAEDecode", samples=["custom", 0], vae=["ckpt", 2]),
              "ks": ksampler(11, 1, 1.0, "euler_ancestral", "simple")}
    got = run_prompt(executor, prompt, latent=["custom", 0], latent_in=["custom", 1], image=["decode", 0])
    out, denoised = got["latent"]["samples"], got["latent_in"]["samples"]
    assert out.shape == (1, 4, LATENT, LATENT) and torch.isfinite(out).all()
    assert got["image"].shape == (1, DEMO_SIZE, DEMO_SIZE, 3)
    # one step to sigma 0: the result is that step's denoised estimate
    torch.testing.assert_close(out, denoised, rtol=1e-5, atol=1e-5)
    reference, _ = latents(executor, prompt, ["ks", 0])
    # sigma(999) is read back through log-sigma interpolation: sigma_max to within float rounding
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-4)


def test_sd_turbo_sigmas_follow_the_definition(executor: Executor) -> None:
    """SDTurboScheduler(1 step) = [sigma(t=999), 0] with SD's scaled-linear betas, computed here."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_bar = torch.cumprod(1.0 - betas, dim=0)
    sigma_999 = float(((1 - alphas_bar) / alphas_bar).sqrt()[999])
    prompt = {**base(), "sigmas": node("SDTurboScheduler", model=["ckpt", 0], steps=1, denoise=1.0),
              "noised": node("AddNoise", model=["ckpt", 0], noise=["rnd", 0], sigmas=["sigmas", 0],
                             latent_image=["empty", 0]),
              "rnd": node("RandomNoise", noise_seed=3)}
    noised, _ = latents(executor, prompt, ["noised", 0])
    noise = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(3))
    # AddNoise on an empty latent: noise * |sigmas[0] - sigmas[-1]| in model space, back to VAE space
    torch.testing.assert_close(noised, noise * sigma_999 / SD_SCALE, rtol=1e-4, atol=1e-4)


def test_lcm_shape(executor: Executor) -> None:
    """ModelSamplingDiscrete lcm + LoraLoader + KSampler lcm (the LCM-LoRA workflow) runs; the LoRA and
    the lcm model sampling each change the result; a rerun with the same seed is identical."""
    lora = node("LoraLoader", model=["ckpt", 0], clip=["ckpt", 1], lora_name="tiny-shapes-dark.safetensors",
                strength_model=1.0, strength_clip=1.0)

    def lcm_prompt(sampling: str, with_lora: bool) -> dict[str, Any]:
        model = ["lora", 0] if with_lora else ["ckpt", 0]
        return {**base(), "lora": lora,
                "msd": node("ModelSamplingDiscrete", model=model, sampling=sampling, zsnr=False),
                "ks": ksampler(5, 4, 1.0, "lcm", "sgm_uniform", model=["msd", 0]),
                "decode": node("VAEDecode", samples=["ks", 0], vae=["ckpt", 2])}

    got = run_prompt(executor, lcm_prompt("lcm", True), latent=["ks", 0], image=["decode", 0])
    lcm = got["latent"]["samples"]
    assert lcm.shape == (1, 4, LATENT, LATENT) and torch.isfinite(lcm).all()
    assert got["image"].shape == (1, DEMO_SIZE, DEMO_SIZE, 3)
    no_lora, _ = latents(executor, lcm_prompt("lcm", False), ["ks", 0])
    eps, _ = latents(executor, lcm_prompt("eps", True), ["ks", 0])
    assert not torch.allclose(lcm, no_lora, atol=1e-3)
    assert not torch.allclose(lcm, eps, atol=1e-3)


@pytest.mark.parametrize(("sampler", "scheduler", "steps", "cfg", "denoise"), [
    ("euler", "normal", 3, 5.0, 1.0),
    ("euler_ancestral", "karras", 3, 3.0, 1.0),
    ("dpmpp_2m_sde", "normal", 3, 4.0, 0.7),
    ("dpmpp_2m", "simple", 2, 1.0, 1.0),
])
def test_custom_advanced_equals_ksampler(executor: Executor, sampler: str, scheduler: str, steps: int,
                                         cfg: float, denoise: float) -> None:
    """SamplerCustomAdvanced + CFGGuider + RandomNoise + BasicScheduler + KSamplerSelect gives KSampler's
    latent bit for bit (same seed, same settings); so does SamplerCustom."""
    prompt = {**base(),
              "ks": ksampler(42, steps, cfg, sampler, scheduler, denoise),
              "noise": node("RandomNoise", noise_seed=42),
              "guider": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=cfg),
              "select": node("KSamplerSelect", sampler_name=sampler),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler=scheduler, steps=steps, denoise=denoise),
              "adv": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
                          sigmas=["sigmas", 0], latent_image=["empty", 0]),
              "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=42, cfg=cfg,
                             positive=["pos", 0], negative=["neg", 0], sampler=["select", 0],
                             sigmas=["sigmas", 0], latent_image=["empty", 0])}
    reference, advanced = latents(executor, prompt, ["ks", 0], ["adv", 0])
    custom, _ = latents(executor, prompt, ["custom", 0])
    assert advanced is not None and torch.equal(advanced, reference)
    assert torch.equal(custom, reference)


def test_disable_noise_is_ksampler_advanced_without_noise(executor: Executor) -> None:
    """DisableNoise samples the latent as it is, with seed 0 for the sampler's own noise; AddNoise then
    DisableNoise is the way to noise by hand."""
    prompt = {**base(),
              "rnd": node("RandomNoise", noise_seed=9),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=1.0),
              "noised": node("AddNoise", model=["ckpt", 0], noise=["rnd", 0], sigmas=["sigmas", 0],
                             latent_image=["empty", 0]),
              "off": node("DisableNoise"),
              "guider": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=4.0),
              "select": node("KSamplerSelect", sampler_name="euler_ancestral"),
              "adv": node("SamplerCustomAdvanced", noise=["off", 0], guider=["guider", 0], sampler=["select", 0],
                          sigmas=["sigmas", 0], latent_image=["noised", 0]),
              "ksa": node("KSamplerAdvanced", model=["ckpt", 0], add_noise="disable", noise_seed=0, steps=3, cfg=4.0,
                          sampler_name="euler_ancestral", scheduler="normal", positive=["pos", 0],
                          negative=["neg", 0], latent_image=["noised", 0], start_at_step=0, end_at_step=10000,
                          return_with_leftover_noise="disable")}
    advanced, reference = latents(executor, prompt, ["adv", 0], ["ksa", 0])
    assert reference is not None and torch.equal(advanced, reference)


def test_add_noise_formula(executor: Executor) -> None:
    """AddNoise on a non-empty latent: latent + noise * |sigmas[0] - sigmas[-1]| / scale (ComfyUI's
    process_latent_in / out around noise_scaling); empty sigmas return the latent untouched."""
    prompt = {**base(),
              "rnd": node("RandomNoise", noise_seed=4),
              "karras": node("KarrasScheduler", steps=4, sigma_max=5.0, sigma_min=0.5, rho=7.0),
              "split": node("SplitSigmas", sigmas=["karras", 0], step=2),
              "first": node("AddNoise", model=["ckpt", 0], noise=["rnd", 0], sigmas=["split", 1],
                            latent_image=["empty", 0]),
              "again": node("AddNoise", model=["ckpt", 0], noise=["rnd", 0], sigmas=["split", 1],
                            latent_image=["first", 0])}
    first, again = latents(executor, prompt, ["first", 0], ["again", 0])
    karras = torch.tensor([5.0 ** (1 / 7) + i / 3 * (0.5 ** (1 / 7) - 5.0 ** (1 / 7)) for i in range(4)]) ** 7
    span = float(karras[2])  # split at step 2: [k2, k3, 0] -> |k2 - 0|
    noise = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, noise * span / SD_SCALE, rtol=1e-4, atol=1e-4)
    assert again is not None
    torch.testing.assert_close(again, first + noise * span / SD_SCALE, rtol=1e-4, atol=1e-4)


def _guided(executor: Executor, guider: dict[str, Any], reference: dict[str, Any]) -> None:
    prompt = {**base(),
              "empty_text": node("CLIPTextEncode", text="", clip=["ckpt", 1]),
              "noise": node("RandomNoise", noise_seed=21),
              "select": node("KSamplerSelect", sampler_name="euler"),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=1.0),
              "guider": guider, "reference": reference}
    for name in ("guider", "reference"):
        prompt[f"run_{name}"] = node("SamplerCustomAdvanced", noise=["noise", 0], guider=[name, 0],
                                     sampler=["select", 0], sigmas=["sigmas", 0], latent_image=["empty", 0])
    got, want = latents(executor, prompt, ["run_guider", 0], ["run_reference", 0])
    assert want is not None and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_dual_cfg_with_cond2_equal_negative_is_cfg(executor: Executor) -> None:
    """Regular DualCFG = neg + (cond2 - neg) * cfg2 + (cond1 - cond2) * cfg1: with cond2 = negative it
    reduces to CFG of cond1 against the negative at cfg1."""
    _guided(executor,
            node("DualCFGGuider", model=["ckpt", 0], cond1=["pos", 0], cond2=["neg", 0], negative=["neg", 0],
                 cfg_conds=6.0, cfg_cond2_negative=3.0, style="regular"),
            node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=6.0))


def test_perp_neg_without_negative_scale_is_cfg_against_the_empty_prompt(executor: Executor) -> None:
    """PerpNeg = empty + cfg * (pos - empty - neg_scale * perp): neg_scale 0 is CFG against the empty prompt."""
    _guided(executor,
            node("PerpNegGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0],
                 empty_conditioning=["empty_text", 0], cfg=5.0, neg_scale=0.0),
            node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["empty_text", 0], cfg=5.0))


def test_basic_guider_is_cfg_one(executor: Executor) -> None:
    _guided(executor, node("BasicGuider", model=["ckpt", 0], conditioning=["pos", 0]),
            node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=1.0))


@pytest.mark.parametrize(("sampler_node", "inputs"), [
    ("SamplerEulerAncestral", {"eta": 0.5, "s_noise": 1.0}),
    ("SamplerLMS", {"order": 3}),
    ("SamplerDPMPP_2M_SDE", {"solver_type": "heun", "eta": 1.0, "s_noise": 1.0, "noise_device": "cpu"}),
    ("SamplerDPMPP_3M_SDE", {"eta": 1.0, "s_noise": 1.0, "noise_device": "gpu"}),
    ("SamplerDPMPP_SDE", {"eta": 1.0, "s_noise": 1.0, "r": 0.5, "noise_device": "cpu"}),
    ("SamplerDPMPP_2S_Ancestral", {"eta": 1.0, "s_noise": 1.0}),
    ("SamplerEulerAncestralCFGPP", {"eta": 1.0, "s_noise": 1.0}),
    ("SamplerEulerCFGpp", {"version": "regular"}),
    ("SamplerEulerCFGpp", {"version": "alternative"}),
    ("SamplerER_SDE", {"solver_type": "Reverse-time SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0}),
    ("SamplerSASolver", {"model": ["ckpt", 0], "eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8,
                         "s_noise": 1.0, "predictor_order": 3, "corrector_order": 4, "use_pece": False,
                         "simple_order_2": False}),
    # loose tolerances and a large first step keep the adaptive solver to a few steps here
    ("SamplerDPMAdaptative", {"order": 3, "rtol": 1.0, "atol": 1.0, "h_init": 0.5, "pcoeff": 0.0,
                              "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}),
])
def test_sampler_parameter_nodes_run(executor: Executor, sampler_node: str, inputs: dict[str, Any]) -> None:
    prompt = {**base(), "chosen": node(sampler_node, **inputs),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="karras", steps=3, denoise=1.0),
              "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=2, cfg=3.0,
                             positive=["pos", 0], negative=["neg", 0], sampler=["chosen", 0],
                             sigmas=["sigmas", 0], latent_image=["empty", 0])}
    out, _ = latents(executor, prompt, ["custom", 0])
    assert out.shape == (1, 4, LATENT, LATENT) and torch.isfinite(out).all()


def test_euler_ancestral_options_reach_the_sampler(executor: Executor) -> None:
    """SamplerEulerAncestral with eta 0 is plain Euler (no fresh noise), as k-diffusion defines it."""
    prompt = {**base(), "anc": node("SamplerEulerAncestral", eta=0.0, s_noise=1.0),
              "euler": node("KSamplerSelect", sampler_name="euler"),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=1.0)}
    for name in ("anc", "euler"):
        prompt[f"run_{name}"] = node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=8, cfg=3.0,
                                     positive=["pos", 0], negative=["neg", 0], sampler=[name, 0],
                                     sigmas=["sigmas", 0], latent_image=["empty", 0])
    anc, euler = latents(executor, prompt, ["run_anc", 0], ["run_euler", 0])
    assert euler is not None
    torch.testing.assert_close(anc, euler, rtol=1e-5, atol=1e-5)


def test_lcm_upscale_grows_the_latent(executor: Executor) -> None:
    prompt = {**base(), "chosen": node("SamplerLCMUpscale", scale_ratio=1.5, scale_steps=-1,
                                       upscale_method="bilinear"),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="sgm_uniform", steps=4, denoise=1.0),
              "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=2, cfg=1.0,
                             positive=["pos", 0], negative=["neg", 0], sampler=["chosen", 0],
                             sigmas=["sigmas", 0], latent_image=["empty", 0])}
    out, denoised = latents(executor, prompt, ["custom", 0], ["custom", 1])
    assert out.shape == (1, 4, round(LATENT * 1.5), round(LATENT * 1.5)) and torch.isfinite(out).all()
    assert denoised is not None and denoised.shape == out.shape


def test_empty_sigmas_return_the_latent(executor: Executor) -> None:
    prompt = {**base(), "select": node("KSamplerSelect", sampler_name="euler"),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=0.0),
              "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=2, cfg=3.0,
                             positive=["pos", 0], negative=["neg", 0], sampler=["select", 0],
                             sigmas=["sigmas", 0], latent_image=["empty", 0])}
    out, denoised = latents(executor, prompt, ["custom", 0], ["custom", 1])
    assert denoised is not None and torch.equal(out, torch.zeros(1, 4, LATENT, LATENT)) and torch.equal(denoised, out)


def test_ksampler_select_lists_ksamplers_samplers() -> None:
    from main import build_registry

    registry = build_registry()
    select = {i.name: i for i in registry.get("KSamplerSelect").inputs}["sampler_name"]  # type: ignore[union-attr]
    ks = {i.name: i for i in registry.get("KSampler").inputs}["sampler_name"]  # type: ignore[union-attr]
    assert list(select.choices) == list(ks.choices)  # type: ignore[arg-type]
    assert "er_sde" in select.choices  # type: ignore[operator]


#: Playground v2.5's published latent statistics (its vae/config.json): model = (vae - mean) * 0.5 / std.
PLAYGROUND_STD = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).reshape(1, 4, 1, 1)


def test_playground_latent_format(executor: Executor) -> None:
    """ModelSamplingContinuousEDM edm_playground_v2.5 switches the model's latent format: AddNoise's noise,
    added in the model's space, comes back to the VAE's space scaled per channel by std / 0.5 (the mean
    cancels); sampling with it differs from plain edm and stays finite."""
    prompt = {**base(),
              "rnd": node("RandomNoise", noise_seed=4),
              "sigmas": node("KarrasScheduler", steps=2, sigma_max=2.0, sigma_min=0.5, rho=7.0),
              "first": node("AddNoise", model=["ckpt", 0], noise=["rnd", 0], sigmas=["sigmas", 0],
                            latent_image=["empty", 0]),
              "playground": node("ModelSamplingContinuousEDM", model=["ckpt", 0], sampling="edm_playground_v2.5",
                                 sigma_max=80.0, sigma_min=0.002),
              "edm": node("ModelSamplingContinuousEDM", model=["ckpt", 0], sampling="edm",
                          sigma_max=80.0, sigma_min=0.002),
              "noised": node("AddNoise", model=["playground", 0], noise=["rnd", 0], sigmas=["sigmas", 0],
                             latent_image=["first", 0])}
    first, noised = latents(executor, prompt, ["first", 0], ["noised", 0])
    noise = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(4))
    assert noised is not None
    torch.testing.assert_close(noised, first + noise * 2.0 * PLAYGROUND_STD / 0.5, rtol=1e-4, atol=1e-3)
    runs = {**prompt, "run_pg": ksampler(5, 3, 4.0, "euler", "karras", model=["playground", 0]),
            "run_edm": ksampler(5, 3, 4.0, "euler", "karras", model=["edm", 0])}
    playground, edm = latents(executor, runs, ["run_pg", 0], ["run_edm", 0])
    assert edm is not None and torch.isfinite(playground).all()
    assert not torch.allclose(playground, edm, atol=1e-2)


def test_model_compute_dtype(executor: Executor) -> None:
    """ModelComputeDtype bf16: the manager loads a bf16 copy of the UNet and samples with it; the result
    is near the fp32 one (bf16 keeps ~3 significant digits) but not equal, and fp32 is the default."""
    prompt = {**base(),
              "bf16": node("ModelComputeDtype", model=["ckpt", 0], dtype="bf16"),
              "fp32": node("ModelComputeDtype", model=["ckpt", 0], dtype="fp32"),
              "run_bf16": ksampler(2, 3, 4.0, "euler", "normal", model=["bf16", 0]),
              "run_fp32": ksampler(2, 3, 4.0, "euler", "normal", model=["fp32", 0]),
              "run": ksampler(2, 3, 4.0, "euler", "normal")}
    low, full = latents(executor, prompt, ["run_bf16", 0], ["run_fp32", 0])
    default, _ = latents(executor, prompt, ["run", 0])
    assert full is not None and torch.equal(full, default)  # fp32 is the CPU default: the same UNet
    assert not torch.equal(low, full)
    assert (low - full).abs().mean() < 0.05 * full.abs().mean()
    unets = {entry["dtype"] for entry in executor.models.loaded() if entry["part"] == "unet"}
    assert {"bfloat16", "float32"} <= unets
