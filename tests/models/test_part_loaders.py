"""Model parts stored on their own load to exactly the checkpoint's modules: UNet files (bare keys, the
checkpoint prefix, diffusers' names), text-encoder files (transformers' and OpenCLIP's layouts, SDXL's pair),
VAE files and diffusers folders; families recognised from each part's keys; float8 weight storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import ModelError
from engine.models.families import ModelFamily
from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
from engine.models.inspection import checkpoint_family
from engine.models.loaders import VAE_PREFIX
from engine.models.manager import ModelManager
from engine.sdk import model_parts
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.models.part_files import split_checkpoint, write_diffusers_folder

DEMO = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "tiny-shapes.safetensors"
PROMPT = "a red square on a blue background"


@pytest.fixture(scope="module")
def demo_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not DEMO.is_file():
        pytest.skip("the demo model models/checkpoints/tiny-shapes.safetensors is missing")
    root = tmp_path_factory.mktemp("parts")
    files = split_checkpoint(DEMO, root / "split")
    files["diffusers"] = write_diffusers_folder(DEMO, root / "diffusers" / "tiny-shapes")
    return files


def _checkpoint(path: Path) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    family, ref = checkpoint_family(path), FileRef.of(path)
    return ModelHandle(ref, family), ClipHandle(ref, family), VaeHandle(ref, VAE_PREFIX)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return set(left) == set(right) and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("name", ["unet_bare", "unet_prefixed", "unet_diffusers"])
def test_unet_files_load_the_checkpoint_unet(demo_parts: dict[str, Path], name: str) -> None:
    model, _, _ = _checkpoint(DEMO)
    part = model_parts.unet_handle(demo_parts[name], "UNETLoader unet_name")
    assert part.family == model.family
    assert part.unet_layout.naming == ("diffusers" if name == "unet_diffusers" else "ldm")
    manager = ModelManager("cpu")
    assert _same_state(manager.unet(part), manager.unet(model))


def test_clip_and_vae_files_equal_the_checkpoint_parts(demo_parts: dict[str, Path]) -> None:
    _, clip, vae = _checkpoint(DEMO)
    part = model_parts.clip_handle(demo_parts["clip0"], "CLIPLoader clip_name", "stable_diffusion")
    assert part.family.name == "sd1"
    manager = ModelManager("cpu")
    ours, theirs = manager.text_encoder(part).encode_text(PROMPT), manager.text_encoder(clip).encode_text(PROMPT)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    vae_file = VaeHandle(FileRef.of(demo_parts["vae"]), "")
    assert torch.equal(manager.vae(vae_file).decode(latent), manager.vae(vae).decode(latent))


def test_diffusers_folder_loads_all_three_parts(demo_parts: dict[str, Path]) -> None:
    model, clip, vae = _checkpoint(DEMO)
    d_model, d_clip, d_vae = model_parts.diffusers_handles(demo_parts["diffusers"], "DiffusersLoader model_path")
    assert d_model.family == model.family and d_model.unet_layout.naming == "diffusers"
    manager = ModelManager("cpu")
    assert _same_state(manager.unet(d_model), manager.unet(model))
    cond = manager.text_encoder(clip).encode_text(PROMPT)[0]
    assert torch.equal(manager.text_encoder(d_clip).encode_text(PROMPT)[0], cond)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    image = manager.vae(vae).decode(latent)
    assert torch.equal(manager.vae(d_vae).decode(latent), image)
    assert torch.equal(manager.vae(d_vae).encode(image * 2 - 1), manager.vae(vae).encode(image * 2 - 1))


def test_fp8_weights_take_a_quarter_and_compute_close(demo_parts: dict[str, Path]) -> None:
    """Stored bytes are exactly 1/4 of fp32's; one forward differs from fp32 by a relative L2 error under 5%
    (e4m3fn, measured 2.7%) and 10% (e5m2, 6.0%: one mantissa bit less)."""
    full = model_parts.unet_handle(demo_parts["unet_bare"], "UNETLoader unet_name")
    manager = ModelManager("cpu")
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999.0, 400.0])
    context = torch.randn(2, 77, 64, generator=generator)
    reference = manager.unet(full)(x, t, context)
    for weight_dtype, storage in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        fp8 = model_parts.unet_handle(demo_parts["unet_bare"], "UNETLoader unet_name", weight_dtype)
        unet = manager.unet(fp8)
        assert {p.dtype for p in unet.parameters()} == {storage}
        out = unet(x, t, context)
        assert out.dtype == torch.float32
        error = float((out - reference).norm() / reference.norm())
        assert 0 < error < (0.05 if weight_dtype == "fp8_e4m3fn" else 0.1), (weight_dtype, error)
    sizes = {(m["part"], m["dtype"]): m["bytes"] for m in manager.loaded()}
    assert sizes[("unet", "float32")] == 4 * sizes[("unet", "float8_e4m3fn")] == 4 * sizes[("unet", "float8_e5m2")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.mark.parametrize(("family", "v_prediction"), [("sd2", False), ("sd2", True), ("sdxl", False),
                                                       ("sdxl_refiner", False)])
def test_unet_family_from_the_unet_alone(tiny: Path, family: str, v_prediction: bool) -> None:
    path = build_checkpoint(tiny / f"{family}-{v_prediction}.safetensors", family, v_prediction=v_prediction)
    files = split_checkpoint(path, tiny / f"{family}-{v_prediction}", family)
    expected = checkpoint_family(path)
    for name in ("unet_bare", "unet_diffusers"):
        assert model_parts.unet_handle(files[name], "UNETLoader unet_name").family == expected


def test_sd2_openclip_file_equals_the_checkpoint_clip(tiny: Path) -> None:
    path = build_checkpoint(tiny / "sd2.safetensors", "sd2")
    files = split_checkpoint(path, tiny / "sd2", "sd2")
    part = model_parts.clip_handle(files["clip0"], "CLIPLoader clip_name", "stable_diffusion")
    assert part.family.name == "sd2"
    manager = ModelManager("cpu")
    ours = manager.text_encoder(part).encode_text(PROMPT)
    theirs = manager.text_encoder(_checkpoint(path)[1]).encode_text(PROMPT)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_sdxl_pair_equals_the_checkpoint_clip_in_either_order(tiny: Path) -> None:
    path = build_checkpoint(tiny / "sdxl.safetensors", "sdxl")
    files = split_checkpoint(path, tiny / "sdxl", "sdxl")
    manager = ModelManager("cpu")
    cond, pooled = manager.text_encoder(_checkpoint(path)[1]).encode_text(PROMPT)
    for pair in ((files["clip0"], files["clip1"]), (files["clip1"], files["clip0"])):
        part = model_parts.dual_clip_handle(*pair, ("DualCLIPLoader clip_name1", "DualCLIPLoader clip_name2"), "sdxl")
        assert part.family.name == "sdxl"
        ours = manager.text_encoder(part).encode_text(PROMPT)
        assert torch.equal(ours[0], cond) and torch.equal(ours[1], pooled)


def test_wrong_files_and_types_name_the_node_and_input(demo_parts: dict[str, Path], tiny: Path) -> None:
    with pytest.raises(ModelError, match=r"UNETLoader unet_name.*clip0.safetensors holds no SD1/SD2/SDXL UNet"):
        model_parts.unet_handle(demo_parts["clip0"], "UNETLoader unet_name")
    with pytest.raises(ModelError, match=r"CLIPLoader clip_name.*holds no CLIP text encoder"):
        model_parts.clip_handle(demo_parts["unet_bare"], "CLIPLoader clip_name", "stable_diffusion")
    with pytest.raises(ModelError, match=r"CLIPLoader clip_name.*holds 2 text encoders.*CheckpointLoaderSimple"):
        model_parts.clip_handle(build_checkpoint(tiny / "x.safetensors", "sdxl"), "CLIPLoader clip_name",
                                "stable_diffusion")
    with pytest.raises(ModelError, match=r"CLIPLoader type: 'mochi' text encoders are not supported yet"):
        model_parts.clip_handle(demo_parts["clip0"], "CLIPLoader clip_name", "mochi")
    with pytest.raises(ModelError, match=r"DualCLIPLoader type flux needs one CLIP-L and one T5-XXL"):
        model_parts.dual_clip_handle(demo_parts["clip0"], demo_parts["clip0"], ("DualCLIPLoader clip_name1",
                                     "DualCLIPLoader clip_name2"), "flux")
    with pytest.raises(ModelError, match=r"one CLIP-L and one OpenCLIP-bigG.*clip_name1"):
        model_parts.dual_clip_handle(demo_parts["clip0"], demo_parts["clip0"], ("DualCLIPLoader clip_name1",
                                     "DualCLIPLoader clip_name2"), "sdxl")
    with pytest.raises(ModelError, match=r"weight_dtype 'fp16'"):
        model_parts.unet_handle(demo_parts["unet_bare"], "UNETLoader unet_name", "fp16")


def test_part_handles_are_torch_free_values(demo_parts: dict[str, Path]) -> None:
    part = model_parts.unet_handle(demo_parts["unet_bare"], "UNETLoader unet_name", "fp8_e5m2")
    assert part.weight_dtype == "fp8_e5m2" and part.unet_layout.prefix == ""
    assert part == model_parts.unet_handle(demo_parts["unet_bare"], "UNETLoader unet_name", "fp8_e5m2")
    assert isinstance(part.family, ModelFamily) and hash(part)
