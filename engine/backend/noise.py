"""Seed -> noise, bit for bit as ComfyUI draws it.

Three sources of randomness feed a sampling run:

* the initial latent noise (:func:`prepare_noise`): one ``torch.randn`` of the whole latent batch on a
  CPU generator seeded with the seed;
* the per-step noise of the ancestral samplers (:class:`SeededNoiseSampler`): a second CPU generator
  seeded with seed + 1 (ComfyUI's choice on the CPU), one ``randn`` of ``x``'s shape per call;
* the Brownian increments of the SDE samplers (:class:`BrownianTreeNoiseSampler`): a
  ``torchsde.BrownianTree`` over [sigma_min, sigma_max] on the CPU, seeded with the seed (on the
  sampling device for the ``*_gpu`` samplers, as ComfyUI does: then the values depend on the device).

Every generator is a private ``torch.Generator``; the global torch RNG is never reseeded or advanced
(ComfyUI reseeds it with ``torch.manual_seed``; the values drawn are the same either way).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SEED_MIN = 0
SEED_MAX = 2**64 - 1

#: ``noise_sampler(sigma, sigma_next) -> Tensor``: noise with unit variance for the step sigma -> sigma_next.
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an int in 0..2**64-1, else raise ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"seed must be in {SEED_MIN}..{SEED_MAX}, got {seed}")
    return seed


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (the global RNG is left alone)."""
    return torch.Generator(device="cpu").manual_seed(check_seed(seed))


def prepare_noise(latent: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """The initial noise for ``latent``, as ComfyUI's ``prepare_noise``; float32 on the CPU.

    Without ``batch_index`` the whole batch is one ``randn`` call, so item 0 of a batch of N equals
    the noise of a batch of 1 for the same seed. With ``batch_index`` (set by LatentFromBatch /
    RepeatLatentBatch) noise of shape [1, C, H, W] is drawn for i = 0 .. max(batch_index) in turn and
    item k of the result is draw number ``batch_index[k]``.
    """
    generator = cpu_generator(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
    indices = [int(i) for i in batch_index]
    if not indices or min(indices) < 0:
        raise ValueError(f"batch_index must be a non-empty list of non-negative ints, got {list(batch_index)}")
    wanted = set(indices)
    draws: dict[int, Tensor] = {}
    for i in range(max(indices) + 1):
        noise = torch.randn((1, *shape[1:]), dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in indices], dim=0)


def inpaint_noise(shape: Sequence[int], seed: int) -> Tensor:
    """The separate noise ComfyUI's ``ddim`` sampler uses to re-noise the kept (unmasked) region.

    ComfyUI draws it from ``torch.manual_seed(seed + 1)``; seed + 1 wraps to 0 past 2**64 - 1 here
    (ComfyUI would raise there).
    """
    generator = cpu_generator((check_seed(seed) + 1) % (SEED_MAX + 1))
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")


class SeededNoiseSampler:
    """Per-step Gaussian noise for the ancestral samplers (ComfyUI's ``default_noise_sampler``).

    ComfyUI seeds a generator on ``x``'s device: with ``seed + 1`` on the CPU (so the per-step noise
    is not a copy of the initial noise, which comes from the same seed) and with ``seed`` on a GPU.

    * ``device_rng=False`` (default): a CPU generator seeded with ``seed + 1`` draws
      ``randn(x.shape)`` in float32, moved to ``x``'s device and dtype. Equal to ComfyUI running on
      the CPU, and the same on every device.
    * ``device_rng=True``: exactly what ComfyUI does on ``x``'s device (a generator on that device,
      drawing in ``x``'s dtype). Matches ComfyUI's GPU results, but then depends on the GPU's RNG.

    ``seed=None`` draws from the global RNG (k-diffusion's behaviour without a seed).
    """

    def __init__(self, x: Tensor, seed: int | None, *, device_rng: bool = False) -> None:
        self.shape = tuple(x.shape)
        self.device = x.device
        self.dtype = x.dtype
        self.draw_device = x.device if device_rng else torch.device("cpu")
        self.draw_dtype = x.dtype if device_rng else torch.float32
        self.generator: torch.Generator | None = None
        if seed is not None:
            on_cpu = self.draw_device.type == "cpu"
            seed = (check_seed(seed) + 1) % (SEED_MAX + 1) if on_cpu else check_seed(seed)
            self.generator = torch.Generator(device=self.draw_device).manual_seed(seed)

    def __call__(self, sigma: Tensor | float | None = None, sigma_next: Tensor | float | None = None) -> Tensor:
        noise = torch.randn(self.shape, dtype=self.draw_dtype, generator=self.generator, device=self.draw_device)
        return noise.to(device=self.device, dtype=self.dtype)


class BrownianTreeNoiseSampler:
    """Brownian increments for the SDE samplers, as ComfyUI's ``BrownianTreeNoiseSampler``.

    A ``torchsde.BrownianTree`` (Li et al. 2020, "Scalable Gradients for Stochastic Differential
    Equations"; the Brownian Interval of Kidger et al. 2021) of ``x``'s shape is built on the CPU over
    the times [sigma_min, sigma_max] with entropy ``seed``. A call for the step sigma -> sigma_next
    returns ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``: unit-variance noise that is
    correlated consistently between steps, so the result barely depends on the step count.
    ``transform`` maps sigma to the tree's time variable (identity for the samplers here).

    ``cpu=True`` (dpmpp_sde, dpmpp_2m_sde, ...): the tree lives on the CPU, so a seed gives the same
    noise on every device. ``cpu=False`` (the ``*_gpu`` samplers): the tree lives on ``x``'s device and
    draws with that device's RNG, as ComfyUI's ``cpu=False`` tree; on a CPU-only run this is the same
    tree as ``cpu=True`` (bit for bit), on a GPU the noise differs from the CPU tree's and may differ
    between GPU models and torch versions.
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: Tensor | float,
        sigma_max: Tensor | float,
        seed: int | None,
        transform: Callable[[Tensor], Tensor] | None = None,
        *,
        cpu: bool = True,
    ) -> None:
        import torchsde  # optional dependency, only the SDE samplers need it

        self.transform = transform if transform is not None else (lambda t: t)
        self.tree_device = torch.device("cpu") if cpu else x.device
        t0 = self._time(sigma_min)
        t1 = self._time(sigma_max)
        self.sign = 1.0
        if t0 > t1:
            t0, t1, self.sign = t1, t0, -1.0
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        w0 = torch.zeros(tuple(x.shape), dtype=x.dtype, device=self.tree_device)
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=check_seed(seed))
        self.device = x.device
        self.dtype = x.dtype

    def _time(self, sigma: Tensor | float) -> Tensor:
        return self.transform(torch.as_tensor(sigma)).detach().to(self.tree_device).float()

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        t0 = self._time(sigma)
        t1 = self._time(sigma_next)
        sign = 1.0
        if t0 > t1:
            t0, t1, sign = t1, t0, -1.0
        with warnings.catch_warnings():
            # torchsde rounds its end time and warns when a query lands exactly on sigma_max; harmless.
            warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)
            w = (self.tree(t0, t1) * (self.sign * sign)).to(device=self.device, dtype=self.dtype)
        return w / (t1 - t0).abs().sqrt().to(device=self.device, dtype=self.dtype)
