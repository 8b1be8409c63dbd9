"""The latent-diffusion UNet (the LDM / SGM "openaimodel" layout) used by SD1.x, SD2.x and SDXL.

Parameter names equal the checkpoint keys with ``model.diffusion_model.`` removed, so a real
checkpoint's UNet tensors load with ``strict=True`` and no remapping:

* ``time_embed.0/2``: MLP over the sinusoidal timestep embedding; ``label_emb.0.0/2``: the SDXL
  "adm" vector MLP (pooled text embedding + size/crop/aesthetic embeddings, built by :func:`sdxl_adm`),
  or ``label_emb.weight``: a class-label embedding table (the SD x4 upscaler's noise level, ``num_classes``).
* ``input_blocks.N.M``: block 0 is the input conv; then per resolution level ``num_res_blocks``
  blocks of ResBlock (``in_layers``/``emb_layers``/``out_layers``/``skip_connection``) optionally
  followed by a :class:`~engine.backend.attention.SpatialTransformer`, and a downsampling conv
  (``op``) between levels.
* ``middle_block.0/1/2``: ResBlock, SpatialTransformer, ResBlock.
* ``output_blocks.N.M``: mirrored, ``num_res_blocks + 1`` blocks per level, each concatenating the
  matching skip tensor; an upsampling conv (``conv``) closes every level but the last.
* ``out.0/2``: GroupNorm and the output conv.

Loading a checkpoint without a second copy (the intended path for the model loader)::

    config = UNetConfig.from_state_dict({k: shape for k, shape in file_shapes})   # names + shapes only
    with torch.device("meta"):
        unet = UNetModel(config)          # no memory, no random init
    load_weights(unet, ((k, read(k)) for k in unet_keys), device=dev, dtype=dt)   # one tensor at a time
    # or, with a dict of memory-mapped tensors: unet.load_state_dict(mapped, strict=True, assign=True)

Facts used for the configurations (no code was copied): the SD1.5 key/shape listing in
``shared/reference/sd15-checkpoint-keys.tsv``; the match tables of ComfyUI's model detection
(summarised in ``shared/reference/comfyui.md`` section 6: SD15 context 768 / 8 heads / conv
projections, SD2 context 1024 / 64-channel heads / linear projections, SDXL transformer depths
[0,0,2,2,10,10], context 2048, adm 2816, refiner 384 channels / context 1280 / adm 2560); and the
public SGM refiner config (``sd_xl_refiner.yaml``: channel_mult [1,2,4,4], attention at
downsampling factors 2 and 4, transformer depth 4, 64-channel heads, linear projections). The SDXL
adm layout (pooled, then 256-dim sinusoidal embeddings of original height/width, crop top/left,
target height/width; the refiner puts the aesthetic score in place of the target size) is SGM's
conditioner layout, checked in the tests against diffusers' independent "text_time" embedding.

Patch points (ComfyUI's ``transformer_options["patches"]`` names, where its openaimodel / attention
modules call them). ``forward(..., patches=PatchContext(...))`` runs each point's functions in order;
without a PatchContext the forward is the plain one (no lookups, no extra work). ``ctx`` is the
call's :class:`PatchContext` (``ctx.block`` / ``ctx.block_index`` say where the call is)::

    input_block_patch(h, ctx) -> h                  after each input block (and its control residual),
                                                     before h is kept as a skip
    input_block_patch_after_skip(h, ctx) -> h        after the skip is kept (only the path goes on changed)
    middle_block_patch(h, ctx) -> h                  after the middle block and its control residual
    output_block_patch(h, hsp, ctx) -> (h, hsp)      before each output block concatenates h and its skip
    attn1_patch(n, key, value, ctx) -> (n, key, value)   on the normed tokens [B, N, C] before self-attention
    attn1_replace(q, k, v, ctx) -> Tensor | None     the attention of projected q, k, v ([B, N, heads * d]);
                                                     None: not this block, next one / the default
    attn1_output_patch(out, ctx) -> out              after self-attention's output projection
    middle_patch(x, ctx) -> x                        on the tokens after self-attention's residual (GLIGEN)
    attn1_multiply: (q, k, v, out) floats            multiply the to_q / to_k / to_v / to_out.0 weights
                                                     (and biases) at use; several multiply together
    attn2_patch / attn2_replace / attn2_output_patch / attn2_multiply: the same for cross-attention
                                                     (key and value start as the text context)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.attention import SpatialTransformer, load_weights

__all__ = [
    "SD15",
    "SD21",
    "SDXL",
    "SDXL_REFINER",
    "PatchContext",
    "UNetConfig",
    "UNetModel",
    "build_input_blocks",
    "build_middle_block",
    "build_time_embeddings",
    "embed_timesteps",
    "load_weights",
    "sdxl_adm",
    "sdxl_refiner_adm",
    "timestep_embedding",
]

Shapes = Mapping[str, Any]  # name -> shape tuple (or anything with a .shape, e.g. a tensor)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period ** (-i / (dim // 2))``.

    ``timesteps`` is ``[B]`` (any numeric dtype); the result is ``[B, dim]`` float32 (cos first: the
    original's ``flip_sin_to_cos=True`` layout; odd ``dim`` is zero-padded).
    """
    half = dim // 2
    # Same operation order as the original (and diffusers), so the frequencies match bit for bit.
    steps = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(-math.log(max_period) * steps / half)
    args = timesteps.reshape(-1, 1).float() * frequencies[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _scalar_embeddings(values: Sequence[float], batch: int, device: torch.device) -> Tensor:
    """256-dim embedding of each scalar, concatenated in order, repeated over the batch: ``[B, 256 * n]``."""
    scalars = torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)
    return timestep_embedding(scalars, 256).reshape(1, -1).expand(batch, -1)


def sdxl_adm(
    pooled: Tensor,
    width: int,
    height: int,
    crop_w: int = 0,
    crop_h: int = 0,
    target_width: int | None = None,
    target_height: int | None = None,
) -> Tensor:
    """The SDXL base "adm" vector ``y`` ``[B, 2816]``: pooled text embedding + size conditioning.

    ``pooled`` is the ``[B, 1280]`` projected pooled output of the OpenCLIP bigG encoder. The six
    scalars follow in SGM's order: original (height, width), crop (top = ``crop_h``, left = ``crop_w``),
    target (height, width) — each as a 256-dim sinusoidal embedding. Target size defaults to the
    original size. Computed in float32, returned in ``pooled``'s dtype.
    """
    target_width = width if target_width is None else target_width
    target_height = height if target_height is None else target_height
    sizes = _scalar_embeddings(
        (height, width, crop_h, crop_w, target_height, target_width), pooled.shape[0], pooled.device
    )
    return torch.cat([pooled.float(), sizes], dim=1).to(pooled.dtype)


def sdxl_refiner_adm(
    pooled: Tensor, width: int, height: int, aesthetic_score: float = 6.0, crop_w: int = 0, crop_h: int = 0
) -> Tensor:
    """The SDXL refiner "adm" vector ``[B, 2560]``: pooled bigG embedding + (height, width, crop top,
    crop left, aesthetic score) as 256-dim sinusoidal embeddings. ComfyUI's defaults for the score are
    6.0 (positive) and 2.5 (negative)."""
    extra = _scalar_embeddings((height, width, crop_h, crop_w, aesthetic_score), pooled.shape[0], pooled.device)
    return torch.cat([pooled.float(), extra], dim=1).to(pooled.dtype)


# --------------------------------------------------------------------------------------------- patches


@dataclass
class PatchContext:
    """What patch functions see of one UNet call (ComfyUI's ``transformer_options``).

    ``patches`` maps a patch point (module docstring) to its entries, in order. ``timestep`` is the
    call's [B] timesteps, ``original_shape`` the input's shape, ``rows`` groups the batch rows:
    ``(key, count)`` per group in order (UNetApply: the conditioning entry of each group). The UNet
    updates ``block`` (("input" | "middle" | "output", index)), ``block_index`` (the transformer
    block inside a SpatialTransformer), ``heads`` and ``dim_head`` as it runs. Patches may keep
    per-run state of their own, never this object.
    """

    patches: Mapping[str, Sequence[Any]]
    timestep: Tensor
    original_shape: tuple[int, ...]
    model_channels: int
    rows: tuple[tuple[Any, int], ...] = ()
    block: tuple[str, int] = ("input", 0)
    block_index: int = 0
    heads: int = 0
    dim_head: int = 0
    _scales: dict[str, tuple[float, float, float, float]] = field(default_factory=dict, repr=False)

    def get(self, point: str) -> Sequence[Any]:
        """The entries at ``point`` (empty when none)."""
        return self.patches.get(point, ())

    def weight_scale(self, name: str) -> tuple[float, float, float, float]:
        """The product of the ``{name}_multiply`` entries: (q, k, v, out) multipliers."""
        if name not in self._scales:
            q = k = v = out = 1.0
            for sq, sk, sv, so in self.get(f"{name}_multiply"):
                q, k, v, out = q * sq, k * sk, v * sv, out * so
            self._scales[name] = (q, k, v, out)
        return self._scales[name]

    def run(self, point: str, h: Tensor) -> Tensor:
        """``h`` through the ``fn(h, ctx)`` entries of ``point``."""
        for fn in self.get(point):
            h = fn(h, self)
        return h


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class UNetConfig:
    """Everything that determines the UNet's structure (and so every parameter name and shape).

    ``transformer_depth`` has one entry per input ResBlock (``sum(num_res_blocks)`` entries, level by
    level; 0 = no SpatialTransformer after it); ``transformer_depth_output`` one per output ResBlock
    (``sum(num_res_blocks) + len(channel_mult)``, in output order, i.e. deepest level first);
    ``transformer_depth_middle`` is the middle block's depth (0 = ResBlock, ResBlock with no
    transformer between). Heads come from either ``num_heads`` (fixed count, SD1.x: 8) or
    ``num_head_channels`` (fixed width, SD2/SDXL: 64); the other is -1. ``adm_in_channels`` is the
    SDXL class-embedding input width (2816 base, 2560 refiner) or None. ``num_classes`` is the size of
    a class-label embedding table (the SD x4 upscaler: 1000 noise levels; ``y`` is then the label) or None.
    ``disable_self_attention`` has one flag per level (empty: none set): the transformers of a flagged
    level attend to the text context in their first attention too (the x4 upscaler: True, True, True, False).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)
    transformer_depth_middle: int = 1
    transformer_depth_output: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    context_dim: int | None = 768
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    num_classes: int | None = None
    disable_self_attention: tuple[bool, ...] = ()

    SD15: ClassVar[UNetConfig]
    SD21: ClassVar[UNetConfig]
    SDXL: ClassVar[UNetConfig]
    SDXL_REFINER: ClassVar[UNetConfig]

    def __post_init__(self) -> None:
        for name in ("channel_mult", "num_res_blocks", "transformer_depth", "transformer_depth_output"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "disable_self_attention", tuple(bool(v) for v in self.disable_self_attention))
        levels = len(self.channel_mult)
        problems = []
        if len(self.num_res_blocks) != levels:
            problems.append(f"num_res_blocks has {len(self.num_res_blocks)} entries for {levels} levels")
        if len(self.transformer_depth) != sum(self.num_res_blocks):
            problems.append(f"transformer_depth needs {sum(self.num_res_blocks)} entries (one per input ResBlock)")
        if len(self.transformer_depth_output) != sum(self.num_res_blocks) + levels:
            problems.append(
                f"transformer_depth_output needs {sum(self.num_res_blocks) + levels} entries (one per output ResBlock)"
            )
        if self.disable_self_attention and len(self.disable_self_attention) != levels:
            problems.append(f"disable_self_attention needs one flag per level ({levels}) or none")
        if self.adm_in_channels is not None and self.num_classes is not None:
            problems.append("set at most one of adm_in_channels and num_classes (both are label_emb)")
        if (self.num_heads > 0) == (self.num_head_channels > 0):
            problems.append("set exactly one of num_heads and num_head_channels (the other -1)")
        uses_attention = any(self.transformer_depth) or any(self.transformer_depth_output)
        if (uses_attention or self.transformer_depth_middle) and not self.context_dim:
            problems.append("context_dim is required when the UNet has transformer blocks")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % 32:
                problems.append(f"width {self.model_channels * mult} is not a multiple of 32 (GroupNorm groups)")
        if problems:
            raise ValueError("invalid UNetConfig: " + "; ".join(problems))

    def self_attention_disabled(self, level: int) -> bool:
        """Whether the transformers of ``level`` attend to the context in their first attention."""
        return bool(self.disable_self_attention) and self.disable_self_attention[level]

    def heads(self, channels: int) -> tuple[int, int]:
        """``(heads, dim_head)`` for a SpatialTransformer of ``channels`` width."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads

    @classmethod
    def from_state_dict(cls, shapes: Shapes, prefix: str = "", *, encoder_only: bool = False) -> UNetConfig:
        """Infer the configuration from parameter names and shapes (no tensor data is read).

        ``shapes`` maps names to shapes (tuples, ``torch.Size`` or tensors); only names starting with
        ``prefix`` are considered (e.g. ``"model.diffusion_model."``). The head layout is not visible
        in shapes: SD1.x-like models (context 768, conv projections) and the SD x4 upscaler (a class-label
        table) get ``num_heads=8``, others ``num_head_channels=64`` when every attention width divides by 64,
        else ``num_heads=8``.
        Override with ``dataclasses.replace`` when a model is known to differ.

        ``encoder_only`` reads weights that stop after the middle block (a ControlNet's copy of the
        encoder): ``out_channels`` is then 4 and the output depths mirror the input depths per level,
        as in every SD model, so the configuration stays valid.
        """
        return _infer_config(shapes, prefix, encoder_only)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name and shape of a UNet with this configuration (built on the meta device)."""
        with torch.device("meta"):
            model = UNetModel(self)
        return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _transformer_depth(s: Mapping[str, tuple[int, ...]], block: str) -> int:
    depth = 0
    while f"{block}.transformer_blocks.{depth}.attn1.to_q.weight" in s:
        depth += 1
    return depth


def _infer_config(shapes: Shapes, prefix: str, encoder_only: bool = False) -> UNetConfig:
    s = {k[len(prefix):]: _shape(v) for k, v in shapes.items() if k.startswith(prefix)}
    if "input_blocks.0.0.weight" not in s:
        raise ValueError(f"no UNet weights: {prefix}input_blocks.0.0.weight is missing")
    model_channels, in_channels = s["input_blocks.0.0.weight"][:2]
    out_channels = 4 if encoder_only else s["out.2.weight"][0]
    adm = s["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in s else None
    num_classes = s["label_emb.weight"][0] if "label_emb.weight" in s else None

    channel_mult: list[int] = []
    num_res_blocks: list[int] = []
    depths: list[int] = []
    context_dim: int | None = None
    linear: bool | None = None
    attention_widths: set[int] = set()
    context_attn1: list[bool] = []  # per level: does attn1 read the context (to_k wider than the tokens)?
    count, mult, n = 0, 0, 1
    while True:
        block = f"input_blocks.{n}"
        if f"{block}.0.op.weight" in s:
            channel_mult.append(mult)
            num_res_blocks.append(count)
            context_attn1 += [False] * (len(channel_mult) - len(context_attn1))
            count = 0
        elif f"{block}.0.in_layers.0.weight" in s:
            width = s[f"{block}.0.out_layers.3.weight"][0]
            mult = width // model_channels
            count += 1
            depth = _transformer_depth(s, f"{block}.1")
            depths.append(depth)
            if depth:
                attention_widths.add(width)
                context_dim = s[f"{block}.1.transformer_blocks.0.attn2.to_k.weight"][1]
                linear = len(s[f"{block}.1.proj_in.weight"]) == 2
                if len(context_attn1) == len(channel_mult):  # the level's first transformer decides
                    keys_in = s[f"{block}.1.transformer_blocks.0.attn1.to_k.weight"][1]
                    context_attn1.append(keys_in != s[f"{block}.1.transformer_blocks.0.attn1.to_q.weight"][1])
        else:
            break
        n += 1
    channel_mult.append(mult)
    num_res_blocks.append(count)
    context_attn1 += [False] * (len(channel_mult) - len(context_attn1))

    middle = _transformer_depth(s, "middle_block.1")
    output_depths = _mirrored_depths(depths, num_res_blocks) if encoder_only else []
    n = 0
    while not encoder_only and f"output_blocks.{n}.0.in_layers.0.weight" in s:
        output_depths.append(_transformer_depth(s, f"output_blocks.{n}.1"))
        n += 1
    if context_dim is None and "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in s:
        context_dim = s["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1]
        linear = len(s["middle_block.1.proj_in.weight"]) == 2

    # SD1.x and the SD x4 upscaler (a class-label table) use 8 heads at every width.
    fixed_heads = (context_dim == 768 and not linear) or num_classes is not None
    by_width = not fixed_heads and all(w % 64 == 0 for w in attention_widths)
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(depths),
        transformer_depth_middle=middle,
        transformer_depth_output=tuple(output_depths),
        context_dim=context_dim,
        num_heads=-1 if by_width else 8,
        num_head_channels=64 if by_width else -1,
        use_linear_in_transformer=bool(linear),
        adm_in_channels=adm,
        num_classes=num_classes,
        disable_self_attention=tuple(context_attn1) if any(context_attn1) else (),
    )


def _mirrored_depths(depths: Sequence[int], num_res_blocks: Sequence[int]) -> list[int]:
    """Output depths of an encoder-only model: each level's last input depth, deepest level first."""
    per_level, start = [], 0
    for count in num_res_blocks:
        per_level.append(depths[start + count - 1] if count else 0)
        start += count
    return [per_level[level] for level in reversed(range(len(num_res_blocks)))
            for _ in range(num_res_blocks[level] + 1)]


SD15 = UNetConfig()
SD21 = UNetConfig(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)
SDXL = UNetConfig(
    channel_mult=(1, 2, 4),
    num_res_blocks=(2, 2, 2),
    transformer_depth=(0, 0, 2, 2, 10, 10),
    transformer_depth_middle=10,
    transformer_depth_output=(10, 10, 10, 2, 2, 2, 0, 0, 0),
    context_dim=2048,
    num_heads=-1,
    num_head_channels=64,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
)
SDXL_REFINER = UNetConfig(
    model_channels=384,
    channel_mult=(1, 2, 4, 4),
    num_res_blocks=(2, 2, 2, 2),
    transformer_depth=(0, 0, 4, 4, 4, 4, 0, 0),
    transformer_depth_middle=4,
    transformer_depth_output=(0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0),
    context_dim=1280,
    num_heads=-1,
    num_head_channels=64,
    use_linear_in_transformer=True,
    adm_in_channels=2560,
)
UNetConfig.SD15 = SD15
UNetConfig.SD21 = SD21
UNetConfig.SDXL = SDXL
UNetConfig.SDXL_REFINER = SDXL_REFINER


# --------------------------------------------------------------------------------------------- layers


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected timestep embedding, GroupNorm-SiLU-conv, plus the skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels),
            nn.SiLU(),
            nn.Identity(),  # dropout in training
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip tensor's size (2x for even sizes), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Block(nn.ModuleList):
    """One ``input_blocks``/``middle_block``/``output_blocks`` entry: layers run in order, each given
    what it needs (ResBlock the embedding, SpatialTransformer the context, Upsample the target size)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, size: tuple[int, int] | None = None,
                patches: PatchContext | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, patches)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------------------------- model


def _transformer(config: UNetConfig, width: int, depth: int, level: int | None = None) -> SpatialTransformer:
    """A SpatialTransformer at ``level`` (None: the middle block, whose first attention is always self-attention)."""
    heads, dim_head = config.heads(width)
    context_dim = config.context_dim or 0  # UNetConfig guarantees it is set when depth > 0
    context_attn1 = level is not None and config.self_attention_disabled(level)
    return SpatialTransformer(width, heads, dim_head, depth, context_dim, config.use_linear_in_transformer,
                              context_attn1)


def build_time_embeddings(config: UNetConfig) -> tuple[nn.Sequential, nn.Module | None]:
    """``time_embed`` (the timestep MLP) and ``label_emb`` (SDXL's adm MLP, a class-label table, or None)."""
    emb = config.model_channels * 4
    time_embed = nn.Sequential(nn.Linear(config.model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
    if config.num_classes is not None:
        return time_embed, nn.Embedding(config.num_classes, emb)
    if config.adm_in_channels is None:
        return time_embed, None
    label_emb = nn.Sequential(nn.Sequential(nn.Linear(config.adm_in_channels, emb), nn.SiLU(), nn.Linear(emb, emb)))
    return time_embed, label_emb


def build_input_blocks(config: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
    """``input_blocks`` and the channel width of each block's output (the skip widths), in order."""
    c = config
    emb = c.model_channels * 4
    blocks = nn.ModuleList([Block([nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)])])
    widths = [c.model_channels]
    width = c.model_channels
    depths = iter(c.transformer_depth)
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks[level]):
            layers: list[nn.Module] = [ResBlock(width, emb, c.model_channels * mult)]
            width = c.model_channels * mult
            depth = next(depths)
            if depth:
                layers.append(_transformer(c, width, depth, level))
            blocks.append(Block(layers))
            widths.append(width)
        if level != len(c.channel_mult) - 1:
            blocks.append(Block([Downsample(width)]))
            widths.append(width)
    return blocks, widths


def build_middle_block(config: UNetConfig, width: int) -> Block:
    """``middle_block``: ResBlock, (SpatialTransformer,) ResBlock at ``width`` channels."""
    emb = config.model_channels * 4
    middle: list[nn.Module] = [ResBlock(width, emb, width)]
    if config.transformer_depth_middle:
        middle.append(_transformer(config, width, config.transformer_depth_middle))
    middle.append(ResBlock(width, emb, width))
    return Block(middle)


def embed_timesteps(
    time_embed: nn.Module, label_emb: nn.Module | None, model_channels: int, timesteps: Tensor, y: Tensor | None
) -> Tensor:
    """The embedding every ResBlock receives: time MLP of the sinusoidal timesteps (+ adm MLP of ``y``, or
    the embedding of class label ``y``, ``[B]`` or ``[B, 1]`` of whole numbers in any dtype).

    Computed in ``time_embed``'s weight dtype (the sinusoids in fp32, then cast); weights stored in float8
    read in their compute dtype (engine/backend/cast_weights.py).
    """
    dtype = cast(nn.Linear, cast(nn.Sequential, time_embed)[0]).weight.dtype
    emb = time_embed(timestep_embedding(timesteps, model_channels).to(dtype))
    if isinstance(label_emb, nn.Embedding):
        if y is None:
            raise ValueError("this UNet (the SD x4 upscaler) needs y, the noise level class label")
        emb = emb + label_emb(y.reshape(-1).round().long()).to(dtype)
    elif label_emb is not None:
        if y is None:
            raise ValueError("this UNet (SDXL-style) needs y, the adm vector: see sdxl_adm()")
        emb = emb + label_emb(y.to(dtype))
    return emb


class UNetModel(nn.Module):
    """The LDM UNet. ``forward(x, timesteps, context, y=None, control=None)`` predicts eps (or v).

    Build it on the meta device to skip random initialisation when weights will be loaded (see the
    module docstring). All arithmetic follows the parameters' dtype: fp32 on CPU, fp16/bf16 on GPU;
    the timestep embedding is computed in fp32 and then cast.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        emb = c.model_channels * 4
        self.time_embed, label_emb = build_time_embeddings(c)
        if label_emb is not None:
            self.label_emb = label_emb
        self.input_blocks, widths = build_input_blocks(c)
        width = widths[-1]
        self.middle_block = build_middle_block(c, width)

        self.output_blocks = nn.ModuleList()
        depths = iter(c.transformer_depth_output)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks[level] + 1):
                layers: list[nn.Module] = [ResBlock(width + widths.pop(), emb, c.model_channels * mult)]
                width = c.model_channels * mult
                depth = next(depths)
                if depth:
                    layers.append(_transformer(c, width, depth, level))
                if level and i == c.num_res_blocks[level]:
                    layers.append(Upsample(width))
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(32, width), nn.SiLU(), nn.Conv2d(c.model_channels, c.out_channels, 3, padding=1)
        )

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], prefix: str = "", config: UNetConfig | None = None
    ) -> UNetModel:
        """Build on the meta device and adopt ``state_dict``'s tensors as the parameters (no copy).

        Keys must start with ``prefix``; other keys are ignored. The tensors keep their device and
        dtype: call ``.to(device, dtype)`` afterwards (or use :func:`load_weights` to convert one
        tensor at a time).
        """
        config = config or UNetConfig.from_state_dict(state_dict, prefix)
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(weights, strict=True, assign=True)
        return model.requires_grad_(False).eval()

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None,
        y: Tensor | None = None,
        control: Mapping[str, Sequence[Tensor | None]] | None = None,
        patches: PatchContext | None = None,
    ) -> Tensor:
        """Predict the model output for latents ``x`` ``[B, C, H, W]`` at ``timesteps`` ``[B]``.

        ``context`` is the text conditioning ``[B, T, context_dim]``; ``y`` the SDXL adm vector
        ``[B, adm_in_channels]`` (see :func:`sdxl_adm`). ``control`` holds ComfyUI-style residuals:
        ``"input"`` entries are added after each input block, ``"middle"`` after the middle block and
        ``"output"`` to each skip tensor as it is taken for an output block. As in ComfyUI each list is
        consumed from its end in the order the blocks run (so the last ``"output"`` entry goes with the
        deepest skip, the last ``"input"`` entry with the first input block); None entries are
        skipped, and the lists are not modified. ``patches`` runs the patch points (module docstring).
        """
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        has_label = self.config.adm_in_channels is not None or self.config.num_classes is not None
        label_emb = self.label_emb if has_label else None
        emb = embed_timesteps(self.time_embed, label_emb, self.config.model_channels, timesteps, y)
        if context is not None:
            context = context.to(dtype)
        elif self.config.context_dim is not None:
            raise ValueError("this UNet has cross-attention: pass context, the text conditioning [B, T, context_dim]")
        control = control or {}
        inputs = _Residuals(control.get("input"))
        middles = _Residuals(control.get("middle"))
        outputs = _Residuals(control.get("output"))

        p = patches
        skips: list[Tensor] = []
        h = x.to(dtype)
        for index, block in enumerate(self.input_blocks):
            if p is not None:
                p.block = ("input", index)
            h = inputs.add(block(h, emb, context, patches=p))
            if p is not None:
                h = p.run("input_block_patch", h)
            skips.append(h)
            if p is not None:
                h = p.run("input_block_patch_after_skip", h)
        if p is not None:
            p.block = ("middle", 0)
        h = middles.add(self.middle_block(h, emb, context, patches=p))
        if p is not None:
            h = p.run("middle_block_patch", h)
        for index, block in enumerate(self.output_blocks):
            skip = outputs.add(skips.pop())
            if p is not None:
                p.block = ("output", index)
                for fn in p.get("output_block_patch"):
                    h, skip = fn(h, skip, p)
            h = torch.cat([h, skip], dim=1)
            size = (skips[-1].shape[2], skips[-1].shape[3]) if skips else None
            h = block(h, emb, context, size, patches=p)
        return self.out(h)


class _Residuals:
    """Walks a control residual list from its end without modifying it."""

    def __init__(self, residuals: Sequence[Tensor | None] | None) -> None:
        self.residuals = residuals or ()
        self.next = len(self.residuals) - 1

    def add(self, h: Tensor) -> Tensor:
        if self.next < 0:
            return h
        residual = self.residuals[self.next]
        self.next -= 1
        if residual is None:
            return h
        return h + residual.to(h.dtype)
