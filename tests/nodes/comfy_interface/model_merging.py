"""ComfyUI's interface for the model-merging nodes (comfy_extras/nodes_model_merging.py and
nodes_model_merging_model_specific.py)."""

from __future__ import annotations

from typing import Any

RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
MULTIPLIER = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
MODELS = [("model1", "MODEL", {}), ("model2", "MODEL", {})]
CLIPS = [("clip1", "CLIP", {}), ("clip2", "CLIP", {})]


def _blocks(count: int, dot: str) -> list[tuple[str, str, dict[str, Any]]]:
    names = ["time_embed.", "label_emb.", *(f"input_blocks.{i}{dot}" for i in range(count)),
             *(f"middle_block.{i}{dot}" for i in range(3)), *(f"output_blocks.{i}{dot}" for i in range(count)), "out."]
    return [(name, "FLOAT", RATIO) for name in names]


def _model(required: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    return {"required": required, "output": ["MODEL"], "output_name": ["MODEL"]}


def _clip(required: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    return {"required": required, "output": ["CLIP"], "output_name": ["CLIP"]}


EXPECTED: dict[str, dict[str, Any]] = {
    "ModelMergeSimple": _model([*MODELS, ("ratio", "FLOAT", RATIO)]),
    "ModelMergeBlocks": _model([*MODELS, ("input", "FLOAT", RATIO), ("middle", "FLOAT", RATIO),
                                ("out", "FLOAT", RATIO)]),
    "ModelMergeSubtract": _model([*MODELS, ("multiplier", "FLOAT", MULTIPLIER)]),
    "ModelMergeAdd": _model(MODELS),
    "ModelMergeSD1": _model([*MODELS, *_blocks(12, ".")]),
    "ModelMergeSD2": _model([*MODELS, *_blocks(12, ".")]),
    "ModelMergeSDXL": _model([*MODELS, *_blocks(9, "")]),
    "CLIPMergeSimple": _clip([*CLIPS, ("ratio", "FLOAT", RATIO)]),
    "CLIPMergeSubtract": _clip([*CLIPS, ("multiplier", "FLOAT", MULTIPLIER)]),
    "CLIPMergeAdd": _clip(CLIPS),
}
