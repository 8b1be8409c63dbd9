"""T2I-Adapters (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability
for Text-to-Image Diffusion Models") in the layout of the original (TencentARC) files.

An adapter turns a hint image into one feature map per stage, computed once per sampling run (it does
not see the latent or the timestep); the features are added to the UNet encoder's features:

* the hint is pixel-unshuffled (8x for SD1/SD2, 16x for SDXL), so ``cin = hint channels * factor**2``;
* **full** adapter: ``conv_in`` (3x3) then ``stages * blocks_per_stage`` residual blocks ``body.N``
  (``in_conv`` when the width changes, ``block1`` 3x3, ReLU, ``block2`` k x k, plus the input; a stage's
  first block may downsample 2x, by average pooling or a strided ``down_opt.op`` conv);
* **light** adapter: one ``body.N`` extractor per stage: [avg-pool 2x,] ``in_conv`` 1x1 to a quarter of
  the width, ``body.M`` residual blocks (two 3x3 convs), ``out_conv`` 1x1.

Placement (ComfyUI's): for SD1/SD2 stage ``i``'s feature is added to the output of input block
``3 i + 2`` (the last block at each resolution); for SDXL (the full XL adapter: stage 1 changes width
without downsampling, stage 2 downsamples) stages 0, 1, 2 go to input blocks 3, 5 and 8 and stage 3 to
the middle block. :meth:`T2IAdapter.residuals` returns the lists in the order
:meth:`UNetModel.forward(control=...) <engine.backend.unet.UNetModel.forward>` consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.unet import UNetConfig

__all__ = ["T2IAdapter", "T2IAdapterConfig", "adapter_problem"]

#: Input blocks (SDXL) that receive stages 0, 1 and 2; stage 3 goes to the middle block.
_XL_BLOCKS = (3, 5, 8)


@dataclass(frozen=True)
class T2IAdapterConfig:
    """``kind`` "full" or "light"; ``cin`` the unshuffled input width; ``channels`` each stage's width;
    ``blocks`` residual blocks per stage; ``xl`` the SDXL placement and 16x unshuffle; ``kernel`` the
    full adapter's ``block2``/``in_conv`` size; ``conv_down`` strided-conv (not pooling) downsampling."""

    kind: str
    cin: int
    channels: tuple[int, ...]
    blocks: int
    xl: bool = False
    kernel: int = 1
    conv_down: bool = False

    @property
    def unshuffle(self) -> int:
        return 16 if self.xl else 8

    @property
    def hint_channels(self) -> int:
        return self.cin // (self.unshuffle ** 2)

    def downsamples(self, stage: int) -> bool:
        if self.xl:
            return stage == 2
        return stage > 0

    def describe(self) -> str:
        model = "SDXL" if self.xl else "SD1.x/SD2.x"
        return (f"a {self.kind} {model} T2I-Adapter ({self.hint_channels}-channel hints, "
                f"stages {', '.join(map(str, self.channels))})")


def _pool(x: Tensor) -> Tensor:
    """2x average pooling; an odd side is padded by one (and the pad counted), as the originals do."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))


class _Down(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _FullBlock(nn.Module):
    """A full adapter's residual block (no skip conv: the original files are saved with ``sk=True``)."""

    def __init__(self, c_in: int, c_out: int, down: bool, kernel: int, conv_down: bool) -> None:
        super().__init__()
        self.down = down
        self.pool = down and not conv_down
        if down and conv_down:
            self.down_opt = _Down(c_in)
        self.in_conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2) if c_in != c_out else None
        self.block1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.block2 = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = _pool(x)
        elif self.down:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class _LightBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class _Extractor(nn.Module):
    """One light-adapter stage."""

    def __init__(self, c_in: int, c_out: int, blocks: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(c_in, c_out // 4, 1)
        self.body = nn.Sequential(*(_LightBlock(c_out // 4) for _ in range(blocks)))
        self.out_conv = nn.Conv2d(c_out // 4, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.down:
            x = _pool(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapter(nn.Module):
    """A T2I-Adapter; parameter names equal the original files' keys. See the module docstring."""

    def __init__(self, config: T2IAdapterConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.kind == "light":
            widths = (c.cin, *c.channels[:-1])
            self.body = nn.ModuleList(_Extractor(w, out, c.blocks, c.downsamples(i))
                                      for i, (w, out) in enumerate(zip(widths, c.channels, strict=True)))
        elif c.kind == "full":
            self.conv_in = nn.Conv2d(c.cin, c.channels[0], 3, padding=1)
            blocks: list[nn.Module] = []
            for i, out in enumerate(c.channels):
                for j in range(c.blocks):
                    first = j == 0 and i > 0
                    c_in = c.channels[i - 1] if first else out
                    blocks.append(_FullBlock(c_in, out, first and c.downsamples(i), c.kernel, c.conv_down))
            self.body = nn.ModuleList(blocks)
        else:
            raise ValueError(f"unknown T2I-Adapter kind {c.kind!r}: expected 'full' or 'light'")

    @property
    def hint_channels(self) -> int:
        return self.config.hint_channels

    def forward(self, hint: Tensor) -> list[Tensor]:
        """One feature map per stage for hint images ``[B, hint_channels, H, W]`` (0..1; H and W
        multiples of the unshuffle factor)."""
        c = self.config
        x = F.pixel_unshuffle(hint.to(next(self.parameters()).dtype), c.unshuffle)
        features: list[Tensor] = []
        if c.kind == "light":
            for stage in self.body:
                x = stage(x)
                features.append(x)
            return features
        x = self.conv_in(x)
        for i in range(len(c.channels)):
            for j in range(c.blocks):
                x = self.body[i * c.blocks + j](x)
            features.append(x)
        return features

    def residuals(self, features: list[Tensor], num_res_blocks: int = 2) -> dict[str, list[Tensor | None]]:
        """The per-stage ``features`` as UNet control lists (``"input"``, and ``"middle"`` for SDXL),
        consumed from the end: the last entry goes with the first input block. ``num_res_blocks`` (per
        level, SD1/SD2 layouts) places stage ``i`` after the last input block of level ``i``."""
        if self.config.xl:
            inputs: list[Tensor | None] = [None] * (_XL_BLOCKS[-1] + 1)
            for block, feature in zip(_XL_BLOCKS, features[:3], strict=True):
                inputs[block] = feature
            return {"input": inputs[::-1], "middle": [features[3]]}
        step = num_res_blocks + 1
        inputs = [None] * (step * len(features))
        for stage, feature in enumerate(features):
            inputs[step * stage + num_res_blocks] = feature
        return {"input": inputs[::-1]}


def adapter_problem(config: T2IAdapterConfig, unet: UNetConfig) -> str | None:
    """Why an adapter's features do not fit ``unet``'s encoder, or None."""
    widths = [unet.model_channels * m for m in unet.channel_mult]
    xl_unet = unet.adm_in_channels is not None and len(widths) == 3
    expected = [widths[0], widths[1], widths[2], widths[2]] if xl_unet else widths
    if config.xl != xl_unet or list(config.channels) != expected:
        return (f"its stages are {list(config.channels)} wide, the model's levels {widths} "
                f"({'an SDXL' if xl_unet else 'an SD1.x/SD2.x'} UNet)")
    if not xl_unet and len(set(unet.num_res_blocks)) != 1:
        return f"the model's levels have different block counts {unet.num_res_blocks}"
    return None
