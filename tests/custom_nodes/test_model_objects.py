"""Packs get MODEL, CLIP and VAE as ComfyUI's objects (ModelPatcher, CLIP, VAE) and what they return goes on into
Loom's nodes: a pack's cfg / post-cfg / pre-cfg functions and UNet patches run inside Loom's KSampler, its CLIP
tokenize + encode_from_tokens gives Loom's CLIPTextEncode conditioning, its VAE round trip gives Loom's VAEEncode +
VAEDecode image; on the shipped tiny demo checkpoint (tests/custom_nodes/packs_models/)."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.custom_nodes.bridge import from_pack, to_pack
from engine.custom_nodes.clip_objects import ComfyClip
from engine.custom_nodes.model_objects import ComfyModel
from engine.custom_nodes.packs import load_packs
from engine.custom_nodes.vae_objects import ComfyVae
from engine.folders import Folders
from engine.models.families import ModelFamily
from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
from engine.registry import NodeRegistry
from tests.api.conftest import LiveServer, start_live_server

REPO = Path(__file__).resolve().parents[2]
PACKS = Path(__file__).parent / "packs_models"
CHECKPOINT = "tiny-shapes.safetensors"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("loom-model-pack")
    folders = Folders(root / "input", root / "output", root / "temp", (REPO / "models",))

    def packs(registry: NodeRegistry) -> None:
        load_packs([PACKS], registry, folders)

    server = start_live_server(root, extra_nodes=packs, models_dirs=(REPO / "models",))
    yield server
    server.stop()


def calls() -> Any:
    """The pack's record of what its sampling functions saw."""
    [module] = [m for name, m in list(sys.modules.items()) if name.endswith("loom_test_model_pack")]
    return module.CALLS


def run(live: LiveServer, prompt: dict[str, Any]) -> dict[str, Any]:
    entry = live.wait_history(live.queue_prompt(prompt), timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return dict(entry["outputs"])


def tensor(outputs: dict[str, Any], node: str, key: str) -> torch.Tensor:
    return torch.tensor(outputs[node][key]).reshape(outputs[node][f"{key}_shape"])


def txt2img(cfg: float, *patches: tuple[str, dict[str, Any]], positive: list[Any] | None = None) -> dict[str, Any]:
    """Checkpoint -> [patch nodes] -> KSampler (4 steps, 64x64) -> dump of the latent (node "9")."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model = ["1", 0]
    for index, (class_type, inputs) in enumerate(patches):
        prompt[f"p{index}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"p{index}", 0]
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive or ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "seed": 7, "steps": 4, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["9"] = {"class_type": "LoomTestDumpValues", "inputs": {"latent": ["5", 0]}}
    return prompt


def sampled(live: LiveServer, cfg: float, *patches: tuple[str, dict[str, Any]]) -> torch.Tensor:
    return tensor(run(live, txt2img(cfg, *patches)), "9", "latent")


def test_a_packs_cfg_function_replaces_cfg(live: LiveServer) -> None:
    calls().clear()
    cond_only = sampled(live, 5.0, ("LoomTestCondOnlyCfg", {}))
    plain_cfg1 = sampled(live, 1.0)
    plain_cfg5 = sampled(live, 5.0)
    assert cond_only.shape == (1, 4, 8, 8)
    assert torch.allclose(cond_only, plain_cfg1, atol=1e-4), (cond_only - plain_cfg1).abs().max()
    assert (plain_cfg5 - plain_cfg1).abs().max() > 1e-2
    assert len(calls()["cfg"]) == 4  # one call per step
    assert calls()["cfg"][0] == sorted(["cond", "uncond", "cond_scale", "timestep", "input", "sigma", "cond_denoised",
                                        "uncond_denoised", "model", "model_options", "input_cond", "input_uncond"])


def test_post_cfg_functions_run_after_cfg_and_scale_its_result(live: LiveServer) -> None:
    calls().clear()
    plain = sampled(live, 3.0)
    identity = sampled(live, 3.0, ("LoomTestPostCfgScale", {"factor": 1.0}))
    scaled = sampled(live, 3.0, ("LoomTestPostCfgScale", {"factor": 0.5}))
    assert torch.allclose(identity, plain, atol=1e-5)
    assert (scaled - plain).abs().max() > 1e-2
    assert len(calls()["post_cfg"]) == 8  # two runs of four steps
    assert calls()["post_cfg"][0] == sorted(["denoised", "cond", "uncond", "cond_scale", "model", "uncond_denoised",
                                             "cond_denoised", "sigma", "model_options", "input"])


def test_pre_cfg_functions_and_unet_patches_run_in_order(live: LiveServer) -> None:
    calls().clear()
    plain = sampled(live, 3.0)
    patched = sampled(live, 3.0, ("LoomTestPreCfgIdentity", {}), ("LoomTestOutputBlockProbe", {}),
                      ("LoomTestPostCfgScale", {"factor": 1.0}))
    assert torch.allclose(patched, plain, atol=1e-5)
    assert len(calls()["pre_cfg"]) == 4 and len(calls()["post_cfg"]) == 4
    assert "conds_out" in calls()["pre_cfg"][0] and "conds" in calls()["pre_cfg"][0]
    blocks = calls()["output_block"]
    assert blocks and {kind for kind, _ in blocks} == {"output"}


def test_a_packs_clip_encoding_equals_clip_text_encode(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.3) circle", "clip": ["1", 1]}},
        "3": {"class_type": "LoomTestEncodeWithTokens", "inputs": {"text": "a (red:1.3) circle", "clip": ["1", 1],
                                                                    "rebuild": False}},
        "4": {"class_type": "LoomTestDumpValues", "inputs": {"conditioning": ["2", 0]}},
        "5": {"class_type": "LoomTestDumpValues", "inputs": {"conditioning": ["3", 0]}},
        "6": {"class_type": "LoomTestEncodeWithTokens", "inputs": {"text": "a (red:1.3) circle", "clip": ["1", 1],
                                                                    "rebuild": True}},
        "7": {"class_type": "LoomTestDumpValues", "inputs": {"conditioning": ["6", 0]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "9": {"class_type": "LoomTestDumpValues", "inputs": {"conditioning": ["8", 0]}},
    }
    outputs = run(live, prompt)
    loom, pack, rebuilt = (tensor(outputs, node, "cond") for node in ("4", "5", "7"))
    assert pack.shape == loom.shape and pack.shape[:2] == (1, 77)
    assert torch.allclose(pack, loom, atol=1e-6) and torch.allclose(rebuilt, loom, atol=1e-6)
    assert outputs["5"]["pooled"] == pytest.approx(outputs["4"]["pooled"], abs=1e-6)
    assert (tensor(outputs, "9", "cond") - loom).abs().max() > 1e-3  # the weight (red:1.3) matters
    sampled_loom = tensor(run(live, txt2img(3.0, positive=["c", 0]) | {
        "c": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}}}), "9", "latent")
    sampled_pack = tensor(run(live, txt2img(3.0, positive=["c", 0]) | {
        "c": {"class_type": "LoomTestEncodeWithTokens", "inputs": {"text": "a red circle", "clip": ["1", 1],
                                                              "rebuild": False}}}), "9", "latent")
    assert torch.allclose(sampled_pack, sampled_loom, atol=1e-4)


def test_a_packs_vae_round_trip_equals_vae_encode_decode(live: LiveServer) -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0xC03020}},
        "3": {"class_type": "LoomTestVaeRoundTrip", "inputs": {"image": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "LoomTestDumpValues", "inputs": {"image": ["3", 0]}},
        "7": {"class_type": "LoomTestDumpValues", "inputs": {"image": ["5", 0]}},
    }
    outputs = run(live, prompt)
    pack, loom = tensor(outputs, "6", "image"), tensor(outputs, "7", "image")
    assert pack.shape == loom.shape == (2, 48, 64, 3)
    assert torch.allclose(pack, loom, atol=1e-5)


def test_a_model_returned_unchanged_is_the_same_model(live: LiveServer) -> None:
    prompt = txt2img(3.0, ("LoomTestPassModel", {}))
    prompt["10"] = {"class_type": "LoomTestDumpValues", "inputs": {"number": ["p0", 1]}}
    prompt["11"] = {"class_type": "LoomTestDumpValues", "inputs": {"number": ["p0", 2]}}
    outputs = run(live, prompt)
    assert torch.equal(tensor(outputs, "9", "latent"), sampled(live, 3.0))
    sigma_min, sigma_max = outputs["10"]["number"][0], outputs["11"]["number"][0]
    assert 0.0 < sigma_min < 0.1 and 10.0 < sigma_max < 20.0  # SD's discrete schedule: about 0.029 and 14.6


# ---------------------------------------------------------------------------------------------- the bridge alone


@pytest.fixture
def handles(tmp_path: Path) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    ref = FileRef.of(REPO / "models" / "checkpoints" / CHECKPOINT)
    family = ModelFamily(name="sd15", prediction="eps", in_channels=4)
    return ModelHandle(ref, family), ClipHandle(ref, family), VaeHandle(ref, "first_stage_model.")


def test_handles_cross_as_comfy_objects_and_come_back(handles: tuple[ModelHandle, ClipHandle, VaeHandle]) -> None:
    model, clip, vae = handles
    wrapped = [to_pack(value) for value in handles]
    assert [type(value) for value in wrapped] == [ComfyModel, ComfyClip, ComfyVae]
    assert [from_pack(value) for value in wrapped] == [model, clip, vae]
    assert from_pack(to_pack(model)) is model and from_pack(to_pack(clip)) is clip
    assert to_pack(7) == 7 and from_pack("text") == "text"


def test_recorded_functions_become_sampling_patches_on_a_new_handle(
        handles: tuple[ModelHandle, ClipHandle, VaeHandle]) -> None:
    model = to_pack(handles[0])
    patched = model.clone()
    patched.set_model_sampler_cfg_function(lambda cond, uncond, scale: cond, disable_cfg1_optimization=True)
    patched.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
    assert model.model_options == {"transformer_options": {}}  # the clone's options are its own
    handle = from_pack(patched)
    assert handle != handles[0] and handle.checkpoint == handles[0].checkpoint
    assert [(p.kind, p.needs_uncond) for p in handle.sampling_patches] == [("cfg", True), ("post_cfg", True)]
    assert patched.is_clone(model) and not patched.is_clone(to_pack(handles[0]))


def noise_of_cond(args: dict[str, Any]) -> Any:
    """A module-level cfg function (picklable, so the patch and the handle are)."""
    return args["cond"]


def test_a_module_level_function_keeps_the_handle_picklable(
        handles: tuple[ModelHandle, ClipHandle, VaeHandle]) -> None:
    model = to_pack(handles[0])
    model.set_model_sampler_cfg_function(noise_of_cond)
    handle = from_pack(model)
    assert pickle.loads(pickle.dumps(handle)) == handle


def test_what_loom_cannot_run_says_so(handles: tuple[ModelHandle, ClipHandle, VaeHandle]) -> None:
    model = to_pack(handles[0])
    for call in (lambda: model.set_model_unet_function_wrapper(print), lambda: model.add_patches({}, 1.0),
                 lambda: model.set_model_attn1_replace(print, "input", 1), lambda: model.add_object_patch("x", 1),
                 lambda: model.set_model_patch(print, "no_such_point")):
        with pytest.raises(NotImplementedError, match="docs/custom-nodes.md"):
            call()
    model.model_options["transformer_options"]["patches_replace"] = {"attn1": {("input", 1): print}}
    with pytest.raises(NotImplementedError, match="patches_replace"):
        from_pack(model)


def test_clip_layer_changes_the_handle(handles: tuple[ModelHandle, ClipHandle, VaeHandle]) -> None:
    clip = to_pack(handles[1]).clone()
    clip.clip_layer(-2)
    assert from_pack(clip) == handles[1].with_layer(-2)
    clip.reset_clip_options()
    assert from_pack(clip) is handles[1]
