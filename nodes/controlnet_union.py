"""SetUnionControlNetType: tell a union ControlNet (ControlNet++ / ProMax) which kind of hint it sees."""

from __future__ import annotations

from dataclasses import replace

from engine.sdk import COMBO, CONTROL_NET, ControlNetHandle, Input, Node, Output, RunContext

#: ComfyUI's choices: "auto" then its union types in index order (engine/backend/controlnet_union.py).
UNION_TYPE_NAMES = ("auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd",
                    "normal", "segment", "tile", "repaint")


class SetUnionControlNetType(Node):
    """A copy of a CONTROL_NET that runs a union ControlNet as the chosen control type ("auto": none set)."""

    display_name = "SetUnionControlNetType"
    category = "conditioning/controlnet"
    inputs = (Input("control_net", CONTROL_NET),
              Input("type", COMBO, choices=UNION_TYPE_NAMES,
                    tooltip="The kind of hint image the union ControlNet receives; auto lets it guess."))
    outputs = (Output(CONTROL_NET),)

    def run(self, ctx: RunContext, control_net: ControlNetHandle, type: str) -> tuple[ControlNetHandle]:  # noqa: A002
        if type not in UNION_TYPE_NAMES:
            raise ValueError(f"node {ctx.node_id} (SetUnionControlNetType): type {type!r} is not one of "
                             f"{', '.join(UNION_TYPE_NAMES)}; pick one of those")
        index = UNION_TYPE_NAMES.index(type) - 1
        return (replace(control_net, union_type=None if index < 0 else index),)


CONTROLNET_UNION_NODES: tuple[type[Node], ...] = (SetUnionControlNetType,)
