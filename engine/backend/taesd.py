"""TAESD, the Tiny AutoEncoder for Stable Diffusion (madebyollin's architecture): a fast approximate VAE.

Both halves are plain ``nn.Sequential`` stacks of 3x3 convolutions and residual ``Block`` s, so the
published files (``taesd_decoder.safetensors``, ``taesdxl_encoder.pth``, ...) hold bare index keys:
``1.weight`` (the decoder's first conv, after the ``Clamp`` at index 0), ``3.conv.0.weight``,
``3.skip.weight`` (only where a block changes width), ...

TAESD works on *model-space* latents (the VAE latent times the family's scale factor) and on images
in 0..1: the decoder starts with ``tanh(x / 3) * 3`` and its output is read as 0..1. The published
models are 64 channels wide; the width (and the latent channel count) are read from the weights, so a
narrower distilled TAESD (the demo model's) loads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: How many Blocks follow each conv of the encoder (the first conv, then three stride-2 convs).
ENCODER_BLOCKS = (1, 3, 3, 3)
#: How many Blocks precede each upsample of the decoder (the last group has no upsample).
DECODER_BLOCKS = (3, 3, 3, 1)


def _conv(n_in: int, n_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """The decoder's soft clamp of its input latent to about +-3: ``tanh(x / 3) * 3``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3.0) * 3.0


class Block(nn.Module):
    """Three 3x3 convs (ReLU between) plus a skip (1x1 without bias when the width changes), then ReLU."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip: nn.Module = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(width: int = 64, latent_channels: int = 4) -> nn.Sequential:
    """Images in 0..1 ``[B, 3, H, W]`` -> model-space latents ``[B, latent_channels, H/8, W/8]``."""
    layers: list[nn.Module] = []
    for group, blocks in enumerate(ENCODER_BLOCKS):
        layers.append(_conv(3, width) if group == 0 else _conv(width, width, stride=2, bias=False))
        layers.extend(Block(width, width) for _ in range(blocks))
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(width: int = 64, latent_channels: int = 4) -> nn.Sequential:
    """Model-space latents -> images (about 0..1) at 8x the size."""
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for group, blocks in enumerate(DECODER_BLOCKS):
        layers.extend(Block(width, width) for _ in range(blocks))
        if group < len(DECODER_BLOCKS) - 1:
            layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    layers.append(_conv(width, 3))
    return nn.Sequential(*layers)


def _shape_of(state_dict: Mapping[str, Tensor], key: str, part: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"not a TAESD {part}: the weights have no '{key}' (TAESD files hold bare index keys "
                         "such as '1.weight' and '3.conv.0.weight')")
    return tuple(state_dict[key].shape)


def load_decoder(state_dict: Mapping[str, Tensor]) -> nn.Sequential:
    """A TAESD decoder from its weights; width and latent channels are read from ``1.weight``."""
    width, latent_channels = _shape_of(state_dict, "1.weight", "decoder")[:2]
    return _adopt(build_decoder(width, latent_channels), state_dict)


def load_encoder(state_dict: Mapping[str, Tensor]) -> nn.Sequential:
    """A TAESD encoder from its weights; width from ``0.weight``, latent channels from the last conv."""
    width = _shape_of(state_dict, "0.weight", "encoder")[0]
    last = str(1 + sum(ENCODER_BLOCKS) + len(ENCODER_BLOCKS) - 1)
    latent_channels = _shape_of(state_dict, f"{last}.weight", "encoder")[0]
    return _adopt(build_encoder(width, latent_channels), state_dict)


def _adopt(module: nn.Sequential, state_dict: Mapping[str, Tensor]) -> nn.Sequential:
    weights = {k: v.float() for k, v in state_dict.items()}
    module.load_state_dict(weights, strict=True)
    return module.requires_grad_(False).eval()


@dataclass(frozen=True)
class TinyConfig:
    """What tiled VAE code reads of a config: 8x down/upscale, RGB out."""

    latent_channels: int
    downscale: int = 8
    out_channels: int = 3


class TinyAutoencoder(nn.Module):
    """TAESD behind the VAE's interface: :meth:`decode` takes *unscaled* VAE latents and gives images in
    about -1..1, :meth:`encode` the reverse, as ComfyUI's VAELoader "taesd" does (latent * ``scale``
    + ``shift`` is what TAESD reads). Either half may be missing (a preview needs only the decoder)."""

    def __init__(self, decoder: nn.Sequential | None, encoder: nn.Sequential | None, *, scale: float,
                 shift: float = 0.0) -> None:
        super().__init__()
        if decoder is None and encoder is None:
            raise ValueError("a TAESD needs a decoder or an encoder")
        self.decoder = decoder
        self.encoder = encoder
        self.scale = scale
        self.shift = shift
        first = next(iter((decoder if decoder is not None else encoder).parameters()))  # type: ignore[union-attr]
        channels = first.shape[1] if decoder is not None else _latent_channels(encoder)
        self.config = TinyConfig(latent_channels=int(channels))

    @property
    def dtype(self) -> torch.dtype:
        module = self.decoder if self.decoder is not None else self.encoder
        assert module is not None
        return next(iter(module.parameters())).dtype

    @property
    def device(self) -> torch.device:
        module = self.decoder if self.decoder is not None else self.encoder
        assert module is not None
        return next(iter(module.parameters())).device

    def decode_model_space(self, latents: Tensor) -> Tensor:
        """Images in about -1..1 for model-space latents (what a sampler's denoised estimate is)."""
        if self.decoder is None:
            raise ValueError("this TAESD has no decoder: put taesd*_decoder next to its encoder in "
                             "models/vae_approx")
        return self.decoder(latents.to(self.dtype)) * 2.0 - 1.0

    def decode(self, latents: Tensor) -> Tensor:
        """Images in about -1..1 for unscaled VAE ``latents``."""
        return self.decode_model_space((latents - self.shift) * self.scale)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Unscaled VAE latents for ``images`` in -1..1 (deterministic: ``generator`` is ignored)."""
        if self.encoder is None:
            raise ValueError("this TAESD has no encoder: put taesd*_encoder next to its decoder in "
                             "models/vae_approx")
        return self.encoder(images.to(self.dtype) * 0.5 + 0.5) / self.scale + self.shift


def _latent_channels(encoder: nn.Sequential | None) -> int:
    assert encoder is not None
    last = encoder[-1]
    assert isinstance(last, nn.Conv2d)
    return last.out_channels
