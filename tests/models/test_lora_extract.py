"""LoraSave ("Extract and Save Lora"): a LoRA extracted from ModelMergeSubtract / CLIPMergeSubtract of two tiny
checkpoints (tuned = seed 0, base = seed 1), written to a real model root and loaded back onto the base through
Loom's LoraLoader.

Measured on these files: at full rank base + LoRA is tuned within a relative Frobenius error of about 3e-4 per
weight (the fp16 rounding of the two factors; unit roundoff 2**-11 = 4.9e-4); below full rank each weight's error
is the SVD truncation error sqrt(sum of the dropped squared singular values) / ||diff|| to within 1e-3
(measured: 1e-6 where the rank truncates, 3e-4 where it is already full); ``full_diff`` gives base +
fp16(diff) bit for bit.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from engine.errors import Interrupted, LoomError
from engine.events import ListSink
from engine.executor import Executor
from engine.models.handles import ClipHandle, FileRef, ModelHandle
from engine.models.loaders import CheckpointFile, detect_family
from engine.models.lora_keys import kohya_text_key, kohya_unet_key
from engine.models.lora_plan import describe_part
from nodes.lora import LoraLoader
from nodes.model_merging import CLIPMergeSubtract, ModelMergeSubtract
from nodes.model_saving import LoraSave
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import make_executor, node_context

FULL = 4096  # clamps to min(out, in_flat) for every weight: full rank
FP16_FACTORS = 1e-3  # relative Frobenius error allowed for fp16-rounded factors (measured <= 3.3e-4)
TRUNCATION = 1e-3  # |measured - SVD truncation error| allowed, in units of ||diff|| (fp16 rounding on top)
#: A linear and a 3x3 conv of each tiny UNet, and their kohya names (diffusers paths for SD1, LDM paths for SDXL).
KNOWN_NAMES = {
    "sd1": {"input_blocks.1.1.transformer_blocks.0.attn1.to_q":
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "input_blocks.1.0.in_layers.2": "lora_unet_down_blocks_0_resnets_0_conv1"},
    "sdxl": {"input_blocks.3.1.transformer_blocks.1.attn1.to_q":
             "lora_unet_input_blocks_3_1_transformer_blocks_1_attn1_to_q",
             "input_blocks.1.0.in_layers.2": "lora_unet_input_blocks_1_0_in_layers_2"},
}

#: A GroupNorm of each tiny UNet (its 1-D weight is stored as ``.diff``).
NORMS = {"sd1": "lora_unet_down_blocks_0_resnets_0_norm1", "sdxl": "lora_unet_input_blocks_1_0_in_layers_0"}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for family in ("sd1", "sdxl"):
        for seed in (0, 1):
            build_checkpoint(root / "checkpoints" / f"{family}-{seed}.safetensors", family, seed=seed)
    return root


@pytest.fixture(scope="module")
def executor(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Executor:
    return make_executor(tmp_path_factory.mktemp("run"), model_root)


def _handles(path: Path) -> tuple[ModelHandle, ClipHandle]:
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family), ClipHandle(FileRef.of(path), family)


def _params(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: param.detach().clone() for name, param in module.named_parameters()}


class Pair:
    """tuned (seed 0) and base (seed 1) of one family, their differences, and their weights."""

    def __init__(self, executor: Executor, model_root: Path, family: str) -> None:
        self.executor, self.family = executor, family
        self.ctx = node_context(executor)
        (self.tuned, self.tuned_clip), (self.base, self.base_clip) = (
            _handles(model_root / "checkpoints" / f"{family}-{seed}.safetensors") for seed in (0, 1))
        [self.model_diff] = ModelMergeSubtract().run(self.ctx, self.tuned, self.base, 1.0)
        [self.clip_diff] = CLIPMergeSubtract().run(self.ctx, self.tuned_clip, self.base_clip, 1.0)
        models = executor.models
        self.weights = {"tuned": _params(models.unet(self.tuned)), "base": _params(models.unet(self.base)),
                        "tuned_te": _params(models.text_encoder(self.tuned_clip)),
                        "base_te": _params(models.text_encoder(self.base_clip))}

    def save(self, prefix: str, rank: int = FULL, lora_type: str = "standard", bias_diff: bool = True) -> Path:
        """Run LoraSave on both differences; the file it wrote under the model root's loras folder."""
        folder = self.ctx.folders.model_roots[0] / "loras" / Path(prefix).parent
        before = set(folder.glob("*.safetensors")) if folder.is_dir() else set()
        LoraSave().run(self.ctx, f"loras/{prefix}", rank, lora_type, bias_diff, self.model_diff, self.clip_diff)
        [written] = set(folder.glob("*.safetensors")) - before
        return written

    def loaded(self, path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The base UNet's and text encoder's weights with the LoRA applied by LoraLoader at strength 1."""
        name = path.relative_to(self.ctx.folders.model_roots[0] / "loras").as_posix()
        model, clip = LoraLoader().run(self.ctx, self.base, self.base_clip, name, 1.0, 1.0)
        return _params(self.executor.models.unet(model)), _params(self.executor.models.text_encoder(clip))

    @functools.cached_property
    def nameable_text(self) -> set[str]:
        """The text-encoder modules a kohya LoRA key Loom reads can name (attention, MLP, projection)."""
        part = describe_part(self.executor.models.text_encoder(self.base_clip), self.base.family.label)
        prefixes = ("lora_te1_", "lora_te2_") if self.family == "sdxl" else ("lora_te_",)
        return {path for target, path in part.key_map.items() if target.startswith(prefixes)}

    def carried_text(self, name: str) -> bool:
        return name.rpartition(".")[0] in self.nameable_text

    def diff(self, param: str, text: bool) -> Tensor:
        tuned, base = (self.weights["tuned_te"], self.weights["base_te"]) if text else (self.weights["tuned"],
                                                                                       self.weights["base"])
        return tuned[param] - base[param]


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def pair(request: pytest.FixtureRequest, executor: Executor, model_root: Path) -> Pair:
    return Pair(executor, model_root, request.param)


@pytest.fixture(scope="module")
def sd1(executor: Executor, model_root: Path) -> Pair:
    return Pair(executor, model_root, "sd1")


def _tensors(path: Path) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _targets(keys: Any) -> set[str]:
    return {key.split(".", 1)[0] for key in keys}


def _no_engine_warnings(records: list[logging.LogRecord]) -> None:
    warned = [record.getMessage() for record in records
              if record.name.startswith("engine") and record.levelno >= logging.WARNING]
    assert not warned, warned


def _rel(error: Tensor, diff: Tensor) -> float:
    return float(error.norm() / diff.norm())


def _factored(weights: dict[str, Tensor]) -> Iterator[str]:
    return (name for name, tensor in weights.items() if name.endswith(".weight") and tensor.ndim >= 2)


def test_full_rank_lora_has_kohya_names_and_loads_back_onto_the_base_as_tuned(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    path = pair.save(f"extracted/{pair.family}_full")
    assert path.name == f"{pair.family}_full_00001_.safetensors"
    assert path.parent == pair.ctx.folders.model_roots[0] / "loras" / "extracted"
    tensors = _tensors(path)
    te = ("lora_te1_", "lora_te2_") if pair.family == "sdxl" else ("lora_te_",)
    assert all(key.startswith(("lora_unet_", *te)) for key in tensors)
    unet = pair.executor.models.unet(pair.base)
    for module, name in KNOWN_NAMES[pair.family].items():
        assert kohya_unet_key(module, unet.config) == name
        weight = pair.weights["base"][f"{module}.weight"]
        rank = min(weight.shape[0], math.prod(weight.shape[1:]))
        assert tensors[f"{name}.alpha"].dtype == torch.float32 and tensors[f"{name}.alpha"].shape == ()
        assert float(tensors[f"{name}.alpha"]) == rank  # alpha / rank = 1
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        assert down.shape == (rank, *weight.shape[1:])  # a 3x3 conv: [r, in, 3, 3]
        assert up.shape == (weight.shape[0], rank, *(1,) * (weight.ndim - 2))  # [out, r, 1, 1]
        assert (f"{name}.diff_b" in tensors) == (f"{module}.bias" in pair.weights["base"])  # to_q has no bias
    q_proj = "encoder.layers.0.self_attn.q_proj"
    assert f"{kohya_text_key(q_proj, 1 if pair.family == 'sdxl' else None)}.lora_up.weight" in tensors
    if pair.family == "sdxl":
        assert "lora_te2_text_projection.lora_down.weight" in tensors
    assert {t.dtype for key, t in tensors.items() if not key.endswith(".alpha")} == {torch.float16}

    with caplog.at_level(logging.WARNING):
        unet_weights, text_weights = pair.loaded(path)
    _no_engine_warnings(caplog.records)  # every key mapped to a weight of the right shape
    for name, tensor in pair.weights["tuned"].items():
        diff = pair.diff(name, text=False)
        if diff.any():
            assert _rel(unet_weights[name] - tensor, diff) <= FP16_FACTORS, name
    carried = 0
    for name, tensor in pair.weights["tuned_te"].items():
        diff = pair.diff(name, text=True)
        if pair.carried_text(name):
            carried += 1
            assert _rel(text_weights[name] - tensor, diff) <= FP16_FACTORS, name
        else:  # embeddings and layer norms: no LoRA key of Loom's names them, so the base's stay
            assert torch.equal(text_weights[name], pair.weights["base_te"][name]), name
    per_param = (".lora_up.weight", ".diff", ".diff_b")  # one key per weight or bias the file carries
    assert carried == sum(1 for key in tensors if key.startswith(te) and key.endswith(per_param))


def test_the_changed_weights_a_lora_cannot_carry_are_named_in_a_warning(
        sd1: Pair, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="loom.node"):
        sd1.save("warned/sd1", rank=2)
    [warning] = [record.getMessage() for record in caplog.records if record.name == "loom.node"]
    assert "changed text encoder weights" in warning and "token_embedding" in warning


def test_below_full_rank_each_weight_has_exactly_the_svd_truncation_error(sd1: Pair) -> None:
    errors: dict[int, dict[str, float]] = {}
    for rank in (1, 4, 16):
        unet_weights, text_weights = sd1.loaded(sd1.save(f"ranks/sd1_r{rank}", rank=rank))
        errors[rank] = {}
        for text, loaded, base in ((False, unet_weights, sd1.weights["base"]),
                                   (True, text_weights, sd1.weights["base_te"])):
            for name in _factored(base):
                diff = sd1.diff(name, text)
                if text and not sd1.carried_text(name):
                    continue  # embeddings: no LoRA key names them (see the warning test)
                singular = torch.linalg.svdvals(diff.reshape(diff.shape[0], -1).double())
                expected = float(singular[rank:].square().sum().sqrt() / singular.square().sum().sqrt())
                measured = _rel(loaded[name] - base[name] - diff, diff)
                assert abs(measured - expected) <= TRUNCATION, (rank, name, measured, expected)
                errors[rank][name] = measured
    assert errors[1].keys() == errors[4].keys() == errors[16].keys() and len(errors[1]) > 50
    for name, weight in [*sd1.weights["base"].items(), *sd1.weights["base_te"].items()]:
        if name in errors[1]:
            full = min(weight.shape[0], math.prod(weight.shape[1:]))
            for low, high in ((1, 4), (4, 16)):  # lower with more rank, until the rank is full
                assert errors[low][name] > errors[high][name] if low < full else errors[low][name] == errors[high][name]
    assert 0.5 < sum(errors[4].values()) / len(errors[4]) < 1.0  # random differences: far from low rank


def test_full_diff_stores_whole_differences_and_gives_tuned_up_to_fp16(pair: Pair) -> None:
    path = pair.save(f"full_diff/{pair.family}", rank=8, lora_type="full_diff")
    tensors = _tensors(path)
    assert {key.rpartition(".")[2] for key in tensors} == {"diff", "diff_b"}
    norm = NORMS[pair.family]
    assert tensors[f"{norm}.diff"].ndim == 1  # GroupNorm weights too
    unet_weights, text_weights = pair.loaded(path)
    diff_unet = _params(pair.executor.models.unet(pair.model_diff))
    diff_text = _params(pair.executor.models.text_encoder(pair.clip_diff))
    for loaded, base, diffs in ((unet_weights, pair.weights["base"], diff_unet),
                                (text_weights, pair.weights["base_te"], diff_text)):
        changed = [name for name in base if not torch.equal(loaded[name], base[name])]
        for name in changed:  # base + the fp16-rounded difference, bit for bit
            assert torch.equal(loaded[name], base[name] + diffs[name].half().float()), name
    assert all(not torch.equal(unet_weights[name], tensor) for name, tensor in pair.weights["base"].items()
               if pair.diff(name, text=False).any())  # every UNet weight that differs is carried


def test_without_bias_diff_biases_and_norms_stay_the_base_s(sd1: Pair) -> None:
    path = sd1.save("no_bias/sd1", rank=8, bias_diff=False)
    tensors = _tensors(path)
    assert not [key for key in tensors if key.endswith((".diff", ".diff_b"))]
    unet_weights, text_weights = sd1.loaded(path)
    for loaded, base in ((unet_weights, sd1.weights["base"]), (text_weights, sd1.weights["base_te"])):
        for name, tensor in base.items():
            if tensor.ndim < 2:  # biases and norm weights
                assert torch.equal(loaded[name], tensor), name
    assert not torch.equal(unet_weights["out.2.weight"], sd1.weights["base"]["out.2.weight"])


def test_nothing_connected_is_an_error_that_says_what_to_connect(sd1: Pair) -> None:
    with pytest.raises(LoomError, match="LoraSave: nothing to save; connect model_diff .* text_encoder_diff"):
        LoraSave().run(sd1.ctx, "loras/nothing", 8, "standard", True)


def test_an_interrupt_leaves_no_file(sd1: Pair) -> None:
    ctx = node_context(sd1.executor)
    ctx.interrupt.set()
    with pytest.raises(Interrupted):
        LoraSave().run(ctx, "loras/interrupted/sd1", 8, "standard", True, sd1.model_diff)
    assert list((ctx.folders.model_roots[0] / "loras" / "interrupted").iterdir()) == []


def test_a_workflow_saves_the_next_counter_and_lora_loader_lists_it(executor: Executor, model_root: Path) -> None:
    folder = model_root / "loras" / "workflow"
    folder.mkdir(parents=True)
    (folder / "unet_00007_.safetensors").write_bytes(b"not a lora")  # the counter goes on after the highest
    prompt = {
        "tuned": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1-0.safetensors"}},
        "base": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1-1.safetensors"}},
        "diff": {"class_type": "ModelMergeSubtract",
                 "inputs": {"model1": ["tuned", 0], "model2": ["base", 0], "multiplier": 1.0}},
        "save": {"class_type": "LoraSave", "inputs": {"filename_prefix": "loras/workflow/unet", "rank": 4,
                                                       "lora_type": "standard", "bias_diff": True,
                                                       "model_diff": ["diff", 0]}},
    }
    sink = ListSink()
    assert executor.execute(prompt, "p", sink).status_str == "success", sink.events[-1]
    assert "workflow/unet_00008_.safetensors" in executor.folders.list_models("loras")
    tensors = _tensors(folder / "unet_00008_.safetensors")
    assert _targets(tensors) and all(key.startswith("lora_unet_") for key in tensors)  # no text encoder keys
