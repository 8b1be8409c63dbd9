"""The latent-diffusion autoencoder (AutoencoderKL, LDM layout) used by SD1.x, SD2.x, SDXL, SD3 and Flux.

Parameter names equal the checkpoint keys with ``first_stage_model.`` removed:
``encoder.conv_in``, ``encoder.down.N.block.M.(norm1|conv1|norm2|conv2|nin_shortcut)``,
``encoder.down.N.downsample.conv``, ``encoder.mid.(block_1|attn_1|block_2)``, ``encoder.norm_out``,
``encoder.conv_out``, ``quant_conv``, ``post_quant_conv``, and the decoder mirrored with
``decoder.up.N.block.M`` / ``decoder.up.N.upsample.conv``. ``up.N`` is indexed by resolution level
(0 = full resolution), so the decoder runs ``up`` in reverse index order, as the checkpoint expects.

SD3/SD3.5 and Flux use the same network with 16 latent channels and without ``quant_conv`` /
``post_quant_conv`` (:attr:`VAEConfig.use_quant_conv` False; SD3 single-file checkpoints keep it under
``first_stage_model.``, Flux's ``ae.safetensors`` has bare ``encoder.`` / ``decoder.`` keys). Their
latent scale and shift are not applied here (see :mod:`engine.backend.latent_formats`).

The mid-block attention (``attn_1``: ``norm``, ``q``, ``k``, ``v``, ``proj_out``) is stored as 1x1
convs ``[C, C, 1, 1]`` in SD checkpoints and as ``[C, C]`` matrices in some converted files; both
load (:meth:`AttnBlock._load_from_state_dict` and :func:`adapt_vae_weight` reshape the 2-D form,
a view, no copy).

Loading without a second copy (the intended path for the model loader)::

    config = VAEConfig.from_state_dict(shapes, prefix="first_stage_model.")
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    load_weights(vae, pairs, device=dev, dtype=dt, adapt=adapt_vae_weight)   # one tensor at a time
    # or: vae.load_state_dict(mapped_tensors, strict=True, assign=True)

Images are ``[B, 3, H, W]`` in -1..1 on both sides; latents are unscaled (multiply by
:data:`SD1_SCALE_FACTOR` / :data:`SDXL_SCALE_FACTOR` before the UNet, divide before decoding: that
is the caller's business; SD3 and Flux also shift). The SDXL VAE overflows in fp16; run it in bf16 or fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.attention import attention, load_weights

__all__ = [
    "SD1_SCALE_FACTOR",
    "SDXL_SCALE_FACTOR",
    "AutoencoderKL",
    "VAEConfig",
    "adapt_vae_weight",
    "decode_tiled",
    "encode_tiled",
    "load_weights",
]

SD1_SCALE_FACTOR = 0.18215  # SD1.x and SD2.x latents
SDXL_SCALE_FACTOR = 0.13025


@dataclass(frozen=True)
class VAEConfig:
    """Structure of an AutoencoderKL: base width ``ch``, per-level multipliers ``ch_mult``,
    ``num_res_blocks`` per encoder level (the decoder has one more), ``z_channels`` (encoder output
    and decoder input width) and ``embed_dim`` (latent channels after ``quant_conv``).

    ``use_quant_conv`` False (SD3, Flux) drops ``quant_conv`` and ``post_quant_conv``: the latent is
    the encoder's output itself, so ``embed_dim`` must equal ``z_channels``."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    use_quant_conv: bool = True

    SD15: ClassVar[VAEConfig]
    SD21: ClassVar[VAEConfig]
    SDXL: ClassVar[VAEConfig]
    SD3: ClassVar[VAEConfig]
    FLUX: ClassVar[VAEConfig]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
        if bad:
            raise ValueError(f"invalid VAEConfig: widths {bad} are not multiples of 32 (GroupNorm groups)")
        if not self.use_quant_conv and self.embed_dim != self.z_channels:
            raise ValueError(f"invalid VAEConfig: without quant_conv embed_dim ({self.embed_dim}) must equal "
                             f"z_channels ({self.z_channels})")

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel along each axis (8 for SD)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, Any], prefix: str = "") -> VAEConfig:
        """Infer the configuration from names and shapes (tuples, ``torch.Size`` or tensors).

        ValueError naming the key when the weights are not an AutoencoderKL this module can build.
        """
        s = {k[len(prefix):]: tuple(v.shape if hasattr(v, "shape") else v) for k, v in shapes.items()
             if k.startswith(prefix)}
        for key in ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight",
                    "decoder.conv_out.weight", "encoder.down.0.block.0.conv1.weight"):
            if key not in s:
                raise ValueError(f"no VAE weights: {prefix}{key} is missing")
        if any(".attn." in k for k in s if k.startswith(("encoder.down.", "decoder.up."))):
            raise ValueError("VAEs with attention inside the resolution levels are not supported")
        ch, in_channels = s["encoder.conv_in.weight"][:2]
        levels = 0
        while f"encoder.down.{levels}.block.0.conv1.weight" in s:
            levels += 1
        ch_mult = tuple(s[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in range(levels))
        num_res_blocks = 0
        while f"encoder.down.0.block.{num_res_blocks}.conv1.weight" in s:
            num_res_blocks += 1
        z_channels, embed_dim, use_quant_conv = _latent_widths(s, prefix)
        return cls(
            in_channels=in_channels,
            out_channels=s["decoder.conv_out.weight"][0],
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            embed_dim=embed_dim,
            use_quant_conv=use_quant_conv,
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name and shape of a VAE with this configuration (built on the meta device)."""
        with torch.device("meta"):
            model = AutoencoderKL(self)
        return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _latent_widths(s: Mapping[str, tuple[int, ...]], prefix: str) -> tuple[int, int, bool]:
    """``(z_channels, embed_dim, use_quant_conv)`` from the shapes (prefix removed) of a VAE's
    ``encoder.conv_out`` (2 x z_channels: mean and log-variance), ``decoder.conv_in`` (z_channels in)
    and, when present, ``quant_conv`` / ``post_quant_conv`` (embed_dim)."""
    z_channels = s["decoder.conv_in.weight"][1]
    if s["encoder.conv_out.weight"][0] != 2 * z_channels:
        raise ValueError(f"not a KL autoencoder: {prefix}encoder.conv_out.weight has {s['encoder.conv_out.weight'][0]} "
                         f"output channels, expected 2 x {z_channels} ({prefix}decoder.conv_in.weight's inputs)")
    present = [name for name in ("quant_conv.weight", "post_quant_conv.weight") if name in s]
    if len(present) == 1:
        raise ValueError(f"unsupported VAE: {prefix}{present[0]} without its counterpart "
                         "(quant_conv and post_quant_conv come as a pair or not at all)")
    if not present:
        return z_channels, z_channels, False
    return z_channels, s["post_quant_conv.weight"][1], True


# SD1.x, SD2.x and SDXL share one VAE architecture (they differ in weights and scale factor only);
# SD3/SD3.5 and Flux share the 16-channel one without quant convs.
VAEConfig.SD15 = VAEConfig.SD21 = VAEConfig.SDXL = VAEConfig()
VAEConfig.SD3 = VAEConfig.FLUX = VAEConfig(z_channels=16, embed_dim=16, use_quant_conv=False)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        # Without autograd (inference) SiLU and the residual add may work in place on the fresh
        # tensors the norms and convs return: one full-resolution buffer less per block, where a
        # decode's peak memory is. Training keeps the out-of-place ops autograd needs.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        return h.add_(self.nin_shortcut(x)) if inplace else h + self.nin_shortcut(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections and a residual."""

    _PROJECTIONS = ("q", "k", "v", "proj_out")

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Accept projection weights stored as [C, C] matrices by viewing them as [C, C, 1, 1] convs.
        for name in self._PROJECTIONS:
            key = f"{prefix}{name}.weight"
            weight = state_dict.get(key)
            if weight is not None and weight.ndim == 2:
                state_dict[key] = weight[:, :, None, None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        q, k, v = (F.linear(tokens, conv.weight.flatten(1), conv.bias) for conv in (self.q, self.k, self.v))
        h = F.linear(attention(q, k, v, heads=1), self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + h.view(batch, height, width, channels).permute(0, 3, 1, 2)


def adapt_vae_weight(name: str, tensor: Tensor, expected: tuple[int, ...]) -> Tensor:
    """For :func:`load_weights`: view a ``[C, C]`` attention projection as the ``[C, C, 1, 1]`` conv weight."""
    if tensor.ndim == 2 and len(expected) == 4 and ".attn_1." in name:
        return tensor[:, :, None, None]
    return tensor


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (the original's asymmetry)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), then ``downsample`` or ``upsample`` if present."""

    def __init__(self, widths: list[tuple[int, int]], resample: nn.Module | None, resample_name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o) for i, o in widths)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = c.ch
        for level, out in enumerate(widths):
            blocks = [(width if j == 0 else out, out) for j in range(c.num_res_blocks)]
            last = level == len(widths) - 1
            self.down.append(Level(blocks, None if last else Downsample(out), "downsample"))
            width = out
        self.mid = Mid(width)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        width = widths[-1]
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = Mid(width)
        levels: list[Level] = []
        for level in reversed(range(len(widths))):
            out = widths[level]
            blocks = [(width if j == 0 else out, out) for j in range(c.num_res_blocks + 1)]
            levels.append(Level(blocks, Upsample(out) if level else None, "upsample"))
            width = out
        self.up = nn.ModuleList(reversed(levels))  # index = resolution level, as in the checkpoint
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, c.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder: :meth:`encode` images to latents, :meth:`decode` latents to images."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Without quant convs (SD3, Flux) Identity keeps the forward path and adds no parameters.
        self.quant_conv: nn.Module = (
            nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1) if config.use_quant_conv else nn.Identity()
        )
        self.post_quant_conv: nn.Module = (
            nn.Conv2d(config.embed_dim, config.z_channels, 1) if config.use_quant_conv else nn.Identity()
        )

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], prefix: str = "", config: VAEConfig | None = None
    ) -> AutoencoderKL:
        """Build on the meta device and adopt ``state_dict``'s tensors as the parameters (no copy)."""
        config = config or VAEConfig.from_state_dict(state_dict, prefix)
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(weights, strict=True, assign=True)
        return model.requires_grad_(False).eval()

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (inputs are cast to it)."""
        return self.encoder.conv_in.weight.dtype

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)`` for ``images`` ``[B, C, H, W]`` in -1..1; logvar clamped to [-30, 20]."""
        moments = self.quant_conv(self.encoder(images.to(self.dtype)))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Latents for ``images`` in -1..1: the posterior mean, or a sample when ``generator`` is given."""
        mean, logvar = self.encode_moments(images)
        return _sample(mean, logvar, generator)

    def decode(self, latents: Tensor) -> Tensor:
        """Images (about -1..1, not clamped) for unscaled ``latents`` ``[B, embed_dim, h, w]``."""
        return self.decoder(self.post_quant_conv(latents.to(self.dtype)))


def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return mean + torch.exp(0.5 * logvar) * noise.to(device=mean.device, dtype=mean.dtype)


# --------------------------------------------------------------------------------------------- tiling


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``[0, size)`` with at least ``overlap`` shared between neighbours."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, size - tile, stride)) + [size - tile]


def _feather(length: int, at_start: bool, at_end: bool, ramp: int) -> Tensor:
    """1-D blend weights: linear ramps (strictly positive) toward edges shared with a neighbour tile."""
    weight = torch.ones(length, dtype=torch.float32)
    ramp = min(ramp, length)
    if ramp > 0:
        rising = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
        if not at_start:
            weight[:ramp] = torch.minimum(weight[:ramp], rising)
        if not at_end:
            weight[-ramp:] = torch.minimum(weight[-ramp:], rising.flip(0))
    return weight


def _run_tiled(
    fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, scale: float, out_channels: int
) -> Tensor:
    """Apply ``fn`` (which resizes by ``scale``) to overlapping tiles of ``x`` and blend the results."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile): got tile={tile}, overlap={overlap}")
    batch, _, height, width = x.shape
    out_h, out_w = round(height * scale), round(width * scale)
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float32, device=x.device)
    total = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=x.device)
    ramp = round(overlap * scale)
    rows, cols = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    for top in rows:
        for left in cols:
            piece = fn(x[:, :, top:top + tile, left:left + tile]).float()
            t, l_ = round(top * scale), round(left * scale)
            ph, pw = piece.shape[2], piece.shape[3]
            wy = _feather(ph, top == rows[0], top == rows[-1], ramp)
            wx = _feather(pw, left == cols[0], left == cols[-1], ramp)
            weight = (wy[:, None] * wx[None, :]).to(x.device)
            out[:, :, t:t + ph, l_:l_ + pw] += piece * weight
            total[:, :, t:t + ph, l_:l_ + pw] += weight
    return out / total


def decode_tiled(vae: AutoencoderKL, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
    """Decode ``z`` in overlapping ``tile``-sized latent tiles, blending seams with linear feathering.

    ``tile`` and ``overlap`` are in latent pixels. Memory is bounded by one tile's decode; the result
    is float32 and close to :meth:`AutoencoderKL.decode` (the mid-block attention sees one tile at a time).
    """
    scale = vae.config.downscale
    return _run_tiled(vae.decode, z, tile, overlap, scale, vae.config.out_channels)


def encode_tiled(
    vae: AutoencoderKL, x: Tensor, tile: int = 512, overlap: int = 64, generator: torch.Generator | None = None
) -> Tensor:
    """Encode images ``x`` in overlapping ``tile``-sized pixel tiles, blending the posterior moments.

    ``tile``, ``overlap`` and the image size must be multiples of the downscale factor (8 for SD).
    Returns the blended posterior mean (float32), or a sample from it when ``generator`` is given.
    """
    scale = vae.config.downscale
    if tile % scale or overlap % scale or x.shape[2] % scale or x.shape[3] % scale:
        raise ValueError(
            f"encode_tiled needs tile ({tile}), overlap ({overlap}) and image size {tuple(x.shape[2:])} "
            f"to be multiples of {scale}"
        )

    def moments(piece: Tensor) -> Tensor:
        return torch.cat(vae.encode_moments(piece), dim=1)

    embed = vae.config.embed_dim
    blended = _run_tiled(moments, x, tile, overlap, 1 / scale, 2 * embed)
    return _sample(blended[:, :embed], blended[:, embed:], generator)
