"""Loading SD3 / Flux text encoders (engine/models/flow_text_load.py, parts.flow_clip, sdk.model_parts) from real
files: a single-file checkpoint's ``text_encoders.*`` keys and ComfyUI's separate clip_l / clip_g / t5xxl files load
to the same encoder, through the model manager; files go in any order; wrong combinations and a missing T5
tokenizer are refused with messages naming the node, the input and what to do."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.flow_text import FlowTextEncoder
from engine.backend.t5_tokenizer import T5TokenizerNotFoundError
from engine.backend.text import TextEncoder
from engine.errors import ModelError
from engine.models import parts
from engine.models.families import ModelFamily
from engine.models.flow_text_load import load_flow_text_encoder, t5_compute_dtype
from engine.models.handles import ClipHandle, FileRef
from engine.models.manager import ModelManager
from engine.sdk import model_parts
from tests.backend.flow_text_files import (
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    T5_WIDTH,
    Towers,
    place_tokenizer,
    reference_towers,
    train_spiece,
    write_checkpoint,
    write_parts,
)

PROMPT = "a green dog runs in the park"
SD3 = ModelFamily("sd3", "flow", 16, 16)
FLUX = ModelFamily("flux", "flow", 16, 16)


@pytest.fixture(scope="module")
def towers() -> Towers:
    return reference_towers()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, towers: Towers) -> Path:
    """checkpoints/ (full, subsets) and text_encoders/ (the three files), each folder with its T5 tokenizer."""
    root = tmp_path_factory.mktemp("flow-text")
    spiece = train_spiece(root / "spiece")
    checkpoints = root / "checkpoints"
    write_checkpoint(checkpoints / "sd3_full.safetensors", towers)
    write_checkpoint(checkpoints / "sd3_no_t5.safetensors", towers, ("clip_l", "clip_g"))
    write_checkpoint(checkpoints / "flux_clip_l_only.safetensors", towers, ("clip_l",))
    write_checkpoint(checkpoints / "no_text.safetensors", towers, (), extra={"model.x": torch.zeros(2)})
    place_tokenizer(spiece, checkpoints)
    write_parts(root / "text_encoders", towers)
    place_tokenizer(spiece, root / "text_encoders")
    return root


def _encode(encoder: TextEncoder, text: str = PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    return encoder.encode(encoder.tokenize(text))


def _files(root: Path, *kinds: str) -> Any:
    names = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_tiny.safetensors"}
    return tuple(root / "text_encoders" / names[kind] for kind in kinds)


def _where(node: str, count: int) -> Any:
    return tuple(f"{node} clip_name{index} 'f{index}'" for index in range(1, count + 1))


def test_checkpoint_and_separate_files_load_the_same_encoder(root: Path) -> None:
    manager = ModelManager("cpu")
    checkpoint = manager.text_encoder(ClipHandle(FileRef.of(root / "checkpoints" / "sd3_full.safetensors"), SD3))
    assert isinstance(checkpoint, FlowTextEncoder) and list(checkpoint.towers) == ["clip_l", "clip_g", "t5xxl"]
    t5_file, clip_g_file, clip_l_file = _files(root, "t5xxl", "clip_g", "clip_l")
    triple = model_parts.triple_clip_handle((t5_file, clip_g_file, clip_l_file), _where("TripleCLIPLoader", 3))
    assert triple.family == SD3 and [s.tower for s in triple.sources] == [
        "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer."]
    from_files = manager.text_encoder(triple)
    assert from_files is not checkpoint
    cond, pooled = _encode(checkpoint)
    files_cond, files_pooled = _encode(from_files)
    assert cond.shape == (1, 154, T5_WIDTH)
    assert torch.equal(cond, files_cond) and torch.equal(pooled, files_pooled)


def test_files_in_any_order_share_one_handle(root: Path) -> None:
    clip_l, clip_g, t5 = _files(root, "clip_l", "clip_g", "t5xxl")
    where = _where("TripleCLIPLoader", 3)
    handles = {model_parts.triple_clip_handle(order, where) for order in
               ((clip_l, clip_g, t5), (t5, clip_l, clip_g), (clip_g, t5, clip_l))}
    assert len(handles) == 1  # same sources, same cache key: loaded once
    dual = model_parts.dual_clip_handle(t5, clip_l, _where("DualCLIPLoader", 2), "flux")
    assert dual.family == FLUX and [s.file.path for s in dual.sources] == [str(clip_l), str(t5)]


def test_checkpoint_subsets_load_what_they_hold(root: Path) -> None:
    encoder = load_flow_text_encoder(FileRef.of(root / "checkpoints" / "sd3_no_t5.safetensors"), "sd3")
    assert list(encoder.towers) == ["clip_l", "clip_g"]
    cond, pooled = _encode(encoder)
    assert cond.shape == (1, 77, 4096) and pooled.shape == (1, CLIP_L_WIDTH + 80)
    assert torch.count_nonzero(cond[..., CLIP_L_WIDTH + CLIP_G_WIDTH:]) == 0


def test_single_sd3_files(root: Path) -> None:
    """CLIPLoader type sd3: one file of any kind (a tiny transformers-layout tower alone reads as CLIP-L; real
    widths decide: test_real_widths_name_the_kind)."""
    for kind, placed in (("clip_l", "clip_l"), ("clip_g", "clip_l"), ("t5xxl", "t5xxl")):
        (path,) = _files(root, kind)
        handle = model_parts.clip_handle(path, "CLIPLoader clip_name 'x'", "sd3")
        assert handle.family == SD3 and handle.sources[0].tower == f"text_encoders.{placed}.transformer."
    (t5_file,) = _files(root, "t5xxl")
    encoder = ModelManager("cpu").text_encoder(model_parts.clip_handle(t5_file, "CLIPLoader clip_name 'x'", "sd3"))
    cond, pooled = _encode(encoder)
    assert cond.shape == (1, 77, T5_WIDTH) and pooled.shape == (1, 2048) and torch.count_nonzero(pooled) == 0


def test_no_text_encoders_and_incomplete_flux_are_refused(root: Path) -> None:
    with pytest.raises(ValueError, match=r"no_text.safetensors holds no SD3 text encoders.*TripleCLIPLoader"):
        load_flow_text_encoder(FileRef.of(root / "checkpoints" / "no_text.safetensors"), "sd3")
    with pytest.raises(ValueError, match=r"flux_clip_l_only.safetensors: Flux's text encoders are CLIP-L and T5-XXL; "
                                         r"got clip_l; load them with DualCLIPLoader type flux"):
        load_flow_text_encoder(FileRef.of(root / "checkpoints" / "flux_clip_l_only.safetensors"), "flux")


def test_missing_tokenizer_names_the_folders_searched(root: Path, tmp_path: Path) -> None:
    (t5_file,) = _files(root, "t5xxl")
    lonely = tmp_path / "encoders" / "t5xxl_fp16.safetensors"
    lonely.parent.mkdir()
    shutil.copyfile(t5_file, lonely)
    handle = model_parts.clip_handle(lonely, "CLIPLoader clip_name 'x'", "sd3")
    with pytest.raises(T5TokenizerNotFoundError) as caught:
        ModelManager("cpu").text_encoder(handle)
    message = str(caught.value)
    assert "never downloads" in message and "tokenizer.json" in message
    for folder in (lonely.parent / "t5xxl_fp16", lonely.parent / "t5_tokenizer", lonely.parent):
        assert f"{folder}/" in message


def test_wrong_combinations_name_the_node_and_inputs(root: Path) -> None:
    clip_l, clip_g, t5 = _files(root, "clip_l", "clip_g", "t5xxl")
    with pytest.raises(ModelError, match=r"^DualCLIPLoader type flux needs one CLIP-L and one T5-XXL text encoder; "
                                         r"clip_name1 'f1' is CLIP-L \(width 64\), clip_name2 'f2' is CLIP-G "
                                         r"\(width 96\)$"):
        model_parts.dual_clip_handle(clip_l, clip_g, _where("DualCLIPLoader", 2), "flux")
    with pytest.raises(ModelError, match=r"^DualCLIPLoader type sd3 needs different text encoders.*"
                                         r"clip_name1 'f1' is T5-XXL \(width 192\), clip_name2 'f2' is T5-XXL"):
        model_parts.dual_clip_handle(t5, t5, _where("DualCLIPLoader", 2), "sd3")
    with pytest.raises(ModelError, match=r"^TripleCLIPLoader needs one CLIP-L, one CLIP-G and one T5-XXL.*"
                                         r"clip_name3 'f3' is CLIP-L"):
        model_parts.triple_clip_handle((clip_l, t5, clip_l), _where("TripleCLIPLoader", 3))
    with pytest.raises(ModelError, match=r"^TripleCLIPLoader clip_name2 'f2': sd3_full.safetensors holds 3 text "
                                         r"encoders; it is a checkpoint"):
        model_parts.triple_clip_handle((clip_l, root / "checkpoints" / "sd3_full.safetensors", t5),
                                       _where("TripleCLIPLoader", 3))
    with pytest.raises(ModelError, match=r"^CLIPLoader clip_name 'x': no_text.safetensors holds no CLIP or T5"):
        model_parts.clip_handle(root / "checkpoints" / "no_text.safetensors", "CLIPLoader clip_name 'x'", "sd3")


def test_real_widths_name_the_kind(tmp_path: Path) -> None:
    """768 / 1280 / 1024 wide towers are CLIP-L / CLIP-G / OpenCLIP-H whatever the layout (only shapes are read);
    OpenCLIP-H is no SD3 text encoder."""
    paths = {}
    for width in (768, 1280, 1024):
        paths[width] = tmp_path / f"w{width}.safetensors"
        save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, width)}, str(paths[width]))
    assert parts.find_flow_text_part(paths[768], "x").kind == "clip_l"
    assert parts.find_flow_text_part(paths[1280], "x").kind == "clip_g"
    with pytest.raises(ModelError, match=r"^CLIPLoader type sd3 needs .*clip_name 'h' is OpenCLIP-H \(width 1024\)"):
        model_parts.clip_handle(paths[1024], "CLIPLoader clip_name 'h'", "sd3")


def test_text_elements_count_the_t5_embedding(root: Path, towers: Towers) -> None:
    """The manager's RAM estimate for text-encoder files counts every tensor it will read, T5's shared.weight too."""
    handle = model_parts.triple_clip_handle(_files(root, "clip_l", "clip_g", "t5xxl"), _where("TripleCLIPLoader", 3))
    expected = sum(p.numel() for model in (towers.clip_l, towers.clip_g, towers.t5)
                   for name, p in model.state_dict().items()
                   if not name.endswith("position_ids") and name != "encoder.embed_tokens.weight")
    assert parts.text_elements(handle.sources) == expected


def test_t5_compute_dtype() -> None:
    assert t5_compute_dtype(torch.float32, torch.device("cpu")) == torch.float32
    assert t5_compute_dtype(torch.float16, torch.device("cpu")) == torch.float16


@pytest.mark.parametrize("scaled", [False, True])
def test_float8_t5_files_keep_float8_weights(root: Path, towers: Towers, tmp_path: Path, scaled: bool) -> None:
    """t5xxl_fp8_e4m3fn (and ComfyUI's *_scaled with per-layer scales): the linear weights stay float8 and the
    encoder equals the full-precision T5 with those weights rounded through float8."""
    from tests.backend.flow_text_files import tower_state

    stored: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)} if scaled else {}
    rounded: dict[str, torch.Tensor] = {}
    for key, value in tower_state(towers, "t5xxl").items():
        if key.startswith("encoder.block.") and key.endswith(("q.weight", "k.weight", "v.weight", "o.weight",
                                                               "wi_0.weight", "wi_1.weight", "wo.weight")):
            scale = value.abs().max() / 448.0 if scaled else torch.tensor(1.0)
            stored[key] = (value / scale).to(torch.float8_e4m3fn)
            rounded[key] = stored[key].float() * scale
            if scaled:
                stored[key.removesuffix(".weight") + ".scale_weight"] = scale
        else:
            stored[key] = rounded[key] = value
    folder = tmp_path / "text_encoders"
    folder.mkdir()
    shutil.copytree(root / "text_encoders" / "t5_tokenizer", folder / "t5_tokenizer")
    save_file(stored, str(folder / "t5_fp8.safetensors"))
    save_file(rounded, str(folder / "t5_rounded.safetensors"))
    manager = ModelManager("cpu")
    fp8 = manager.text_encoder(model_parts.clip_handle(folder / "t5_fp8.safetensors", "CLIPLoader clip_name", "sd3"))
    weights = dict(fp8.named_parameters())
    assert weights["towers.t5xxl.model.encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == torch.float8_e4m3fn
    assert weights["towers.t5xxl.model.shared.weight"].dtype == torch.float32
    reference = manager.text_encoder(model_parts.clip_handle(folder / "t5_rounded.safetensors", "CLIPLoader", "sd3"))
    cond, _ = _encode(fp8)
    expected, _ = _encode(reference)
    torch.testing.assert_close(cond, expected, rtol=0, atol=1e-5)
