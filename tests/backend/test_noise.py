"""Seed -> noise: the initial latent noise, per-step noise and Brownian-tree noise."""

from __future__ import annotations

import pytest
import torch

from engine.backend.noise import (
    SEED_MAX,
    BrownianTreeNoiseSampler,
    SeededNoiseSampler,
    inpaint_noise,
    prepare_noise,
)


def test_seed_42_matches_comfyui_reference_values() -> None:
    noise = prepare_noise(torch.zeros(1, 4, 32, 32), 42)
    expected = torch.tensor([1.926915, 1.487284, 0.900717, -2.105521, 0.678418])
    assert noise.shape == (1, 4, 32, 32)
    assert noise.dtype == torch.float32
    torch.testing.assert_close(noise.flatten()[:5], expected, atol=1e-6, rtol=0)


def test_batch_item_zero_equals_the_single_draw() -> None:
    single = prepare_noise(torch.zeros(1, 4, 16, 16), 1234)
    batch = prepare_noise(torch.zeros(2, 4, 16, 16), 1234)
    assert torch.equal(batch[0], single[0])
    assert not torch.equal(batch[1], batch[0])


def test_batch_index_picks_sequential_draws() -> None:
    latent = torch.zeros(3, 4, 8, 8)
    picked = prepare_noise(latent, 7, batch_index=[2, 0, 2])
    generator = torch.Generator().manual_seed(7)
    draws = [torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3)]
    assert picked.shape == (3, 4, 8, 8)
    assert torch.equal(picked[0], draws[2][0])
    assert torch.equal(picked[1], draws[0][0])
    assert torch.equal(picked[2], draws[2][0])
    # C*H*W is a multiple of 16, so sequential draws continue the one-call stream.
    assert torch.equal(picked, prepare_noise(latent, 7)[[2, 0, 2]])


def test_prepare_noise_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    prepare_noise(torch.zeros(2, 4, 8, 8), 99)
    prepare_noise(torch.zeros(2, 4, 8, 8), 99, batch_index=[1, 3])
    assert torch.equal(torch.get_rng_state(), state)


def test_noise_is_float32_on_cpu_whatever_the_latent() -> None:
    noise = prepare_noise(torch.zeros(1, 4, 8, 8, dtype=torch.float16), 5)
    assert noise.dtype == torch.float32
    assert noise.device.type == "cpu"
    assert torch.equal(noise, prepare_noise(torch.zeros(1, 4, 8, 8), 5))


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**63, SEED_MAX])
def test_full_seed_range_is_accepted(seed: int) -> None:
    a = prepare_noise(torch.zeros(1, 4, 4, 4), seed)
    assert torch.equal(a, prepare_noise(torch.zeros(1, 4, 4, 4), seed))


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 1.5, True])
def test_bad_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        prepare_noise(torch.zeros(1, 4, 4, 4), seed)  # type: ignore[arg-type]


def test_distinct_seeds_give_distinct_noise() -> None:
    assert not torch.equal(prepare_noise(torch.zeros(1, 4, 8, 8), 1), prepare_noise(torch.zeros(1, 4, 8, 8), 2))


def test_seeded_noise_sampler_is_comfyui_cpu_stream() -> None:
    x = torch.zeros(2, 4, 8, 8)
    state = torch.get_rng_state()
    sampler = SeededNoiseSampler(x, 10)
    first, second = sampler(), sampler()
    assert torch.equal(torch.get_rng_state(), state)
    # ComfyUI on the CPU seeds the per-step generator with seed + 1 and draws randn(x.shape) per call.
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(first, torch.randn(2, 4, 8, 8, generator=generator))
    assert torch.equal(second, torch.randn(2, 4, 8, 8, generator=generator))
    assert torch.equal(SeededNoiseSampler(x, 10)(), first)
    assert not torch.equal(SeededNoiseSampler(x, 12)(), first)
    # On the CPU the device generator mode is the same stream.
    assert torch.equal(SeededNoiseSampler(x, 10, device_rng=True)(), first)


def test_seeded_noise_sampler_follows_x_dtype() -> None:
    x = torch.zeros(1, 4, 4, 4, dtype=torch.float64)
    noise = SeededNoiseSampler(x, 3)()
    assert noise.dtype == torch.float64
    assert torch.equal(noise, SeededNoiseSampler(torch.zeros(1, 4, 4, 4), 3)().double())


def test_inpaint_noise_uses_seed_plus_one() -> None:
    expected = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(inpaint_noise((1, 4, 8, 8), 5), expected)
    assert inpaint_noise((1, 4, 4, 4), SEED_MAX).shape == (1, 4, 4, 4)


@pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")  # torchsde rounds its end time
def test_brownian_tree_is_reproducible_and_seeded() -> None:
    torchsde = pytest.importorskip("torchsde")
    x = torch.zeros(2, 4, 8, 8)
    sigmas = torch.tensor([14.6146, 7.0, 3.0, 0.5, 0.0292])

    def draws(seed: int) -> list[torch.Tensor]:
        sampler = BrownianTreeNoiseSampler(x, sigmas.min(), sigmas.max(), seed)
        return [sampler(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1)]

    a, b, c = draws(3), draws(3), draws(4)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # ComfyUI's semantics: a torchsde.BrownianTree over [sigma_min, sigma_max] on the CPU with entropy
    # = seed; a step sigma -> sigma_next returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|).
    tree = torchsde.BrownianTree(sigmas.min(), torch.zeros(2, 4, 8, 8), sigmas.max(), entropy=3)
    s0, s1 = sigmas[1], sigmas[2]
    expected = -tree(s1, s0) / (s0 - s1).sqrt()
    sampler = BrownianTreeNoiseSampler(x, sigmas.min(), sigmas.max(), 3)
    torch.testing.assert_close(sampler(s0, s1), expected)


def test_brownian_increments_add_up_and_have_unit_variance() -> None:
    pytest.importorskip("torchsde")
    x = torch.zeros(16, 4, 16, 16)
    sampler = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), 11)
    s0, s1, s2 = torch.tensor(8.0), torch.tensor(3.0), torch.tensor(1.0)
    whole = sampler(s0, s2) * (s0 - s2).sqrt()
    parts = sampler(s0, s1) * (s0 - s1).sqrt() + sampler(s1, s2) * (s1 - s2).sqrt()
    torch.testing.assert_close(parts, whole, atol=1e-4, rtol=1e-4)
    unit = sampler(torch.tensor(5.0), torch.tensor(4.0))
    assert abs(float(unit.std()) - 1.0) < 0.03
    assert abs(float(unit.mean())) < 0.03
