"""CheckpointSave, ModelSave, CLIPSave and VAESave: files in the standard layouts that load back through Loom's
loaders with the very weights saved (a merge included); counted free names, never overwriting; model-spec
metadata, the prompt only when asked; nothing left behind by an interrupted save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.errors import Interrupted
from engine.executor import Executor
from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
from engine.models.loaders import VAE_PREFIX, CheckpointFile, detect_family
from engine.sdk import NodeOutput, PathOutsideRoot, model_parts
from nodes.checkpoint_save import CheckpointSave, CLIPSave, ModelSave, VAESave
from nodes.model_merging import ModelMergeSimple
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import make_executor, node_context


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {name: build_checkpoint(root / f"{name}.safetensors", family, seed=seed)
            for name, family, seed in (("sd1_a", "sd1", 0), ("sd1_b", "sd1", 1), ("sd2", "sd2", 0),
                                       ("sdxl", "sdxl", 0))}


@pytest.fixture
def executor(tmp_path: Path) -> Executor:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    return make_executor(tmp_path, tmp_path / "models")


def _handles(path: Path) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    ref = FileRef.of(path)
    return ModelHandle(ref, family), ClipHandle(ref, family), VaeHandle(ref, VAE_PREFIX)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _saved_paths(output: NodeOutput) -> list[Path]:
    assert output.ui is not None
    return [Path(item["folder"]) / item["filename"] for item in output.ui["models"]]


@pytest.mark.parametrize("name", ["sd1_a", "sd2", "sdxl"])
def test_a_saved_checkpoint_has_the_source_layout_and_loads_back_the_same_weights(
        executor: Executor, sources: dict[str, Path], name: str) -> None:
    ctx = node_context(executor)
    model, clip, vae = _handles(sources[name])
    [path] = _saved_paths(CheckpointSave().run(ctx, model, clip, vae, "checkpoints/Loom"))
    assert path == executor.folders.model_roots[0] / "checkpoints" / "Loom_00001_.safetensors"
    with CheckpointFile(sources[name]) as original, CheckpointFile(path) as saved:
        assert set(saved.keys()) == set(original.keys())  # the family's single-file layout, key for key
        assert all(saved.shape(key) == original.shape(key) for key in original.keys())
    again = _handles(path)
    assert again[0].family == model.family
    models = executor.models
    assert _same(_state(models.unet(again[0])), _state(models.unet(model)))
    assert _same(_state(models.text_encoder(again[1])), _state(models.text_encoder(clip)))
    assert _same(_state(models.vae(again[2])), _state(models.vae(vae)))


def test_a_saved_merge_reproduces_the_merged_model_exactly(executor: Executor, sources: dict[str, Path]) -> None:
    ctx = node_context(executor)
    first, clip, vae = _handles(sources["sd1_a"])
    second, _, _ = _handles(sources["sd1_b"])
    [merged] = ModelMergeSimple().run(ctx, first, second, 0.3)
    [path] = _saved_paths(CheckpointSave().run(ctx, merged, clip, vae, "checkpoints/merged", dtype="fp32"))
    reloaded = _handles(path)[0]
    unet, saved_unet = executor.models.unet(merged), executor.models.unet(reloaded)
    assert _same(_state(saved_unet), _state(unet))
    generator = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 64, generator=generator)
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        assert torch.equal(saved_unet(x, t, context), unet(x, t, context))
    # fp16 (the default) stores the merge rounded once to half precision.
    [half] = _saved_paths(CheckpointSave().run(ctx, merged, clip, vae, "checkpoints/merged"))
    assert half.name == "merged_00002_.safetensors"
    half_state = _state(executor.models.unet(_handles(half)[0]))
    assert all(torch.equal(half_state[k], v.half().float()) for k, v in _state(unet).items())


def test_names_count_up_and_never_replace_a_file(executor: Executor, sources: dict[str, Path]) -> None:
    ctx = node_context(executor)
    _, _, vae = _handles(sources["sd1_a"])
    folder = executor.folders.model_roots[0] / "vae" / "mine"
    folder.mkdir(parents=True)
    (folder / "v_00003_.safetensors").write_bytes(b"someone else's file")
    [path] = _saved_paths(VAESave().run(ctx, vae, "vae/mine/v"))
    assert path == folder / "v_00004_.safetensors"
    assert (folder / "v_00003_.safetensors").read_bytes() == b"someone else's file"
    [outside] = _saved_paths(VAESave().run(ctx, vae, "exports/v"))  # not a model folder: the output folder
    assert outside == executor.folders.output_dir / "exports" / "v_00001_.safetensors"
    assert not [p for p in folder.parent.rglob(".loom-*")]  # no temporary file left
    with pytest.raises(PathOutsideRoot, match="filename_prefix 'vae/../../escape/v' would save outside"):
        VAESave().run(ctx, vae, "vae/../../escape/v")


def test_metadata_has_the_model_spec_and_the_prompt_only_when_asked(executor: Executor,
                                                                    sources: dict[str, Path]) -> None:
    ctx = node_context(executor)
    ctx.prompt = {"1": {"class_type": "CheckpointSave", "inputs": {}}}
    model, _, _ = _handles(sources["sdxl"])
    [plain] = _saved_paths(ModelSave().run(ctx, model, "diffusion_models/x"))
    [asked] = _saved_paths(ModelSave().run(ctx, model, "diffusion_models/x", include_workflow=True))
    with safe_open(str(plain), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base" and "prompt" not in metadata
    with safe_open(str(asked), "pt") as handle:
        assert json.loads(handle.metadata()["prompt"]) == ctx.prompt
    part = model_parts.unet_handle(plain, "UNETLoader unet_name")
    assert part.family == model.family
    assert _same(_state(executor.models.unet(part)), _state(executor.models.unet(model)))


@pytest.mark.parametrize("name", ["sd1_a", "sd2", "sdxl"])
def test_clip_save_writes_one_loadable_file_per_tower(executor: Executor, sources: dict[str, Path],
                                                      name: str) -> None:
    ctx = node_context(executor)
    _, clip, _ = _handles(sources[name])
    paths = _saved_paths(CLIPSave().run(ctx, clip, "clip/text"))
    towers = {"sd1_a": ["clip_l"], "sd2": ["clip_h"], "sdxl": ["clip_l", "clip_g"]}[name]
    assert [p.name for p in paths] == [f"text_{tower}_00001_.safetensors" for tower in towers]
    encoder = executor.models.text_encoder(clip)
    for tower, path in zip(towers, paths, strict=True):  # transformers' layout, the weights saved in fp16
        model = encoder.towers[tower].model
        expected = {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
                    for k, v in model.state_dict().items()}
        with CheckpointFile(path) as saved:
            assert set(saved.keys()) == {*expected, "text_model.embeddings.position_ids"}
            assert all(torch.equal(saved.load(k, torch.float32), v.half().float()) for k, v in expected.items())
    if name == "sd1_a":  # CLIPLoader reads it back (the tiny OpenCLIP towers are too narrow for its width test)
        loaded = model_parts.clip_handle(paths[0], "CLIPLoader clip_name", "stable_diffusion")
        assert _same(_state(executor.models.text_encoder(loaded)), _state(encoder))


def test_an_interrupted_save_leaves_nothing(executor: Executor, sources: dict[str, Path]) -> None:
    ctx = node_context(executor)
    model, clip, vae = _handles(sources["sd1_a"])
    ctx.interrupt.set()
    with pytest.raises(Interrupted):
        CheckpointSave().run(ctx, model, clip, vae, "checkpoints/stopped")
    folder = executor.folders.model_roots[0] / "checkpoints"
    assert [p.name for p in folder.iterdir()] == []
