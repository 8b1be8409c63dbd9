"""A training loss curve drawn as an IMAGE (LossGraphNode): axes, the curve, and the min / max loss and the
step range written on the axes. Drawn with PIL's built-in font, so it needs no font files."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["loss_graph_image"]

WIDTH, HEIGHT = 800, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 30, 40, 50
BACKGROUND, AXES, CURVE, TEXT = (255, 255, 255), (40, 40, 40), (31, 119, 180), (20, 20, 20)


def _points(losses: Sequence[float], box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    left, top, right, bottom = box
    low, high = min(losses), max(losses)
    span = high - low or 1.0
    last = max(len(losses) - 1, 1)
    return [(left + (right - left) * i / last, bottom - (bottom - top) * (loss - low) / span)
            for i, loss in enumerate(losses)]


def loss_graph_image(losses: Sequence[float], title: str = "Training loss") -> Tensor:
    """The curve of ``losses`` (one value per step) as an IMAGE ``[1, H, W, 3]`` in 0..1."""
    values = [float(v) for v in losses if np.isfinite(v)]
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    box = (MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM)
    left, top, right, bottom = box
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXES, width=2)
    draw.text((left, 12), title, fill=TEXT, font=font)
    if values:
        low, high = min(values), max(values)
        draw.text((8, top - 6), f"{high:.4g}", fill=TEXT, font=font)
        draw.text((8, bottom - 6), f"{low:.4g}", fill=TEXT, font=font)
        draw.text((left, bottom + 8), "1", fill=TEXT, font=font)
        draw.text((right - 30, bottom + 8), str(len(values)), fill=TEXT, font=font)
        draw.text(((left + right) // 2 - 15, bottom + 24), "step", fill=TEXT, font=font)
        points = _points(values, box)
        if len(points) > 1:
            draw.line(points, fill=CURVE, width=2)
        else:
            x, y = points[0]
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=CURVE)
    else:
        draw.text((left + 20, (top + bottom) // 2), "no loss values", fill=TEXT, font=font)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]
