"""Cost of the model add-on nodes at full size: Loom against an independent reference, same weights, same run.

Every model has random weights (the speed of a network does not depend on its values), fp32, on the CPU.
Each entry of ``cases`` gives Loom's seconds, the reference's seconds and ``ratio`` (loom / reference), each
the best of ``--repeats`` runs taken alternately (ABBA) after one warm-up run of each path. Where both sides
compute the same thing, ``max_abs_diff`` / ``rel_diff`` (max |loom - reference| over max |reference|, the
worst output) show that the work compared is equal; where the reference is the plain UNet forward,
``output_change_rel`` shows that the add-on changed the prediction (it ran).

* ``t2i_adapter``: ``engine.backend.t2i_adapter.T2IAdapter.forward`` (the file written in the original
  TencentARC layout, read by ``engine.models.t2i_adapter_load``) against diffusers' ``T2IAdapter`` forward:
  the SD1 full adapter (320/640/1280/1280, 2 blocks per stage, 8x unshuffle) and the SD1 light adapter
  (320/640/1280, 4 blocks, the color adapter's size) on a 512x512 hint, the SDXL full adapter (16x
  unshuffle) on a 1024x1024 hint; batch 1.
* ``clip_vision``: ViT-L/14 (OpenAI's size: width 1024, 24 layers, 16 heads, patch 14, 224px, projection
  768), one 224x224 IMAGE: Loom's ``preprocess`` (no resize at this size: 8-bit rounding, normalisation)
  + ``encode`` on the tower ``load_clip_vision`` read from a file, against transformers'
  ``CLIPVisionModelWithProjection`` forward (``output_hidden_states``, as ``encode``) on the preprocessed pixels.
* ``hypernetwork``: one SD1.5 UNet evaluation through ``UNetApply`` (batch 2: uncond + cond, 64x64 latent
  = 512px, 77 tokens) with an AUTOMATIC1111 hypernetwork (widths 320, 640, 768, 1280, layer structure
  [1, 2, 1], linear activation, no layer norm: A1111's defaults; a .safetensors file read by
  ``read_hypernetwork``, installed by ``HypernetworkPatch``) against the same call without it.
* ``gligen``: the same UNet call with GLIGEN (position net and a gated self-attention fuser for every SD1
  transformer block, built from diffusers' GLIGEN modules, written in the GLIGEN file layout, read by
  ``read_gligen``) and 3 boxes on the cond entry (``prepare`` + ``UNetApply``, the objects built per call as
  in sampling), against the same call without it; ``uncond_row_unchanged`` checks the other row.
* ``x4_upscaler``: one UNet evaluation of the SD x4 upscaler (diffusers' config of
  stabilityai/stable-diffusion-x4-upscaler: 7 input channels, 256/512/512/1024, 2 blocks per level, no
  attention at level 0, context-only first attention at levels 1 and 2, self-attention at level 3 and in the
  middle, 8 heads everywhere, context 1024, linear projections, 1000 noise-level classes), batch 2 (CFG) at
  a ``--x4-latent`` latent (default 128: a 128px image upscaled to 512px), 77 tokens, against diffusers'
  ``UNetConfig.from_state_dict`` infers from them (8 heads, the original's: checked before timing).
* ``taesd_preview``: decoding one 64x64 SD1 latent (model space) with Loom's TAESD (``load_tiny_vae`` on a
  taesd_decoder file in ComfyUI's layout) against diffusers' ``AutoencoderTiny`` decoder; also the whole
  TAESD preview (decode + JPEG, ``taesd_preview_jpeg_s``) and the latent2rgb preview (``preview_jpeg``,
  ``latent2rgb_preview_ms``, best of at least 5) that previews fall back to.

``--quick`` runs every case on tiny configurations (a smoke run of about 15 s, not a measurement).

    python bench/addons.py [--cases t2i_adapter,clip_vision,...] [--repeats 1] [--x4-latent 128] [--quick] \\
        > /tmp/bench_addons.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._timing import best_alternating, seconds  # noqa: E402  (after the path setup)

log = logging.getLogger("bench.addons")

CASES = ("t2i_adapter", "clip_vision", "hypernetwork", "gligen", "x4_upscaler", "taesd_preview")
INIT_STD = 0.02
TOKENS = 77
TIMESTEP = 500.0
#: GLIGEN boxes (h, w, y, x) in latent pixels of a 64x64 latent, scaled to the latent used.
BOXES_64 = ((24, 20, 4, 6), (16, 30, 30, 28), (32, 32, 16, 16))


class Options(NamedTuple):
    quick: bool
    repeats: int
    x4_latent: int

    @property
    def sd_latent(self) -> int:
        """The SD1 latent side of the UNet cases (64 = 512px)."""
        return 16 if self.quick else 64


Entry = dict[str, Any]


# --------------------------------------------------------------------------------------------- timing


def _timed(loom: Callable[[], Any], reference: Callable[[], Any], repeats: int) -> tuple[Any, Any, float, float]:
    """One warm-up run of each (their outputs are returned for the comparison), then the best of ``repeats``
    runs of each, ABBA, all under inference mode."""
    with torch.inference_mode():
        loom_out = loom()
        reference_out = reference()
        loom_s, reference_s = best_alternating(loom, reference, repeats)
    return loom_out, reference_out, loom_s, reference_s


def _best(run: Callable[[], Any], repeats: int) -> float:
    """Best seconds of ``repeats`` runs after one warm-up, under inference mode."""
    with torch.inference_mode():
        run()
        return min(seconds(run) for _ in range(repeats))


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _difference(loom: Sequence[Tensor], reference: Sequence[Tensor]) -> dict[str, Any]:
    """``max_abs_diff`` over all outputs and ``rel_diff``, the worst output's max |diff| / max |reference|
    (both None when an output is not finite or a reference output is all zeros)."""
    if len(loom) != len(reference):
        raise ValueError(f"{len(loom)} outputs against the reference's {len(reference)}")
    if not _finite(*loom, *reference):
        return {"max_abs_diff": None, "rel_diff": None, "finite": False}
    worst, relative = 0.0, 0.0
    for ours, theirs in zip(loom, reference, strict=True):
        if ours.shape != theirs.shape:
            raise ValueError(f"output of shape {tuple(ours.shape)} against the reference's {tuple(theirs.shape)}")
        diff = float((ours.float() - theirs.float()).abs().max())
        scale = float(theirs.float().abs().max())
        if not scale:
            return {"max_abs_diff": None, "rel_diff": None, "finite": True}
        worst, relative = max(worst, diff), max(relative, diff / scale)
    return {"max_abs_diff": worst, "rel_diff": relative, "finite": True}


def _change(patched: Tensor, plain: Tensor) -> float | None:
    """How much an add-on changed a prediction: max |patched - plain| / max |plain| (None if not finite)."""
    if not _finite(patched, plain):
        return None
    return float((patched - plain).abs().max() / plain.abs().max())


def _entry(case: str, config: str, loom: str, loom_s: float, reference: str, reference_s: float,
           **extra: Any) -> Entry:
    return {"case": case, "config": config, "loom": loom, "loom_s": round(loom_s, 3), "reference": reference,
            "reference_s": round(reference_s, 3), "ratio": loom_s / reference_s, **extra}


def _frozen(module: Any) -> Any:
    """A reference model in eval mode without gradients (typed Any: diffusers' classes confuse mypy)."""
    return module.eval().requires_grad_(False)


def _save(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------- T2I-Adapter


class AdapterSize(NamedTuple):
    label: str
    adapter_type: str
    channels: tuple[int, ...]
    blocks: int
    factor: int
    hint: int


def adapter_sizes(quick: bool) -> list[AdapterSize]:
    """TencentARC's published sizes (SD1 full and light, SDXL full), or tiny ones."""
    if quick:
        return [AdapterSize("SD1 full (tiny)", "full_adapter", (8, 16, 32, 32), 2, 8, 64),
                AdapterSize("SD1 light (tiny)", "light_adapter", (8, 16, 32), 2, 8, 64),
                AdapterSize("SDXL full (tiny)", "full_adapter_xl", (8, 16, 32, 32), 2, 16, 64)]
    return [AdapterSize("SD1 full", "full_adapter", (320, 640, 1280, 1280), 2, 8, 512),
            AdapterSize("SD1 light", "light_adapter", (320, 640, 1280), 4, 8, 512),
            AdapterSize("SDXL full", "full_adapter_xl", (320, 640, 1280, 1280), 2, 16, 1024)]


def original_adapter_layout(state: dict[str, Tensor], light: bool, blocks: int) -> dict[str, Tensor]:
    """diffusers' T2IAdapter weights under the original (TencentARC) names: a full adapter's
    ``adapter.body.I.resnets.J`` is ``body.{blocks I + J}`` (its ``in_conv`` goes with the stage's first
    block), a light one's ``resnets`` are ``body``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body" and light:
            if parts[2] == "resnets":
                parts[2] = "body"
        elif parts[0] == "body":
            stage = int(parts[1])
            if parts[2] == "resnets":
                parts = ["body", str(blocks * stage + int(parts[3])), *parts[4:]]
            else:
                parts = ["body", str(blocks * stage), *parts[2:]]
        out[".".join(parts)] = value
    return out


def _adapter_entry(size: AdapterSize, folder: Path, repeats: int) -> Entry:
    from diffusers import T2IAdapter as DiffusersAdapter

    from engine.models.t2i_adapter_load import load_t2i_adapter

    torch.manual_seed(0)
    reference = _frozen(DiffusersAdapter(in_channels=3, channels=list(size.channels), num_res_blocks=size.blocks,
                                         downscale_factor=size.factor, adapter_type=size.adapter_type))
    light = size.adapter_type == "light_adapter"
    path = _save(original_adapter_layout(reference.state_dict(), light, size.blocks), folder / "adapter.safetensors")
    ours = load_t2i_adapter(path, device=torch.device("cpu"), dtype=torch.float32)
    hint = torch.rand(1, 3, size.hint, size.hint, generator=torch.Generator().manual_seed(1))
    loom_out, reference_out, loom_s, reference_s = _timed(lambda: ours(hint), lambda: reference(hint), repeats)
    config = (f"{size.label}: {size.adapter_type}, channels {list(size.channels)}, {size.blocks} blocks/stage, "
              f"{size.factor}x unshuffle, {size.hint}x{size.hint} hint, batch 1")
    return _entry("t2i_adapter", config, "T2IAdapter.forward (load_t2i_adapter, original layout)", loom_s,
                  "diffusers T2IAdapter", reference_s, **_difference(loom_out, reference_out),
                  features=[list(t.shape[1:]) for t in loom_out])


def case_t2i_adapter(opts: Options) -> list[Entry]:
    entries = []
    for size in adapter_sizes(opts.quick):
        log.info("t2i_adapter: %s", size.label)
        with tempfile.TemporaryDirectory() as folder:
            entries.append(_adapter_entry(size, Path(folder), opts.repeats))
        gc.collect()
    return entries


# ------------------------------------------------------------------------------------------- CLIP vision


def clip_vision_config(quick: bool) -> Any:
    """OpenAI's ViT-L/14 vision tower (or a tiny one) as a transformers ``CLIPVisionConfig``."""
    from transformers import CLIPVisionConfig

    if quick:
        return CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=16,
                                patch_size=8, image_size=32, projection_dim=48, hidden_act="gelu",
                                layer_norm_eps=1e-5)
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)


def case_clip_vision(opts: Options) -> list[Entry]:
    from transformers import CLIPVisionModelWithProjection

    from engine.backend.clip_vision import encode, preprocess
    from engine.models.clip_vision import load_clip_vision
    from engine.models.handles import FileRef

    config = clip_vision_config(opts.quick)
    torch.manual_seed(0)
    reference = _frozen(CLIPVisionModelWithProjection(config))
    size = int(config.image_size)
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1))
    pixels = preprocess(image, size=size, crop=True)
    with tempfile.TemporaryDirectory() as folder:
        state = {k: v for k, v in reference.state_dict().items() if not k.endswith("position_ids")}
        path = _save(state, Path(folder) / "clip_vision.safetensors")
        model, label = load_clip_vision(FileRef.of(path))

        def loom() -> Any:
            return encode(model, preprocess(image, size=size, crop=True))

        def theirs() -> Any:
            return reference(pixel_values=pixels, output_hidden_states=True)

        ours, expected, loom_s, reference_s = _timed(loom, theirs, opts.repeats)
    outputs = (ours.image_embeds, ours.last_hidden_state, ours.penultimate_hidden_states)
    expected_outputs = (expected.image_embeds, expected.last_hidden_state, expected.hidden_states[-2])
    return [_entry("clip_vision", f"{label}, one {size}x{size} image, batch 1",
                   "preprocess + encode (load_clip_vision); Loom's side includes the preprocessing", loom_s,
                   "transformers CLIPVisionModelWithProjection (output_hidden_states)", reference_s,
                   **_difference(outputs, expected_outputs),
                   attention=[getattr(model.config, "_attn_implementation", None),
                              getattr(reference.config, "_attn_implementation", None)])]


# ------------------------------------------------------------------------------- SD1 UNet (add-on patches)


def sd_unet_config(quick: bool) -> Any:
    from engine.backend.unet import UNetConfig

    if quick:
        return UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                          transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=24,
                          num_heads=4)
    return UNetConfig.SD15


def random_unet(config: Any, seed: int = 0) -> Any:
    """Loom's UNetModel of ``config`` filled with N(0, 0.02), frozen, in eval mode, on the CPU."""
    from engine.backend.unet import UNetModel

    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet = UNetModel(config)
    unet = unet.to_empty(device="cpu").requires_grad_(False).eval()
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0, INIT_STD, generator=generator)
    return unet


class UNetCall(NamedTuple):
    """The inputs of one CFG model call: latent [2, 4, L, L], timesteps [2], one context per entry."""

    x: Tensor
    timestep: Tensor
    uncond: Tensor
    cond: Tensor


def unet_call(config: Any, latent: int) -> UNetCall:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, config.in_channels, latent, latent, generator=generator)
    uncond, cond = (torch.randn(1, TOKENS, config.context_dim, generator=generator) for _ in range(2))
    return UNetCall(x, torch.full((2,), TIMESTEP), uncond, cond)


def _unet_label(config: Any, latent: int) -> str:
    from engine.backend.unet import UNetConfig

    name = "SD1.5 UNet" if config == UNetConfig.SD15 else "tiny UNet"
    return f"{name}, batch 2 (uncond + cond), {latent}x{latent} latent ({latent * 8}px), {TOKENS} tokens"


def hypernetwork_file(path: Path, dims: Iterable[int], structure: Sequence[float] = (1, 2, 1),
                      seed: int = 3) -> Path:
    """An A1111 hypernetwork in the flat .safetensors layout (``{dim}.{0|1}.linear.N.weight``, metadata as
    strings): per width a key and a value MLP of Linears (linear activation, no layer norm, no dropout, so the
    Sequential indices are 0, 1, ...), weights N(0, 0.01) as A1111's "Normal" initialisation."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Tensor] = {}
    for dim in dims:
        for which in (0, 1):
            for index, (a, b) in enumerate(zip(structure, structure[1:], strict=False)):
                shape = (int(dim * b), int(dim * a))
                tensors[f"{dim}.{which}.linear.{index}.weight"] = torch.randn(shape, generator=generator) * 0.01
                tensors[f"{dim}.{which}.linear.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    metadata = {"name": "bench-hn", "layer_structure": json.dumps(list(structure)), "activation_func": "linear",
                "is_layer_norm": "false", "activate_output": "false", "use_dropout": "false",
                "last_layer_dropout": "false", "weight_initialization": "Normal"}
    return _save(tensors, path, metadata)


def _attention_widths(config: Any) -> list[int]:
    """The key/value input widths a hypernetwork sees in ``config``'s UNet: the levels' widths with
    attention and the context width."""
    with_attention = {config.model_channels * mult for level, mult in enumerate(config.channel_mult)
                      if any(config.transformer_depth[sum(config.num_res_blocks[:level]):
                                                      sum(config.num_res_blocks[:level + 1])])}
    return sorted(with_attention | {int(config.context_dim)})


def case_hypernetwork(opts: Options) -> list[Entry]:
    from engine.backend.conditioning import CondSpec, UNetApply
    from engine.backend.guidance import gather_hooks
    from engine.backend.hypernetwork import HypernetworkPatch
    from engine.models.handles import FileRef
    from engine.models.hypernetwork import read_hypernetwork

    config = sd_unet_config(opts.quick)
    unet = random_unet(config)
    call = unet_call(config, opts.sd_latent)
    dims = _attention_widths(config)
    with tempfile.TemporaryDirectory() as folder:
        hypernetwork = read_hypernetwork(FileRef.of(hypernetwork_file(Path(folder) / "bench-hn.safetensors", dims)))
    hooks = gather_hooks([HypernetworkPatch(hypernetwork, 1.0)], None)
    patched, plain = UNetApply(unet, patches=hooks.unet_patches), UNetApply(unet)
    conds = [[CondSpec(context=call.uncond)], [CondSpec(context=call.cond)]]
    out, reference_out, loom_s, reference_s = _timed(lambda: patched(call.x, call.timestep, conds),
                                                     lambda: plain(call.x, call.timestep, conds), opts.repeats)
    config_text = (f"{_unet_label(config, opts.sd_latent)}; hypernetwork widths {dims}, layer structure [1, 2, 1], "
                   "linear activation, strength 1")
    return [_entry("hypernetwork", config_text, "UNetApply with HypernetworkPatch (attn1_patch + attn2_patch)",
                   loom_s, "the plain UNet call (UNetApply, no patch)", reference_s,
                   output_change_rel=_change(out, reference_out),
                   hypernetwork_mib=round(hypernetwork.nbytes / 2**20, 1))]


_ATTN1 = re.compile(r"((?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+\.transformer_blocks\.\d+)"
                    r"\.attn1\.to_q\.weight$")


def transformer_blocks(unet: nn.Module) -> dict[str, int]:
    """Every transformer block of a UNet (``input_blocks.1.1.transformer_blocks.0``) -> its width."""
    found = {}
    for key, tensor in unet.state_dict().items():
        match = _ATTN1.search(key)
        if match is not None:
            found[match[1]] = int(tensor.shape[0])
    return found


def gligen_state(blocks: dict[str, int], text_dim: int, object_dim: int, alpha: float = 0.5) -> dict[str, Tensor]:
    """A GLIGEN text-box file's tensors from diffusers' own modules (random weights): ``position_net.*`` and a
    ``model.diffusion_model.<block>.fuser.*`` gated self-attention for each of ``blocks``."""
    from diffusers.models.attention import GatedSelfAttentionDense
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    from engine.backend.gligen import heads_for

    torch.manual_seed(4)
    net = GLIGENTextBoundingboxProjection(positive_len=text_dim, out_dim=object_dim, feature_type="text-only")
    state = {f"position_net.{k}": v for k, v in net.state_dict().items()}
    for block, width in sorted(blocks.items()):
        heads = heads_for(object_dim, width)
        fuser: Any = GatedSelfAttentionDense(width, object_dim, heads, width // heads)
        with torch.no_grad():  # diffusers starts the gates at 0 (no effect); trained files have them open
            fuser.alpha_attn.fill_(alpha)
            fuser.alpha_dense.fill_(alpha)
        state.update({f"model.diffusion_model.{block}.fuser.{k}": v for k, v in fuser.state_dict().items()})
    return state


def case_gligen(opts: Options) -> list[Entry]:
    from engine.backend.conditioning import CondSpec, UNetApply, prepare
    from engine.models.gligen import read_gligen
    from engine.models.handles import FileRef

    config = sd_unet_config(opts.quick)
    unet = random_unet(config)
    call = unet_call(config, opts.sd_latent)
    blocks = transformer_blocks(unet)
    text_dim = int(config.context_dim)
    with tempfile.TemporaryDirectory() as folder:
        path = _save(gligen_state(blocks, text_dim, text_dim), Path(folder) / "gligen.safetensors")
        model = read_gligen(FileRef.of(path))
    latent = opts.sd_latent
    generator = torch.Generator().manual_seed(5)
    boxes = [(torch.randn(1, text_dim, generator=generator), *(max(1, v * latent // 64) for v in box))
             for box in BOXES_64]
    extras = {"gligen": ("position", model, boxes)}
    cond = prepare([[call.cond, extras]], tuple(call.x[:1].shape), device=torch.device("cpu"), dtype=torch.float32)
    conds = [[CondSpec(context=call.uncond)], cond]
    plain_conds = [conds[0], [CondSpec(context=call.cond)]]
    apply = UNetApply(unet)
    out, reference_out, loom_s, reference_s = _timed(lambda: apply(call.x, call.timestep, conds),
                                                     lambda: apply(call.x, call.timestep, plain_conds), opts.repeats)
    config_text = (f"{_unet_label(config, latent)}; GLIGEN with {len(blocks)} fusers and the position net, "
                   f"{len(boxes)} boxes on the cond entry")
    return [_entry("gligen", config_text, "UNetApply with the GLIGEN middle_patch (cond rows)", loom_s,
                   "the plain UNet call (UNetApply, no GLIGEN)", reference_s,
                   output_change_rel=_change(out[1], reference_out[1]),
                   uncond_row_unchanged=bool(torch.equal(out[0], reference_out[0])), fusers=len(model.fusers))]


# ------------------------------------------------------------------------------------------ x4 upscaler


def x4_diffusers_config(quick: bool) -> dict[str, Any]:
    """diffusers' UNet2DConditionModel config of stabilityai/stable-diffusion-x4-upscaler (or a tiny one of
    the same shape). ``attention_head_dim`` is, in diffusers' naming, the number of heads (8)."""
    config: dict[str, Any] = {
        "in_channels": 7, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (256, 512, 512, 1024),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "only_cross_attention": (True, True, True, False), "cross_attention_dim": 1024, "attention_head_dim": 8,
        "use_linear_projection": True, "num_class_embeds": 1000, "norm_num_groups": 32, "sample_size": 128,
    }
    if quick:
        config |= {"block_out_channels": (32, 64, 64, 128), "layers_per_block": 1, "cross_attention_dim": 24}
    return config


def case_x4_upscaler(opts: Options) -> list[Entry]:
    from diffusers import UNet2DConditionModel

    from engine.backend.unet import UNetConfig, UNetModel
    from engine.models.convert_diffusers import diffusers_unet_to_ldm

    settings = x4_diffusers_config(opts.quick)
    torch.manual_seed(0)
    reference = _frozen(UNet2DConditionModel(**settings))
    weights = diffusers_unet_to_ldm(reference.state_dict())
    config = UNetConfig.from_state_dict(weights)
    heads = int(settings["attention_head_dim"])
    if (config.num_heads, config.num_head_channels) != (heads, -1):
        raise RuntimeError(f"the x4 upscaler has {heads} heads everywhere, but Loom inferred {config}")
    with torch.device("meta"):
        unet = UNetModel(config)
    unet.load_state_dict(weights, strict=True, assign=True)  # the same tensors as diffusers' model
    unet = unet.requires_grad_(False).eval()
    del weights
    latent = 16 if opts.quick else opts.x4_latent
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, latent, latent, generator=generator)
    context = torch.randn(2, TOKENS, int(settings["cross_attention_dim"]), generator=generator)
    timestep = torch.full((2,), TIMESTEP)
    labels = torch.tensor([20, 20])
    out, expected, loom_s, reference_s = _timed(
        lambda: unet(x, timestep, context, y=labels.float()[:, None]),
        lambda: reference(x, timestep, encoder_hidden_states=context, class_labels=labels).sample, opts.repeats)
    params = sum(p.numel() for p in unet.parameters())
    config_text = (f"SD x4 upscaler UNet{' (tiny)' if opts.quick else ''}, {params / 1e6:.0f}M parameters, batch 2 "
                   f"(CFG), {latent}x{latent} latent ({latent}px image to {latent * 4}px), {TOKENS} tokens, "
                   f"noise-level label 20")
    return [_entry("x4_upscaler", config_text, "UNetModel.forward (diffusers_unet_to_ldm weights, inferred config)",
                   loom_s, "diffusers UNet2DConditionModel", reference_s, **_difference([out], [expected]))]


# ------------------------------------------------------------------------------------------- TAESD preview


def taesd_decoder_layout(reference: nn.Module) -> dict[str, Tensor]:
    """diffusers' AutoencoderTiny decoder weights under TAESD's bare index keys (taesd_decoder): the layers
    shift by one (TAESD's Clamp is index 0, a line of diffusers' forward)."""
    out = {}
    for key, value in reference.state_dict().items():
        part, _, index, rest = key.split(".", 3)
        if part == "decoder":
            out[f"{int(index) + 1}.{rest}"] = value
    return out


def case_taesd_preview(opts: Options) -> list[Entry]:
    from diffusers import AutoencoderTiny

    from engine.backend.preview import decoded_jpeg, preview_jpeg
    from engine.models.taesd_load import load_tiny_vae

    width = 16 if opts.quick else 64
    latent = 8 if opts.quick else 64
    torch.manual_seed(0)
    reference = _frozen(AutoencoderTiny(encoder_block_out_channels=(width,) * 4,
                                        decoder_block_out_channels=(width,) * 4, latent_channels=4))
    with tempfile.TemporaryDirectory() as folder:
        path = _save(taesd_decoder_layout(reference), Path(folder) / "taesd_decoder.safetensors")
        tiny = load_tiny_vae("taesd", path, None, device=torch.device("cpu"), dtype=torch.float32)
    samples = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(7))
    out, expected, loom_s, reference_s = _timed(lambda: tiny.decode_model_space(samples),
                                                lambda: reference.decoder(samples), opts.repeats)
    preview_s = _best(lambda: decoded_jpeg(tiny.decode_model_space(samples)), opts.repeats)
    latent2rgb_s = _best(lambda: preview_jpeg(samples, "sd1"), max(opts.repeats, 5))
    return [_entry("taesd_preview", f"TAESD (width {width}), one {latent}x{latent} SD1 latent -> "
                   f"{latent * 8}x{latent * 8}", "TinyAutoencoder.decode_model_space (load_tiny_vae, taesd_decoder)",
                   loom_s, "diffusers AutoencoderTiny.decoder", reference_s, **_difference([out], [expected]),
                   taesd_preview_jpeg_s=round(preview_s, 3), latent2rgb_preview_ms=round(latent2rgb_s * 1000, 2))]


# ------------------------------------------------------------------------------------------------- main

RUNNERS: dict[str, Callable[[Options], list[Entry]]] = {
    "t2i_adapter": case_t2i_adapter,
    "clip_vision": case_clip_vision,
    "hypernetwork": case_hypernetwork,
    "gligen": case_gligen,
    "x4_upscaler": case_x4_upscaler,
    "taesd_preview": case_taesd_preview,
}


def run_case(name: str, opts: Options) -> list[Entry]:
    """One case's entries; the models it built and the add-on caches are freed afterwards."""
    from engine.models.addon_caches import clear_addon_caches

    log.info("case %s", name)
    start = time.perf_counter()
    try:
        return RUNNERS[name](opts)
    finally:
        clear_addon_caches()
        gc.collect()
        log.info("case %s done in %.1f s", name, time.perf_counter() - start)


def parse_args(argv: list[str] | None) -> tuple[list[str], Options]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated (default all: {','.join(CASES)})")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each path; the best counts (default 1)")
    parser.add_argument("--x4-latent", type=int, default=128, help="x4 upscaler latent side (default 128)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations: a smoke run of every case")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in RUNNERS]
    if unknown or not cases:
        parser.error(f"unknown case(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(CASES)}")
    if args.repeats < 1 or args.x4_latent < 8 or args.x4_latent % 8:
        parser.error("--repeats must be >= 1 and --x4-latent a multiple of 8")
    return cases, Options(quick=args.quick, repeats=args.repeats, x4_latent=args.x4_latent)


def main(argv: list[str] | None = None) -> int:
    cases, opts = parse_args(argv)
    import diffusers
    import transformers

    entries = [entry for name in cases for entry in run_case(name, opts)]
    result = {"bench": "addons", "quick": opts.quick, "device": "cpu", "dtype": "float32", "torch": torch.__version__,
              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(), "repeats": opts.repeats,
              "cases": entries}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    raise SystemExit(main())
