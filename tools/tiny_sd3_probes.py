"""The probes of the SD3 demo's layout phases: linear heads on the T5 output that must tell what the caption says.

They are trained with the diffusion loss and thrown away (never saved). Each breaks a circle in which the text
encoder and the MMDiT use only what the other already uses (tools/README.md, "The SD3-family demo").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tools.tiny_sd3_sample import PromptIds
from tools.tiny_shapes_data import COLORS, SHAPES, ShapeSpec
from tools.train_tiny_shapes import PositionProbe


class CaptionProbe(nn.Module):
    """Linear heads that read what the caption says from the T5 output's mean over tokens: the column and the
    row of the position (:class:`~tools.train_tiny_shapes.PositionProbe`), the shape's colour, the
    background's colour and the shape, each with a "not said" class. Used only while training, never saved.

    Why: the text encoder and the MMDiT start each other off only on what the other already uses. After
    the first phase the MMDiT ignored the position words (the loss with them removed was the same) and the
    T5 output barely changed with them (the position probe fixed that); then "a red circle on a blue
    background" and "a blue circle on a red background" gave the same image for a seed. Asking the pooled
    output for each colour's role makes the encoder represent which colour is which (whether the MMDiT then
    uses it is another matter: tools/README.md).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.position = PositionProbe(width)
        self.color = nn.Linear(width, len(COLORS) + 1)
        self.background = nn.Linear(width, len(COLORS) + 1)
        self.shape = nn.Linear(width, len(SHAPES) + 1)

    def loss(self, context: Tensor, specs: Sequence[ShapeSpec], captions: Sequence[str]) -> Tensor:
        pooled = context.mean(dim=1)
        labels = self.labels(specs, captions).to(context.device)
        position = self.position.loss(context, PositionProbe.labels(specs, captions).to(context.device))
        heads = (self.color, self.background, self.shape)
        return position + sum((F.cross_entropy(head(pooled), labels[:, i]) for i, head in enumerate(heads)),
                              torch.zeros((), device=context.device))

    @staticmethod
    def labels(specs: Sequence[ShapeSpec], captions: Sequence[str]) -> Tensor:
        """(colour, background, shape) per caption; the last class of each where the caption does not say it."""
        rows = [(COLORS.index(spec.color) if text else len(COLORS),
                 COLORS.index(spec.background) if "background" in text else len(COLORS),
                 SHAPES.index(spec.shape) if text else len(SHAPES))
                for spec, text in zip(specs, captions, strict=True)]
        return torch.tensor(rows, dtype=torch.long)


class RoleProbe(CaptionProbe):
    """:class:`CaptionProbe`, plus a head on every colour word's own T5 output that must tell whether the word
    names the shape's colour or the background's (the first or the second colour of a caption).

    Why: after the pooled probe, the T5 outputs of "a red circle on a blue background" and "a blue circle on a
    red background" differed by 17% but the MMDiT's velocity at sigma 1 by 0.2%. The MMDiT reads a colour from
    its word's token; this head makes that token say the role too. (800 steps with it left the 0.2% as it was.)
    """

    color_ids: Tensor

    def __init__(self, width: int, color_ids: Sequence[int]) -> None:
        super().__init__(width)
        self.role = nn.Linear(width, 2)
        self.register_buffer("color_ids", torch.tensor(sorted(color_ids), dtype=torch.long), persistent=False)

    def token_loss(self, context: Tensor, ids: Tensor) -> Tensor:
        """Cross-entropy of the role (0: the shape's colour, 1: the background's) at every colour word's token."""
        is_color = torch.isin(ids, self.color_ids)
        role = (is_color.cumsum(dim=1) - 1).clamp(min=0)  # the first colour word of a caption is the shape's
        if not bool(is_color.any()):
            return torch.zeros((), device=context.device)
        return F.cross_entropy(self.role(context[is_color]), role[is_color])


def color_token_ids(ids: PromptIds) -> list[int]:
    """The token id of each palette colour word (each must be a single piece of the tokenizer)."""
    pieces = {color: ids.tokenizer.encode_word(color) for color in COLORS}
    split = {color: piece for color, piece in pieces.items() if len(piece) != 1}
    if split:
        raise ValueError(f"the role probe needs one token per colour word; the tokenizer splits {split}")
    return [piece[0] for piece in pieces.values()]


PROBES = {"position": 9, "caption": 10, "roles": 11}  # probe kind -> random stream of its layout phase
