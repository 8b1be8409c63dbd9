"""In-graph LoRA training (TrainLoraNode and friends) on the demo model and a tiny SDXL checkpoint, with real files.

Measured on the demo model (two 64x64 purple-ring images with their captions, batch 2, rank 8, AdamW, MSE,
seed 0, fp32; the same numbers with 1 or 2 threads): 24 steps at learning rate 3e-3 give a mean loss of 0.100
over the first 6 steps and 0.046 over the last 6; with a learning rate of 1e-7 (the untrained model on the very
same sigmas and noise) 0.108 and 0.106.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.context import RunContext
from engine.errors import Interrupted, LoomError, ModelError
from engine.events import Event, ListSink, Progress
from engine.folders import Folders
from engine.models.handles import ModelHandle
from engine.models.lora_formats import parse_lora
from engine.models.manager import ModelManager
from engine.node import Node
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import DEMO_CHECKPOINT, DEMO_MODELS, require_demo_model
from tools.make_example_workflows import render_ring

CAPTIONS = ("a purple ring on a yellow background, center, large",
            "a purple ring on a white background, top left, large")
DEFAULTS: dict[str, Any] = {
    "batch_size": 2, "grad_accumulation_steps": 1, "steps": 4, "learning_rate": 3e-3, "rank": 8,
    "optimizer": "AdamW", "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32",
    "algorithm": "LoRA", "gradient_checkpointing": True, "existing_lora": "[None]",
}


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    made = NodeRegistry()
    register_builtin_nodes(made)
    return made


def node(registry: NodeRegistry, name: str) -> Node:
    cls = registry.get(name)
    assert cls is not None, name
    return cls()


class Setup:
    """The demo model loaded through the nodes, two encoded ring images and their captions' conditioning."""

    def __init__(self, root: Path, registry: NodeRegistry) -> None:
        (root / "models" / "loras").mkdir(parents=True)
        self.folders = Folders(root / "input", root / "output", root / "temp", (root / "models", DEMO_MODELS))
        self.folders.ensure()
        self.registry = registry
        self.models = ModelManager("cpu")
        self.ctx = self.context()
        self.model, self.clip, self.vae = node(registry, "CheckpointLoaderSimple").run(self.ctx, DEMO_CHECKPOINT)
        pixels = torch.stack([torch.from_numpy(render_ring("purple", "yellow", 32, 32, 13).copy()),
                              torch.from_numpy(render_ring("purple", "white", 14, 14, 12).copy())]).float() / 255
        self.latents = node(registry, "VAEEncode").run(self.ctx, pixels, self.vae)[0]
        self.positive = [entry for text in CAPTIONS for entry in self.encode(text)]

    def context(self, sink: Any = None, interrupt: threading.Event | None = None) -> RunContext:
        return RunContext("7", "p", self.folders, sink or ListSink(), interrupt or threading.Event(),
                          models=self.models)

    def encode(self, text: str) -> list[Any]:
        return node(self.registry, "CLIPTextEncode").run(self.ctx, text, self.clip)[0]

    def train(self, ctx: RunContext | None = None, model: ModelHandle | None = None, **inputs: Any
              ) -> tuple[ModelHandle, dict[str, torch.Tensor], dict[str, list[float]], int]:
        values = {"latents": self.latents, "positive": self.positive, **DEFAULTS, **inputs}
        return node(self.registry, "TrainLoraNode").run(ctx or self.ctx, model or self.model, **values)

    def unet_output(self, model: ModelHandle) -> torch.Tensor:
        """The UNet's prediction for a fixed noisy latent and the first caption."""
        unet = self.models.unet(model)
        x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
        with torch.inference_mode():
            return unet(x, torch.tensor([500.0]), self.positive[0][0]).clone()

    def weights(self, model: ModelHandle) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in self.models.unet(model).state_dict().items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, registry: NodeRegistry) -> Setup:
    require_demo_model()
    return Setup(tmp_path_factory.mktemp("training"), registry)


def _untouched(unet: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = unet.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[name], before[name]) for name in before), "the shared UNet's weights changed"
    assert all(not p.requires_grad and p.grad is None for p in unet.parameters())
    for module in unet.modules():
        assert "forward" not in module.__dict__, "a checkpointing wrapper was left on the UNet"
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_training_lowers_the_loss_changes_the_model_and_leaves_the_shared_unet_alone(demo: Setup) -> None:
    unet = demo.models.unet(demo.model)
    before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    model, lora, loss, steps = demo.train(steps=24)
    _untouched(unet, before)
    assert demo.models.unet(demo.model) is unet  # the very module the training read
    untrained = demo.train(steps=24, learning_rate=1e-7)[2]["loss"]  # the same sigmas and noise, no learning
    losses = loss["loss"]
    assert steps == 24 and len(losses) == 24
    first, last, baseline = (sum(values) / 6 for values in (losses[:6], losses[-6:], untrained[-6:]))
    assert last < 0.7 * first and last < 0.6 * baseline, (first, last, baseline)  # measured 0.100, 0.046, 0.106
    assert untrained[0] == pytest.approx(losses[0], rel=1e-4)
    # kohya names Loom's loader reads back, every key used; alpha 1
    assert all(key.startswith("lora_unet_") for key in lora)
    assert not parse_lora(lora).unused
    assert float(lora["lora_unet_conv_in.alpha"]) == 1.0
    assert lora["lora_unet_conv_in.lora_up.weight"].shape == (64, 8, 1, 1)
    # model_with_lora predicts something else than the model
    assert len(model.patches) == len(demo.model.patches) + 1
    changed = (demo.unet_output(model) - demo.unet_output(demo.model)).abs().max()
    assert changed > 1e-3


def test_gradient_checkpointing_and_accumulation_give_the_same_update(demo: Setup) -> None:
    """One SGD step (its update is lr times the gradient): batch 2 at once == 2 micro-batches of 1 accumulated,
    with and without gradient checkpointing: the same examples, sigmas and noise, the same loss and LoRA."""
    common = {"optimizer": "SGD", "learning_rate": 0.5, "rank": 4}
    whole = demo.train(batch_size=2, grad_accumulation_steps=1, steps=1, **common)
    split = demo.train(batch_size=1, grad_accumulation_steps=2, steps=2, **common)
    plain = demo.train(batch_size=2, grad_accumulation_steps=1, steps=1, gradient_checkpointing=False, **common)
    assert len(whole[2]["loss"]) == len(split[2]["loss"]) == 1
    assert split[2]["loss"][0] == pytest.approx(whole[2]["loss"][0], rel=1e-5)
    assert plain[2]["loss"][0] == pytest.approx(whole[2]["loss"][0], rel=1e-6)
    ups = [key for key in whole[1] if key.endswith("lora_up.weight")]
    assert any(whole[1][key].abs().max() > 0 for key in ups)
    for key in ups:
        torch.testing.assert_close(split[1][key], whole[1][key], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(plain[1][key], whole[1][key], rtol=1e-5, atol=1e-8)


def test_saved_lora_loads_through_lora_loader_and_continues_with_its_steps(demo: Setup) -> None:
    model, lora, _, steps = demo.train(steps=3, learning_rate=1e-2)
    save = node(demo.registry, "SaveLoRANode")
    save.run(demo.ctx, lora, "loras/trained/ring", steps)
    save.run(demo.ctx, lora, "loras/trained/ring")
    saved = demo.folders.root("input").parent / "models" / "loras" / "trained"
    assert sorted(p.name for p in saved.iterdir()) == ["ring_00001_.safetensors", "ring_3_steps_00001_.safetensors"]
    name = "trained/ring_3_steps_00001_.safetensors"
    assert name in demo.folders.list_models("loras")
    loaded = node(demo.registry, "LoraLoader").run(demo.ctx, demo.model, demo.clip, name, 1.0, 0.0)[0]
    from_file, trained = demo.weights(loaded), demo.weights(model)
    assert all(torch.equal(from_file[key], trained[key]) for key in trained)
    assert not all(torch.equal(from_file[key], base) for key, base in demo.weights(demo.model).items())
    # continuing from the file: its steps are added; at a vanishing learning rate the LoRA stays the file's
    _, continued, _, more = demo.train(steps=2, learning_rate=1e-7, existing_lora=name, seed=9)
    assert more == 3 + 2
    for key, tensor in lora.items():
        torch.testing.assert_close(continued[key], tensor, rtol=0, atol=1e-5)
    with pytest.raises(ModelError, match="not LoHa"):
        demo.train(steps=1, existing_lora=name, algorithm="LoHa")


def test_lora_model_loader_applies_the_trained_lora_with_a_strength(demo: Setup) -> None:
    model, lora, _, _ = demo.train(steps=2, learning_rate=1e-2, lora_dtype="bf16")
    assert all(t.dtype == torch.bfloat16 for key, t in lora.items() if not key.endswith(".alpha"))
    loader = node(demo.registry, "LoraModelLoader")
    assert loader.run(demo.ctx, demo.model, lora, 0.0)[0] is demo.model
    [half] = loader.run(demo.ctx, demo.model, lora, 0.5)
    assert half.patches[-1].strength == 0.5 and half.patches[-1].file == model.patches[-1].file  # one temp file
    base, full, halfway = (demo.weights(m) for m in (demo.model, model, half))
    assert any(not torch.equal(full[key], base[key]) for key in base)
    for key, weight in base.items():
        torch.testing.assert_close(halfway[key], weight + (full[key] - weight) / 2, rtol=0, atol=1e-6)


def test_prior_preservation_adds_the_class_loss(demo: Setup) -> None:
    class_pixels = torch.from_numpy(render_ring("purple", "blue", 32, 50, 12).copy())[None].float() / 255
    class_latents = node(demo.registry, "VAEEncode").run(demo.ctx, class_pixels, demo.vae)[0]
    class_positive = demo.encode("a purple circle on a blue background, bottom, large")
    plain = demo.train(steps=2)[2]["loss"]
    weighted = demo.train(steps=2, class_latents=class_latents, class_positive=class_positive)[2]["loss"]
    ignored = demo.train(steps=2, class_latents=class_latents, class_positive=class_positive,
                         prior_loss_weight=0.0)[2]["loss"]
    assert ignored[0] == pytest.approx(plain[0], rel=1e-6)  # the instance batch is drawn first
    assert weighted[0] > plain[0] * 1.05
    with pytest.raises(LoomError, match="class_positive"):
        demo.train(steps=1, class_latents=class_latents)


class _InterruptAt:
    def __init__(self, interrupt: threading.Event, step: int) -> None:
        self.interrupt, self.step = interrupt, step

    def emit(self, event: Event) -> None:
        if isinstance(event, Progress) and event.value >= self.step:
            self.interrupt.set()


def test_an_interrupt_stops_training_and_leaves_the_shared_unet_alone(demo: Setup) -> None:
    unet = demo.models.unet(demo.model)
    before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    interrupt = threading.Event()
    with pytest.raises(Interrupted):
        demo.train(demo.context(_InterruptAt(interrupt, 2), interrupt), steps=6)
    _untouched(unet, before)


def test_conditioning_count_and_algorithms_are_checked(demo: Setup) -> None:
    with pytest.raises(LoomError, match="3 conditioning entries but latents has 2 images"):
        demo.train(positive=demo.positive + demo.encode("a ring"))
    with pytest.raises(LoomError, match="algorithm 'OFT' cannot be trained.*set algorithm to one of LoRA, LoHa, LoKr"):
        demo.train(algorithm="OFT")
    shared = demo.train(steps=1, positive=demo.encode("a purple ring"))[2]["loss"]  # one entry for both images
    assert len(shared) == 1


@pytest.mark.parametrize("algorithm", ["LoRA", "LoHa", "LoKr"])
def test_each_algorithm_is_read_back_by_the_lora_loader_as_trained(demo: Setup, algorithm: str) -> None:
    """The patched UNet's weights are the base plus exactly the delta the training computed for each target."""
    from engine.backend.lora_training import COMPONENTS, Adapter
    from engine.sdk.training import lora_targets

    model, lora, loss, _ = demo.train(steps=3, learning_rate=1e-2, rank=4, algorithm=algorithm)
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    parsed = parse_lora(lora)
    assert not parsed.unused and {a["weight"].kind for a in parsed.adapters.values()} == {algorithm}
    targets = lora_targets(demo.models.unet(demo.model))
    assert set(parsed.adapters) == set(targets.values())
    base, patched = demo.weights(demo.model), demo.weights(model)
    moved = 0
    for path, name in targets.items():
        weight = f"{path}.weight"
        tensors = {c: lora[f"{name}.{c}"] for c in COMPONENTS[algorithm]}
        delta = Adapter(algorithm, tuple(base[weight].shape), tensors, float(lora[f"{name}.alpha"])).delta()
        torch.testing.assert_close(patched[weight] - base[weight], delta, rtol=1e-4, atol=1e-6)
        moved += bool(delta.abs().max() > 0)
    assert moved > len(targets) // 2


def test_sdxl_training_uses_the_pooled_adm_vector(tmp_path: Path, registry: NodeRegistry) -> None:
    build_checkpoint(tmp_path / "models" / "checkpoints" / "tiny-sdxl.safetensors", "sdxl")
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", (tmp_path / "models",))
    folders.ensure()
    ctx = RunContext("1", "p", folders, ListSink(), threading.Event(), models=ModelManager("cpu"))
    model, clip, _ = node(registry, "CheckpointLoaderSimple").run(ctx, "tiny-sdxl.safetensors")
    positive = node(registry, "CLIPTextEncodeSDXL").run(ctx, clip, 64, 64, 0, 0, 64, 64, "a ring", "a ring")[0]
    latents = {"samples": torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))}
    inputs = {**DEFAULTS, "steps": 2, "latents": latents, "positive": positive, "learning_rate": 1e-2}
    trained, lora, loss, _ = node(registry, "TrainLoraNode").run(ctx, model, **inputs)
    assert len(loss["loss"]) == 2 and any(key.startswith("lora_unet_label_emb") for key in lora)
    # the adm vector reaches the UNet: the label embedding's LoRA got a gradient
    assert lora["lora_unet_label_emb_0_0.lora_up.weight"].abs().max() > 0
    assert len(trained.patches) == 1


def test_loss_graph_is_a_png_in_the_temp_folder(demo: Setup) -> None:
    out = node(demo.registry, "LossGraphNode").run(demo.ctx, {"loss": [0.5, 0.3, 0.35, 0.1]}, "loss_graph")
    [entry] = out.ui["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == "" and entry["filename"].startswith("loss_graph_")
    image = Image.open(demo.folders.root("temp") / entry["filename"])
    assert image.size == (800, 480)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    assert (pixels != 255).any(dim=-1).float().mean() > 0.005  # axes, curve and labels are drawn
    with pytest.raises(LoomError, match="LOSS_MAP"):
        node(demo.registry, "LossGraphNode").run(demo.ctx, {"nope": 1}, "loss_graph")


# --------------------------------------------------------------------------------------------- datasets


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 64), caption: str | None = None
         ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    image.putpixel((0, 0), (1, 2, 3))
    image.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def test_text_dataset_reads_captions_and_kohya_repeat_folders(demo: Setup) -> None:
    root = demo.folders.root("input") / "rings"
    _png(root / "b.png", (0, 0, 255), caption=CAPTIONS[1])
    _png(root / "a.png", (255, 0, 0), caption=CAPTIONS[0])
    _png(root / "3_extra" / "c.png", (0, 255, 0), caption="a green square")
    _png(root / "more" / "d.png", (255, 255, 0))  # no number: read once; no caption: empty
    (root / "notes.txt").write_text("not an image")
    _png(demo.folders.root("input") / "elsewhere.png", (9, 9, 9))
    (root / "z_link.png").symlink_to(demo.folders.root("input") / "elsewhere.png")  # leaves the folder: skipped
    assert "rings" in node(demo.registry, "LoadImageSetFromFolderNode").inputs[0].choice_list(demo.folders)
    images, cond = node(demo.registry, "LoadImageTextSetFromFolderNode").run(demo.ctx, "rings", demo.clip)
    assert images.shape == (6, 64, 64, 3)
    reds = [tuple((images[i, 32, 32] * 255).round().int().tolist()) for i in range(6)]
    assert reds == [(255, 0, 0), (0, 0, 255), (0, 255, 0), (0, 255, 0), (0, 255, 0), (255, 255, 0)]
    assert len(cond) == 6
    expected = [CAPTIONS[0], CAPTIONS[1], "a green square", "a green square", "a green square", ""]
    for (embedding, extras), text in zip(cond, expected, strict=True):
        [[reference, ref_extras]] = demo.encode(text)
        torch.testing.assert_close(embedding, reference)
        torch.testing.assert_close(extras["pooled_output"], ref_extras["pooled_output"])
    # the images-only loader reads the folder's own images, in name order
    [plain] = node(demo.registry, "LoadImageSetFromFolderNode").run(demo.ctx, "rings")
    assert plain.shape[0] == 2 and torch.equal(plain, images[:2])
    # width/height resize every image
    small, _ = node(demo.registry, "LoadImageTextSetFromFolderNode").run(demo.ctx, "rings", demo.clip, "None", 32, -1)
    assert small.shape == (6, 32, 32, 3)


def test_image_dataset_sizes_need_a_resize_method(demo: Setup) -> None:
    root = demo.folders.root("input") / "mixed"
    _png(root / "1.png", (255, 0, 0), (64, 48))
    _png(root / "2.png", (0, 0, 255), (80, 60))
    loader = node(demo.registry, "LoadImageSetFromFolderNode")
    with pytest.raises(LoomError, match=r"'2.png' is 80x60 but the first image is 64x48.*resize_method"):
        loader.run(demo.ctx, "mixed")
    for method in ("Stretch", "Crop", "Pad"):
        [images] = loader.run(demo.ctx, "mixed", method)
        assert images.shape == (2, 48, 64, 3), method
    [cropped] = loader.run(demo.ctx, "mixed", "Crop")
    assert tuple((cropped[1, 0, 0] * 255).round().int().tolist()) == (1, 2, 3)  # the top-left corner is kept
    with pytest.raises(LoomError, match="not a folder of the input folder"):
        loader.run(demo.ctx, "missing")
    fingerprint = loader.fingerprint
    assert fingerprint(demo.folders, {"folder": "mixed"}) != fingerprint(demo.folders, {"folder": "rings"})


def test_node_names_and_categories(registry: NodeRegistry) -> None:
    expected = {"TrainLoraNode": ("Train LoRA", "training"), "LoraModelLoader": ("Load LoRA Model", "loaders"),
                "SaveLoRANode": ("Save LoRA Weights", "loaders"), "LossGraphNode": ("Plot Loss Graph", "training"),
                "LoadImageSetFromFolderNode": ("Load Image Dataset from Folder", "loaders"),
                "LoadImageTextSetFromFolderNode": ("Load Image and Text Dataset from Folder", "loaders")}
    for name, (display, category) in expected.items():
        cls = registry.get(name)
        assert cls is not None and (cls.display_name, cls.category) == (display, category)
    assert registry.get("SaveLoRA") is registry.get("SaveLoRANode")


def test_node_choices_match_the_engine() -> None:
    """The node module lists its choices without torch; they must be the ones the engine implements."""
    from engine.backend import lora_training
    from engine.sdk import datasets, training
    from nodes import training as training_nodes

    inputs = {spec.name: spec for spec in training_nodes.TrainLoraNode.inputs}
    assert tuple(inputs["optimizer"].choices or ()) == tuple(lora_training.OPTIMIZERS)
    assert tuple(inputs["loss_function"].choices or ()) == tuple(lora_training.LOSS_FUNCTIONS)
    assert training_nodes.ALGORITHMS == lora_training.ALGORITHMS
    assert training_nodes.DTYPE_CHOICES == tuple(training.DTYPES)
    assert training_nodes.RESIZE_METHODS == datasets.RESIZE_METHODS
    assert training.steps_in_name("ring_12_steps_00003_.safetensors") == 12
    assert training.steps_in_name("sub/ring_00003_.safetensors") == 0
