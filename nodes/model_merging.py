"""Model merging: ModelMergeSimple, ModelMergeBlocks, ModelMergeAdd, ModelMergeSubtract, ModelMergeSD1,
ModelMergeSD2, ModelMergeSDXL, CLIPMergeSimple, CLIPMergeAdd and CLIPMergeSubtract (ComfyUI's names, inputs
and defaults).

Each returns the first model's handle (its sampling options kept) with a merge recipe: every weight becomes
``self_scale * model1's + other_scale * model2's`` (ComfyUI's strength_model / strength_patch). Nothing is
computed here: the model manager builds the merged weights, one at a time, when a node first needs the
module (engine/models/merging.py), and LoRAs or merges already on either input are baked in. Weights only
one model has, or has in another shape (an inpainting model's first conv), stay the first model's, so
add-difference merges (inpainting or CosXL style: ``A + (B - C)``) are an Add of a Subtract.

The block nodes pick each weight's ratio by the longest input name its UNet name starts with
(``input_blocks.4.`` or ``input``), else by the first input's; ``ratio`` 1 keeps model1, 0 takes model2.
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine.sdk import (
    CLIP,
    FLOAT,
    MODEL,
    ClipHandle,
    Input,
    MergeRule,
    ModelError,
    ModelHandle,
    Node,
    Output,
    RunContext,
)

CATEGORY = "advanced/model_merging"
#: CLIP merges leave these alone (ComfyUI's): token positions and OpenCLIP's logit scale.
CLIP_SKIP = (".position_ids", ".logit_scale")


def _ratio(name: str = "ratio") -> Input:
    return Input(name, FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)


def _multiplier() -> Input:
    return Input("multiplier", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01)


def _same_family(node: str, first: Any, second: Any, what: str) -> None:
    if first.family.name != second.family.name:
        raise ModelError(f"{node}: {what}1 is {first.family.label} but {what}2 is {second.family.label}; merge "
                         f"{what}s of one family (SD1.x with SD1.x, SDXL with SDXL, ...)")


def _blend(ratio: float) -> tuple[float, float]:
    """A ratio of model1: ``ratio * model1 + (1 - ratio) * model2``."""
    return float(ratio), 1.0 - float(ratio)


def merge_models(node: str, model1: ModelHandle, model2: ModelHandle, ratios: dict[str, float]) -> ModelHandle:
    """``model1`` merged with ``model2`` by per-prefix ratios; the first ratio also covers unmatched weights."""
    _same_family(node, model1, model2, "model")
    rules = tuple(MergeRule(prefix, *_blend(ratio)) for prefix, ratio in ratios.items())
    default = _blend(next(iter(ratios.values())))
    return model1.merged_with(model2, rules, default)


class ModelMergeSimple(Node):
    """Blend two models: ``ratio * model1 + (1 - ratio) * model2`` for every weight."""

    category = CATEGORY
    inputs = (Input("model1", MODEL), Input("model2", MODEL), _ratio())
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model1: ModelHandle, model2: ModelHandle, ratio: float) -> tuple[ModelHandle]:
        return (merge_models("ModelMergeSimple", model1, model2, {"": ratio}),)


class ModelMergeBlocks(Node):
    """Blend two models with one ratio for the input blocks, one for the middle and one for the output."""

    category = CATEGORY
    inputs: ClassVar[tuple[Input, ...]] = (Input("model1", MODEL), Input("model2", MODEL), _ratio("input"),
                                          _ratio("middle"), _ratio("out"))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model1: ModelHandle, model2: ModelHandle, **ratios: float) -> tuple[ModelHandle]:
        ordered = {spec.name: float(ratios[spec.name]) for spec in self.inputs if spec.name in ratios}
        return (merge_models(type(self).__name__, model1, model2, ordered),)


class ModelMergeSubtract(Node):
    """``multiplier * (model1 - model2)`` for every weight: the difference a fine-tune made to its base."""

    category = CATEGORY
    inputs = (Input("model1", MODEL), Input("model2", MODEL), _multiplier())
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model1: ModelHandle, model2: ModelHandle, multiplier: float) -> tuple[ModelHandle]:
        _same_family("ModelMergeSubtract", model1, model2, "model")
        scales = (float(multiplier), -float(multiplier))
        return (model1.merged_with(model2, (), scales),)


class ModelMergeAdd(Node):
    """``model1 + model2`` for every weight (add a difference made by ModelMergeSubtract)."""

    category = CATEGORY
    inputs = (Input("model1", MODEL), Input("model2", MODEL))
    outputs = (Output(MODEL),)

    def run(self, ctx: RunContext, model1: ModelHandle, model2: ModelHandle) -> tuple[ModelHandle]:
        _same_family("ModelMergeAdd", model1, model2, "model")
        return (model1.merged_with(model2, (), (1.0, 1.0)),)


def _block_inputs(blocks: int, middle: int, dotted: bool) -> tuple[Input, ...]:
    """ComfyUI's per-block ratio inputs: time_embed., label_emb., input_blocks.N, middle_block.N,
    output_blocks.N (SD1/SD2 with a trailing dot, SDXL without), out."""
    dot = "." if dotted else ""
    names = ["time_embed.", "label_emb.", *(f"input_blocks.{i}{dot}" for i in range(blocks)),
             *(f"middle_block.{i}{dot}" for i in range(middle)), *(f"output_blocks.{i}{dot}" for i in range(blocks)),
             "out."]
    return tuple(_ratio(name) for name in names)


class ModelMergeSD1(ModelMergeBlocks):
    """Blend two SD1.x models with a ratio per UNet block (12 input, 3 middle, 12 output blocks)."""

    category = f"{CATEGORY}/model_specific"
    inputs = (Input("model1", MODEL), Input("model2", MODEL), *_block_inputs(12, 3, dotted=True))


class ModelMergeSD2(ModelMergeSD1):
    """Blend two SD2.x models with a ratio per UNet block (the SD1 layout)."""


class ModelMergeSDXL(ModelMergeBlocks):
    """Blend two SDXL models with a ratio per UNet block (9 input, 3 middle, 9 output blocks)."""

    category = f"{CATEGORY}/model_specific"
    inputs = (Input("model1", MODEL), Input("model2", MODEL), *_block_inputs(9, 3, dotted=False))


class CLIPMergeSimple(Node):
    """Blend two text encoders: ``ratio * clip1 + (1 - ratio) * clip2`` (positions and logit scale kept)."""

    category = CATEGORY
    inputs = (Input("clip1", CLIP), Input("clip2", CLIP), _ratio())
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip1: ClipHandle, clip2: ClipHandle, ratio: float) -> tuple[ClipHandle]:
        _same_family("CLIPMergeSimple", clip1, clip2, "clip")
        return (clip1.merged_with(clip2, (), _blend(ratio), CLIP_SKIP),)


class CLIPMergeSubtract(Node):
    """``multiplier * (clip1 - clip2)`` for every text-encoder weight (positions and logit scale kept)."""

    category = CATEGORY
    inputs = (Input("clip1", CLIP), Input("clip2", CLIP), _multiplier())
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip1: ClipHandle, clip2: ClipHandle, multiplier: float) -> tuple[ClipHandle]:
        _same_family("CLIPMergeSubtract", clip1, clip2, "clip")
        return (clip1.merged_with(clip2, (), (float(multiplier), -float(multiplier)), CLIP_SKIP),)


class CLIPMergeAdd(Node):
    """``clip1 + clip2`` for every text-encoder weight (positions and logit scale kept)."""

    category = CATEGORY
    inputs = (Input("clip1", CLIP), Input("clip2", CLIP))
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip1: ClipHandle, clip2: ClipHandle) -> tuple[ClipHandle]:
        _same_family("CLIPMergeAdd", clip1, clip2, "clip")
        return (clip1.merged_with(clip2, (), (1.0, 1.0), CLIP_SKIP),)


MODEL_MERGING_NODES: tuple[type[Node], ...] = (
    ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, ModelMergeSD1, ModelMergeSD2,
    ModelMergeSDXL, CLIPMergeSimple, CLIPMergeSubtract, CLIPMergeAdd,
)
