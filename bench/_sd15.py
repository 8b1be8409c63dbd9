"""A full-size SD1.5 checkpoint with random weights, and the same weights in diffusers' modules.

Used by the benchmarks (never by the tests): the speed of a network does not depend on its weights,
so a randomly initialised checkpoint with the exact SD1.5 structure measures what a real one would,
without downloading anything.

* :func:`ensure_checkpoint` builds Loom's ``UNetModel(UNetConfig.SD15)``, ``AutoencoderKL(VAEConfig.SD15)``
  and transformers' ``CLIPTextModel`` with the CLIP-L configuration, fills them from a seeded generator
  (``N(0, 0.02)`` for every weight and bias, norm weights 1 and norm biases 0), and writes them in fp16
  under the real prefixes (``model.diffusion_model.``, ``first_stage_model.``,
  ``cond_stage_model.transformer.text_model.``, plus the int64 ``position_ids`` real files carry).
  A marker file beside the checkpoint records what was built, so later runs reuse it.
* :func:`check_keys` compares the file's names, shapes and dtypes with the listing of a real SD1.5
  checkpoint (``tests/data/sd15-checkpoint-keys.tsv``).
* :func:`load_diffusers_unet` / :func:`load_diffusers_vae` build diffusers' ``UNet2DConditionModel`` /
  ``AutoencoderKL`` from the SD1.5 configuration written below (never from a hub) and load the
  checkpoint's tensors into them through the UNet renaming of engine/models/convert_diffusers.py
  and a VAE renaming derived from the two naming schemes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.models.convert_diffusers import diffusers_vae_key_to_ldm

log = logging.getLogger("bench.sd15")

CHECKPOINT_NAME = "sd15-random-fp16.safetensors"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
REFERENCE_KEYS = Path(__file__).resolve().parents[1] / "tests" / "data" / "sd15-checkpoint-keys.tsv"

#: Bump when the way the checkpoint is built changes, so cached files are rebuilt.
BUILD_VERSION = 1
INIT_STD = 0.02
SEED = 0

CLIP_L: dict[str, Any] = {
    "vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}

#: diffusers' SD1.5 UNet configuration (the published v1-5 unet/config.json values, written out).
DIFFUSERS_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
}

#: diffusers' SD1.5 VAE configuration.
DIFFUSERS_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512, "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "act_fn": "silu", "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}


# ------------------------------------------------------------------------------------ building


def _random_fill(module: nn.Module, prefix: str, generator: torch.Generator) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint key, fp16 tensor)`` for every parameter of ``module`` (built on the meta device)."""
    for module_name, sub in module.named_modules():
        is_norm = isinstance(sub, nn.GroupNorm | nn.LayerNorm)
        for leaf, param in sub.named_parameters(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if is_norm:
                value = torch.ones(param.shape) if leaf == "weight" else torch.zeros(param.shape)
            else:
                value = torch.randn(param.shape, generator=generator) * INIT_STD
            yield prefix + name, value.to(torch.float16)


def build_state_dict() -> dict[str, Tensor]:
    """The whole random SD1.5 checkpoint in fp16 (about 2.1 GB)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.backend.unet import UNetConfig, UNetModel
    from engine.backend.vae import AutoencoderKL, VAEConfig

    generator = torch.Generator().manual_seed(SEED)
    with torch.device("meta"):
        unet = UNetModel(UNetConfig.SD15)
        vae = AutoencoderKL(VAEConfig.SD15)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    state: dict[str, Tensor] = {}
    state.update(_random_fill(unet, UNET_PREFIX, generator))
    state.update(_random_fill(vae, VAE_PREFIX, generator))
    for key, value in _random_fill(clip, "", generator):
        # transformers 5 drops the ``text_model.`` level; checkpoints keep it.
        state[CLIP_PREFIX + key.removeprefix("text_model.")] = value
    state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(CLIP_L["max_position_embeddings"])[None]
    return state


def ensure_checkpoint(workdir: Path) -> Path:
    """``workdir/checkpoints/CHECKPOINT_NAME``, built unless a matching marker says it is already there."""
    from safetensors.torch import save_file

    path = workdir / "checkpoints" / CHECKPOINT_NAME
    marker = path.with_suffix(".json")
    if path.is_file() and marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("version") == BUILD_VERSION and info.get("bytes") == path.stat().st_size:
            log.info("reusing %s", path)
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log.info("building a random full-size SD1.5 checkpoint at %s (once; about a minute)", path)
    state = build_state_dict()
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "note": "random weights for benchmarks"})
    tmp.replace(path)
    marker.write_text(json.dumps({"version": BUILD_VERSION, "bytes": path.stat().st_size, "tensors": len(state),
                                  "seed": SEED, "init_std": INIT_STD}))
    log.info("built %d tensors (%.2f GB) in %.1f s", len(state), path.stat().st_size / 1e9,
             time.perf_counter() - start)
    return path


def read_reference() -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) of a real SD1.5 checkpoint."""
    rows: dict[str, tuple[str, tuple[int, ...]]] = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        if not line.strip():
            continue
        name, dtype, shape = line.split("\t")
        rows[name] = (dtype, tuple(int(d) for d in shape.strip().strip("[]").split(",") if d.strip()))
    return rows


def check_keys(path: Path) -> dict[str, Any]:
    """Compare the checkpoint's names, shapes and dtypes with the real SD1.5 listing."""
    from safetensors import safe_open

    if not REFERENCE_KEYS.is_file():
        return {"checked": False, "why": f"{REFERENCE_KEYS} not found"}
    reference = read_reference()
    with safe_open(str(path), framework="pt") as handle:
        ours = {k: (handle.get_slice(k).get_dtype(), tuple(handle.get_slice(k).get_shape())) for k in handle.keys()}
    missing = sorted(set(reference) - set(ours))
    extra = sorted(set(ours) - set(reference))
    wrong = sorted(k for k in set(ours) & set(reference) if ours[k] != reference[k])
    return {"checked": True, "keys": len(ours), "reference_keys": len(reference),
            "equal": not (missing or extra or wrong), "missing": missing[:10], "extra": extra[:10],
            "shape_or_dtype_differs": wrong[:10]}


# ------------------------------------------------------------------------------------ diffusers

def diffusers_unet_key_to_ldm(key: str) -> str:
    """The LDM name (without ``model.diffusion_model.``) of a diffusers SD1.5 UNet parameter."""
    from engine.backend.unet import UNetConfig
    from engine.models.convert_diffusers import UNetLayout, unet_names

    return unet_names(UNetLayout.from_config(UNetConfig.SD15)).to_ldm(key)


def _load_renamed(model: nn.Module, path: Path, prefix: str, rename: Any, dtype: torch.dtype) -> nn.Module:
    from safetensors import safe_open

    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key, target in model.state_dict().items():
            value = handle.get_tensor(prefix + rename(key)).to(dtype)
            tensors[key] = value.reshape(target.shape)  # VAE attention: [C, C, 1, 1] convs -> [C, C] linears
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def load_diffusers_unet(path: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers' SD1.5 UNet2DConditionModel holding the checkpoint's UNet weights."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel(**DIFFUSERS_UNET)
    return _load_renamed(model, path, UNET_PREFIX, diffusers_unet_key_to_ldm, dtype)


def load_diffusers_vae(path: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers' SD1.5 AutoencoderKL holding the checkpoint's VAE weights."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL(**DIFFUSERS_VAE)
    return _load_renamed(model, path, VAE_PREFIX, diffusers_vae_key_to_ldm, dtype)
