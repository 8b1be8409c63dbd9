"""Guidance patches against their formulas, written out here in ComfyUI's noise-like convention
(``x - denoised``) on a fake model whose cond / uncond / empty predictions are known tensors."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from engine.backend.guidance import CFGDenoiser, InpaintDenoiser, gather_hooks
from engine.backend.guidance_patches import (
    APG,
    TCFG,
    CFGNorm,
    CFGZeroStar,
    DifferentialDiffusion,
    FreSca,
    Mahiro,
    PerpNeg,
    RescaleCFG,
)
from engine.backend.model_sampling import ModelSampling

SHAPE = (2, 4, 8, 8)


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


class FakeModel:
    """model_fn(x, sigma, conds): chunk k of the batch is the known prediction named conds[k]."""

    def __init__(self, predictions: dict[str, Tensor]) -> None:
        self.predictions = predictions
        self.calls: list[list[str]] = []

    def __call__(self, x: Tensor, sigma: Tensor, conds: list[str], **kwargs: Any) -> Tensor:
        self.calls.append(list(conds))
        assert x.shape[0] == len(conds) * SHAPE[0]
        return torch.cat([self.predictions[name] for name in conds])


@pytest.fixture
def preds() -> dict[str, Tensor]:
    return {"pos": randn(*SHAPE, seed=1), "neg": randn(*SHAPE, seed=2) * 0.8 + 0.3, "empty": randn(*SHAPE, seed=3)}


@pytest.fixture
def x() -> Tensor:
    return randn(*SHAPE, seed=4) * 3.0


def guided(patches: list[Any], cfg: float, x: Tensor, sigma: Tensor, model: FakeModel) -> Tensor:
    """One step of the CFG denoiser the pipeline builds from a MODEL's patches."""
    hooks = gather_hooks(patches, ModelSampling.from_betas("eps"))
    denoiser = CFGDenoiser(model, "pos", "neg", cfg, pre_cfg=hooks.pre_cfg, cfg_function=hooks.cfg_function,
                           post_cfg=hooks.post_cfg, extra=hooks.extra_conditioning, needs_uncond=hooks.needs_uncond)
    return denoiser(x, sigma)


def sigma_of(value: float) -> Tensor:
    return torch.full((SHAPE[0],), value)


def plain_cfg(preds: dict[str, Tensor], cfg: float) -> Tensor:
    return preds["neg"] + (preds["pos"] - preds["neg"]) * cfg


# --- RescaleCFG ---------------------------------------------------------------------------------------------

def rescale_reference(x: Tensor, sigma: float, cond_d: Tensor, uncond_d: Tensor, cfg: float, m: float) -> Tensor:
    """ComfyUI's rescale_cfg on noise-like inputs, sample by sample in float64; returns the denoised result."""
    out = []
    for b in range(x.shape[0]):
        xo, c_d, u_d = x[b].double(), cond_d[b].double(), uncond_d[b].double()
        cond, uncond = xo - c_d, xo - u_d  # what ComfyUI's cfg function receives
        xs = xo / (sigma * sigma + 1.0)
        v_c = (xs - (xo - cond)) * math.sqrt(sigma**2 + 1.0) / sigma
        v_u = (xs - (xo - uncond)) * math.sqrt(sigma**2 + 1.0) / sigma
        v_cfg = v_u + cfg * (v_c - v_u)
        v_final = m * v_cfg * (v_c.std() / v_cfg.std()) + (1.0 - m) * v_cfg
        noise_like = xo - (xs - v_final * sigma / math.sqrt(sigma * sigma + 1.0))
        out.append(xo - noise_like)  # the sampler takes x - cfg_function(args)
    return torch.stack(out).float()


@pytest.mark.parametrize("multiplier", [0.0, 0.7, 1.0])
def test_rescale_cfg_follows_the_std_rescale(preds: dict[str, Tensor], x: Tensor, multiplier: float) -> None:
    got = guided([RescaleCFG(multiplier)], 6.0, x, sigma_of(2.5), FakeModel(preds))
    expected = rescale_reference(x, 2.5, preds["pos"], preds["neg"], 6.0, multiplier)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if multiplier == 0.0:  # no rescale: plain CFG
        torch.testing.assert_close(got, plain_cfg(preds, 6.0), rtol=1e-5, atol=1e-5)
    else:
        assert (got - plain_cfg(preds, 6.0)).abs().max() > 0.1


# --- CFGZeroStar --------------------------------------------------------------------------------------------

def test_cfg_zero_star_uses_the_optimized_scale(preds: dict[str, Tensor], x: Tensor) -> None:
    cfg = 5.0
    got = guided([CFGZeroStar()], cfg, x, sigma_of(1.5), FakeModel(preds))
    for b in range(SHAPE[0]):
        pos = (x[b] - preds["pos"][b]).double().flatten()
        neg = (x[b] - preds["neg"][b]).double().flatten()
        alpha = float(pos @ neg) / (float(neg @ neg) + 1e-8)
        u, c = preds["neg"][b].double(), preds["pos"][b].double()
        cfg_out = u + (c - u) * cfg
        expected = cfg_out + u * (alpha - 1.0) + cfg * u * (1.0 - alpha)
        torch.testing.assert_close(got[b].double(), expected, rtol=1e-5, atol=1e-5)
        # the same as CFG against the scaled uncond: alpha * u + cfg * (c - alpha * u)
        torch.testing.assert_close(got[b].double(), alpha * u + cfg * (c - alpha * u), rtol=1e-5, atol=1e-5)
        assert abs(alpha - 1.0) > 1e-3  # the scale mattered


def test_cfg_zero_star_at_cfg_one_is_the_cond_prediction(preds: dict[str, Tensor], x: Tensor) -> None:
    model = FakeModel(preds)
    got = guided([CFGZeroStar()], 1.0, x, sigma_of(1.5), model)
    assert model.calls == [["pos"]]  # ComfyUI's cfg-1 shortcut: its hooks then see a zero uncond
    assert torch.equal(got, preds["pos"])


# --- CFGNorm ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_cfg_norm_caps_the_channel_norm(preds: dict[str, Tensor], x: Tensor, strength: float) -> None:
    got = guided([CFGNorm(strength)], 7.0, x, sigma_of(1.0), FakeModel(preds))
    cfg_out = plain_cfg(preds, 7.0).double()
    cond_norm = (preds["pos"].double() ** 2).sum(dim=1, keepdim=True).sqrt()
    out_norm = (cfg_out**2).sum(dim=1, keepdim=True).sqrt()
    scale = np.clip((cond_norm / (out_norm + 1e-8)).numpy(), 0.0, 1.0)
    expected = cfg_out * torch.from_numpy(scale) * strength
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (scale < 0.99).any()


# --- APG ----------------------------------------------------------------------------------------------------

def apg_reference(steps: list[tuple[float, Tensor, Tensor]], cfg: float, eta: float, threshold: float,
                  momentum: float) -> list[Tensor]:
    """ComfyUI's APG over a run: (sigma, cond, uncond) per step -> each step's CFG result, in float64."""
    running: Tensor | None = None
    prev: float | None = None
    results = []
    for sigma, cond_f, uncond_f in steps:
        cond, uncond = cond_f.double(), uncond_f.double()
        if prev is not None and sigma > prev:
            running = None
        prev = sigma
        guidance = cond - uncond
        if momentum != 0:
            running = guidance if running is None else momentum * running + guidance
            guidance = running
        parts = []
        for b in range(cond.shape[0]):
            g = guidance[b]
            if threshold > 0:
                g = g * min(1.0, threshold / float(g.norm()))
            unit = cond[b] / float(cond[b].norm())
            parallel = float((g * unit).sum()) * unit
            parts.append((g - parallel) + eta * parallel)
        modified = torch.stack(parts)
        new_cond = (uncond + modified) + (cond - uncond) / cfg
        results.append((uncond + (new_cond - uncond) * cfg).float())
    return results


@pytest.mark.parametrize(("eta", "threshold", "momentum"), [(1.0, 0.0, 0.0), (0.3, 5.0, 0.0), (0.0, 2.0, -0.5),
                                                            (0.5, 3.0, 0.4)])
def test_apg_projects_clamps_and_averages(x: Tensor, eta: float, threshold: float, momentum: float) -> None:
    cfg = 4.0
    sigmas = [5.0, 3.0, 1.0, 6.0, 2.0]  # the rise to 6 starts a new run: the running average resets
    steps = [(s, randn(*SHAPE, seed=10 + i) * 2, randn(*SHAPE, seed=20 + i) * 2) for i, s in enumerate(sigmas)]
    expected = apg_reference(steps, cfg, eta, threshold, momentum)
    hooks = gather_hooks([APG(eta, threshold, momentum)], None)
    for (sigma, cond, uncond), want in zip(steps, expected, strict=True):
        model = FakeModel({"pos": cond, "neg": uncond})
        got = CFGDenoiser(model, "pos", "neg", cfg, pre_cfg=hooks.pre_cfg)(x, sigma_of(sigma))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_apg_state_is_per_sampling_run(preds: dict[str, Tensor], x: Tensor) -> None:
    patch = APG(0.5, 0.0, 0.6)  # no norm cap: the average (1.6 x the same guidance) shows
    hooks = gather_hooks([patch], None)
    denoiser = CFGDenoiser(FakeModel(preds), "pos", "neg", 4.0, pre_cfg=hooks.pre_cfg)
    denoiser(x, sigma_of(3.0))
    second_step = denoiser(x, sigma_of(2.0))  # averaged with the first step's guidance
    fresh = guided([patch], 4.0, x, sigma_of(2.0), FakeModel(preds))  # a new run starts a new average
    assert not torch.allclose(second_step, fresh, atol=1e-3)
    assert torch.equal(fresh, guided([patch], 4.0, x, sigma_of(2.0), FakeModel(preds)))


# --- TCFG ---------------------------------------------------------------------------------------------------

def test_tcfg_damps_the_tangential_uncond(preds: dict[str, Tensor], x: Tensor) -> None:
    cfg = 3.0
    got = guided([TCFG()], cfg, x, sigma_of(2.0), FakeModel(preds))
    for b in range(SHAPE[0]):
        c_score = (x[b] - preds["pos"][b]).double().flatten()
        u_score = (x[b] - preds["neg"][b]).double().flatten()
        matrix = torch.stack([u_score, c_score])  # [2, N]
        values, vectors = torch.linalg.eigh(matrix @ matrix.T)  # left singular vectors, ascending
        v1 = matrix.T @ vectors[:, -1] / math.sqrt(float(values[-1]))  # the first right singular vector
        damped = (u_score @ v1) * v1
        uncond = x[b].double() - damped.reshape(SHAPE[1:])
        expected = uncond + (preds["pos"][b].double() - uncond) * cfg
        torch.testing.assert_close(got[b].double(), expected, rtol=1e-4, atol=1e-4)


def test_tcfg_and_fresca_leave_a_cfg_one_step_alone(preds: dict[str, Tensor], x: Tensor) -> None:
    for patch in (TCFG(), FreSca(0.5, 2.0, 2)):
        assert torch.equal(guided([patch], 1.0, x, sigma_of(2.0), FakeModel(preds)), preds["pos"])


# --- Mahiro -------------------------------------------------------------------------------------------------

def test_mahiro_weights_by_direction_similarity(preds: dict[str, Tensor], x: Tensor) -> None:
    cfg = 6.0
    got = guided([Mahiro()], cfg, x, sigma_of(1.0), FakeModel(preds))
    cfg_out = plain_cfg(preds, cfg).double()
    leap = preds["pos"].double() * cfg
    u_leap = preds["neg"].double() * cfg
    merge = (leap + cfg_out) / 2
    norm_u = u_leap.abs().sqrt() * u_leap.sign()
    norm_m = merge.abs().sqrt() * merge.sign()
    cosine = (norm_u * norm_m).sum(dim=1) / (norm_u.norm(dim=1) * norm_m.norm(dim=1))  # over channels
    weight = 2 * (float(cosine.mean()) + 1)
    expected = (weight * cfg_out + (4 - weight) * leap) / 4
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


# --- FreSca -------------------------------------------------------------------------------------------------

def fresca_reference(guidance: Tensor, low: float, high: float, cutoff: int) -> Tensor:
    """numpy: centred spectrum, a (2c x 2c) low-frequency box per image scaled by ``low``, the rest by ``high``."""
    g = guidance.double().numpy()
    spectrum = np.fft.fftshift(np.fft.fft2(g, axes=(-2, -1)), axes=(-2, -1))
    h, w = g.shape[-2:]
    scale = np.full((h, w), high)
    ch, cw = min(cutoff, h // 2), min(cutoff, w // 2)
    scale[h // 2 - ch:h // 2 + ch, w // 2 - cw:w // 2 + cw] = low
    back = np.fft.ifft2(np.fft.ifftshift(spectrum * scale, axes=(-2, -1)), axes=(-2, -1)).real
    return torch.from_numpy(back)


@pytest.mark.parametrize(("low", "high", "cutoff"), [(1.0, 1.25, 2), (0.5, 2.0, 1), (0.7, 1.5, 20)])
def test_fresca_scales_frequencies_of_the_guidance(preds: dict[str, Tensor], x: Tensor, low: float, high: float,
                                                   cutoff: int) -> None:
    cfg = 5.0
    got = guided([FreSca(low, high, cutoff)], cfg, x, sigma_of(1.0), FakeModel(preds))
    filtered = fresca_reference(preds["pos"] - preds["neg"], low, high, cutoff)
    expected = preds["neg"].double() + filtered * cfg  # cond' = filtered + uncond, then CFG
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_fresca_with_unit_scales_is_plain_cfg(preds: dict[str, Tensor], x: Tensor) -> None:
    got = guided([FreSca(1.0, 1.0, 3)], 5.0, x, sigma_of(1.0), FakeModel(preds))
    torch.testing.assert_close(got, plain_cfg(preds, 5.0), rtol=1e-5, atol=1e-5)


# --- PerpNeg ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("neg_scale", [1.0, 2.5])
def test_perp_neg_removes_the_perpendicular_negative(preds: dict[str, Tensor], x: Tensor, neg_scale: float) -> None:
    cfg = 6.0
    model = FakeModel(preds)
    got = guided([PerpNeg("empty", neg_scale)], cfg, x, sigma_of(2.0), model)
    assert model.calls == [["neg", "pos", "empty"]]  # the empty prompt runs in the same batch
    pos = (preds["pos"] - preds["empty"]).double()
    neg = (preds["neg"] - preds["empty"]).double()
    perp = neg - (float((neg * pos).sum()) / float((pos**2).sum())) * pos  # over the whole batch, as ComfyUI
    assert abs(float((perp * pos).sum())) < 1e-6 * float((pos**2).sum())
    noise_like = x.double() - (preds["empty"].double() + cfg * (pos - perp * neg_scale))
    torch.testing.assert_close(got.double(), x.double() - noise_like, rtol=1e-5, atol=1e-4)


# --- DifferentialDiffusion ----------------------------------------------------------------------------------

def nearest_timestep(ms: ModelSampling, sigma: float) -> int:
    table = np.log(ms.sigmas.double().numpy())
    return int(np.abs(math.log(sigma) - table).argmin())


@pytest.mark.parametrize(("strength", "last_sigma"), [(1.0, 0.0), (0.4, 0.0), (0.0, 0.0), (1.0, 2.0)])
def test_differential_diffusion_thresholds_the_mask_per_step(strength: float, last_sigma: float) -> None:
    ms = ModelSampling.from_betas("eps")
    sigmas = torch.tensor([14.6, 8.0, 4.0, 2.0, 1.0, 0.5, last_sigma]) if last_sigma == 0.0 else \
        torch.tensor([14.6, 8.0, 4.0, last_sigma])
    mask = torch.linspace(0.0, 1.0, 2 * 4 * 4 * 4).reshape(2, 4, 4, 4)
    hooks = gather_hooks([DifferentialDiffusion(strength)], ms)
    assert hooks.denoise_mask_fn is not None
    t_to = nearest_timestep(ms, max(float(ms.sigma_min), float(sigmas[-1])))
    t_from = nearest_timestep(ms, float(sigmas[0]))
    for sigma in sigmas[:-1]:
        threshold = (nearest_timestep(ms, float(sigma)) - t_to) / (t_from - t_to)
        binary = (mask.numpy() >= np.float32(threshold)).astype(np.float32)
        expected = binary if not (0 < strength < 1) else strength * binary + (1 - strength) * mask.numpy()
        got = hooks.denoise_mask_fn(mask, torch.full((2,), float(sigma)), sigmas)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_differential_diffusion_drives_the_inpaint_denoiser() -> None:
    ms = ModelSampling.from_betas("eps")
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0])
    mask = torch.tensor([0.1, 0.5, 0.9, 1.0]).reshape(1, 1, 2, 2).expand(1, 4, 2, 2).contiguous()
    latent, noise = torch.full((1, 4, 2, 2), 0.25), torch.ones(1, 4, 2, 2)
    seen: list[Tensor] = []

    def inner(x: Tensor, sigma: Tensor) -> Tensor:
        seen.append(x)
        return torch.zeros_like(x)

    mask_fn = gather_hooks([DifferentialDiffusion()], ms).denoise_mask_fn
    assert mask_fn is not None
    denoiser = InpaintDenoiser(inner, latent, mask, noise, noise_scaling=ms.noise_scaling, mask_fn=mask_fn,
                               sigmas=sigmas)
    x = torch.full((1, 4, 2, 2), 7.0)
    for sigma in sigmas[:-1]:
        out = denoiser(x, sigma.reshape(1))
        used = mask_fn(mask, sigma.reshape(1), sigmas)
        assert torch.equal(seen[-1], x * used + (latent + noise * sigma) * (1 - used))
        assert torch.equal(out, latent * (1 - used))
    regenerated = [float(mask_fn(mask, s.reshape(1), sigmas).sum()) for s in sigmas[:-1]]
    assert regenerated == sorted(regenerated) and regenerated[0] < regenerated[-1]  # the region grows step by step


# --- composition, removal, pickling -------------------------------------------------------------------------

def test_post_cfg_hooks_run_in_install_order(preds: dict[str, Tensor], x: Tensor) -> None:
    sigma = sigma_of(2.0)
    norm_then_mahiro = guided([CFGNorm(0.8), Mahiro()], 5.0, x, sigma, FakeModel(preds))
    mahiro_then_norm = guided([Mahiro(), CFGNorm(0.8)], 5.0, x, sigma, FakeModel(preds))
    assert not torch.allclose(norm_then_mahiro, mahiro_then_norm, atol=1e-4)
    hooks = gather_hooks([CFGNorm(0.8), Mahiro()], None)
    model = FakeModel(preds)
    step_out = CFGDenoiser(model, "pos", "neg", 5.0)(x, sigma)
    from engine.backend.guidance import GuidanceStep
    step = GuidanceStep(x, sigma, 5.0, preds["pos"], preds["neg"], (), model, "pos", "neg", {})
    expected = hooks.post_cfg[1](step, hooks.post_cfg[0](step, step_out))
    assert torch.equal(norm_then_mahiro, expected)


def test_pre_cfg_hooks_chain_in_install_order(preds: dict[str, Tensor], x: Tensor) -> None:
    cfg, sigma = 4.0, sigma_of(2.0)
    got = guided([FreSca(0.5, 1.5, 2), APG(0.5, 3.0, 0.0)], cfg, x, sigma, FakeModel(preds))
    filtered = fresca_reference(preds["pos"] - preds["neg"], 0.5, 1.5, 2).float()
    fresca_cond = filtered + preds["neg"]  # APG then sees FreSca's cond
    (expected,) = apg_reference([(2.0, fresca_cond, preds["neg"])], cfg, 0.5, 3.0, 0.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    other = guided([APG(0.5, 3.0, 0.0), FreSca(0.5, 1.5, 2)], cfg, x, sigma, FakeModel(preds))
    assert not torch.allclose(got, other, atol=1e-3)


def test_last_cfg_function_wins(preds: dict[str, Tensor], x: Tensor) -> None:
    sigma = sigma_of(2.0)
    perp_alone = guided([PerpNeg("empty", 1.0)], 6.0, x, sigma, FakeModel(preds))
    rescale_alone = guided([RescaleCFG(0.7)], 6.0, x, sigma, FakeModel(preds))
    assert torch.equal(guided([RescaleCFG(0.7), PerpNeg("empty", 1.0)], 6.0, x, sigma, FakeModel(preds)),
                       perp_alone)
    model = FakeModel(preds)
    assert torch.equal(guided([PerpNeg("empty", 1.0), RescaleCFG(0.7)], 6.0, x, sigma, model), rescale_alone)
    assert model.calls == [["neg", "pos", "empty"]]  # the replaced PerpNeg's empty prompt still runs


def test_a_handle_without_the_patch_samples_bit_exactly(preds: dict[str, Tensor], x: Tensor) -> None:
    from engine.models.families import ModelFamily
    from engine.models.handles import FileRef, ModelHandle

    base = ModelHandle(FileRef("m", 1, 1), ModelFamily("sd1", "eps", 4))
    patched = base.with_sampling_patch(RescaleCFG(0.7)).with_sampling_patch(CFGZeroStar())
    assert base.sampling_patches == ()
    sigma = sigma_of(2.0)
    before = guided(list(base.sampling_patches), 6.0, x, sigma, FakeModel(preds))
    with_patches = guided(list(patched.sampling_patches), 6.0, x, sigma, FakeModel(preds))
    after = guided(list(base.sampling_patches), 6.0, x, sigma, FakeModel(preds))
    assert not torch.allclose(with_patches, before, atol=1e-3)
    assert torch.equal(before, after)
    assert torch.equal(before, CFGDenoiser(FakeModel(preds), "pos", "neg", 6.0)(x, sigma))


@pytest.mark.parametrize("patch", [RescaleCFG(0.5), CFGZeroStar(), CFGNorm(0.9), APG(0.2, 4.0, 0.5), TCFG(), Mahiro(),
                                   FreSca(1.0, 1.3, 7), DifferentialDiffusion(0.5)])
def test_patches_pickle_and_compare_by_value(patch: Any) -> None:
    assert pickle.loads(pickle.dumps(patch)) == patch
    assert hash(patch) == hash(pickle.loads(pickle.dumps(patch)))


def test_perp_neg_pickles_with_its_conditioning() -> None:
    cond = [[torch.ones(1, 3, 8), {"pooled_output": torch.zeros(1, 8)}]]
    back = pickle.loads(pickle.dumps(PerpNeg(cond, 2.0)))
    assert back.neg_scale == 2.0 and torch.equal(back.empty_conditioning[0][0], torch.ones(1, 3, 8))
