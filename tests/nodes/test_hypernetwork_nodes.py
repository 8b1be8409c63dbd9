"""HypernetworkLoader end to end on the demo model (context and first-level width 64, second level 128):
A1111 hypernetwork files written here change a KSampler run, strength 0 and removal give the plain run
bit for bit, .pt and .safetensors files sample the same, a file is read once, and broken files fail at
the node with the file's name and the problem."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.events import ListSink
from engine.executor import Executor
from engine.models.hypernetwork import read_hypernetwork
from tests.models.hypernetwork_files import Settings, hypernetwork_dict, make_mlps, write_pt, write_safetensors
from tests.nodes.sd_workflow import DEMO_CHECKPOINT, DEMO_MODELS, make_executor, require_demo_model, run_prompt

RELU_NORM = Settings((1, 2, 1), "relu", layer_norm=True)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    require_demo_model()
    root = tmp_path_factory.mktemp("hn_models")
    folder = root / "hypernetworks"
    data = hypernetwork_dict(make_mlps((64, 128), RELU_NORM, seed=1, scale=0.3), RELU_NORM)
    write_pt(folder / "shapes.pt", data)
    write_safetensors(folder / "shapes.safetensors", data)
    other = Settings((1, 1.5, 0.5, 1), "mish", activate_output=True, use_dropout=True)
    write_pt(folder / "sub" / "mish.pt", hypernetwork_dict(make_mlps((64,), other, seed=2, scale=0.3), other))
    sd_only = hypernetwork_dict(make_mlps((320, 640, 768, 1280), RELU_NORM, seed=3), RELU_NORM)
    write_pt(folder / "sd15-widths.pt", sd_only)
    write_pt(folder / "broken.pt", {**data, "activation_func": "swoosh"})
    return make_executor(tmp_path_factory.mktemp("hn"), DEMO_MODELS, root)


def _prompt(*hypernetworks: tuple[str, float]) -> dict[str, Any]:
    graph: dict[str, Any] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}}}
    model: list[Any] = ["ckpt", 0]
    for index, (name, strength) in enumerate(hypernetworks):
        graph[f"hn{index}"] = {"class_type": "HypernetworkLoader",
                               "inputs": {"model": model, "hypernetwork_name": name, "strength": strength}}
        model = [f"hn{index}", 0]
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}}
    graph["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["ckpt", 1]}}
    graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}}
    return graph


def _sample(executor: Executor, *hypernetworks: tuple[str, float]) -> torch.Tensor:
    return run_prompt(executor, _prompt(*hypernetworks), latent=["sample", 0])["latent"]["samples"].clone()


@pytest.fixture(scope="module")
def plain(executor: Executor) -> torch.Tensor:
    return _sample(executor)


def test_the_files_are_listed(executor: Executor) -> None:
    info = executor.registry.node_info(executor.registry.get("HypernetworkLoader"), executor.folders)
    assert info["input"]["required"]["hypernetwork_name"][0] == [
        "broken.pt", "sd15-widths.pt", "shapes.pt", "shapes.safetensors", "sub/mish.pt"]
    assert info["category"] == "loaders"


def test_a_hypernetwork_changes_the_run_and_removing_it_restores_it(executor: Executor, plain: torch.Tensor) -> None:
    patched = _sample(executor, ("shapes.pt", 1.0))
    assert torch.isfinite(patched).all()
    assert (patched - plain).abs().max() > 1e-3
    weaker = _sample(executor, ("shapes.pt", 0.3))
    assert (weaker - plain).abs().max() < (patched - plain).abs().max()
    executor.cache.clear()
    assert torch.equal(_sample(executor), plain)


def test_strength_zero_and_unmatched_widths_give_the_plain_run_bit_for_bit(executor: Executor,
                                                                         plain: torch.Tensor) -> None:
    assert torch.equal(_sample(executor, ("shapes.pt", 0.0)), plain)
    assert torch.equal(_sample(executor, ("sd15-widths.pt", 1.0)), plain)


def test_pt_and_safetensors_sample_the_same(executor: Executor) -> None:
    assert torch.equal(_sample(executor, ("shapes.pt", 0.7)), _sample(executor, ("shapes.safetensors", 0.7)))


def test_two_hypernetworks_compose_and_the_file_is_read_once(executor: Executor, plain: torch.Tensor) -> None:
    mish = _sample(executor, ("sub/mish.pt", 1.0))
    assert (mish - plain).abs().max() > 1e-3
    misses = read_hypernetwork.cache_info().misses
    both = _sample(executor, ("shapes.pt", 1.0), ("sub/mish.pt", -0.5))
    again = _sample(executor, ("shapes.pt", 0.9), ("sub/mish.pt", -0.5))
    assert read_hypernetwork.cache_info().misses == misses
    assert not torch.equal(both, again)
    assert (both - _sample(executor, ("shapes.pt", 1.0))).abs().max() > 1e-4


def _failing(executor: Executor, name: str) -> Any:
    graph = {**_prompt((name, 1.0)), "capture": {"class_type": "Capture", "inputs": {"latent": ["sample", 0]}}}
    return executor.execute(graph, "p", ListSink())


def test_a_broken_file_fails_at_the_node_naming_file_and_problem(executor: Executor) -> None:
    outcome = _failing(executor, "broken.pt")
    assert outcome.status_str == "error"
    assert outcome.error.node_id == "hn0"
    assert "broken.pt" in str(outcome.error) and "unknown activation_func 'swoosh'" in str(outcome.error)


def test_a_missing_file_is_refused(executor: Executor) -> None:
    outcome = _failing(executor, "nope.pt")
    assert outcome.status_str == "error"
    assert "nope.pt" in str(outcome.messages[-1])
