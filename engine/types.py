"""Socket type names and the rules for linking them.

Values that travel on edges follow ComfyUI's conventions so its workflows mean the same here:
IMAGE is a float tensor [B,H,W,C] in 0..1, MASK is [B,H,W], LATENT is a dict
{"samples": [B,C,h,w], optional "noise_mask", optional "batch_index"}. MODEL, CLIP, VAE and
CONTROL_NET are small immutable handles (see engine/models).
"""

from __future__ import annotations

from typing import Final

MODEL: Final = "MODEL"
CLIP: Final = "CLIP"
VAE: Final = "VAE"
CONDITIONING: Final = "CONDITIONING"
LATENT: Final = "LATENT"
IMAGE: Final = "IMAGE"
MASK: Final = "MASK"
CONTROL_NET: Final = "CONTROL_NET"
INT: Final = "INT"
FLOAT: Final = "FLOAT"
STRING: Final = "STRING"
BOOLEAN: Final = "BOOLEAN"
COMBO: Final = "COMBO"
ANY: Final = "*"
#: Custom sampling (SamplerCustom and friends): a sampler (name + options), a sigma schedule (1-D tensor),
#: a noise source (seeded or disabled) and a guider (model + conditionings + guidance kind).
SAMPLER: Final = "SAMPLER"
SIGMAS: Final = "SIGMAS"
NOISE: Final = "NOISE"
GUIDER: Final = "GUIDER"
#: The editor's webcam widget (WebcamCapture): its value is the name of the uploaded capture, a string.
WEBCAM: Final = "WEBCAM"

#: Types whose inputs are edited as widgets (they may also be fed by a link).
WIDGET_TYPES: Final = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO, WEBCAM})
#: Widget types whose literal value is text.
TEXT_TYPES: Final = frozenset({STRING, WEBCAM})


def _members(type_name: str) -> set[str]:
    return {part.strip() for part in type_name.split(",") if part.strip()}


def can_link(output_type: str, input_type: str) -> bool:
    """Whether an output of ``output_type`` may feed an input of ``input_type``.

    Equal names match, ``*`` matches anything, and comma-separated unions match when they
    share a member (ComfyUI's rule). A COMBO input accepts a COMBO or STRING output.
    """
    if ANY in (output_type, input_type) or output_type == input_type:
        return True
    if input_type == COMBO and output_type in (COMBO, STRING):
        return True
    return bool(_members(output_type) & _members(input_type))
