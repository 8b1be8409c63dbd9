"""Published step tables: Align Your Steps (Sabour et al. 2024) and GITS (Chen et al. 2024).

Both give, for a model kind (or a GITS coefficient), the sigmas an optimised sampler visits, from
sigma_max down to sigma_min. Other step counts are reached by :func:`loglinear_interp`; the last
sigma is replaced by 0, as ComfyUI's AlignYourStepsScheduler and GITSScheduler do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: NVIDIA's published 10-step Align Your Steps noise levels (research.nvidia.com/labs/toronto-ai/AlignYourSteps).
AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
AYS_MODEL_TYPES = tuple(AYS_NOISE_LEVELS)

_GITS_FILE = Path(__file__).with_name("data") / "gits_noise_levels.json"


def loglinear_interp(sigmas: Sequence[float], num: int) -> np.ndarray:
    """``num`` values of a decreasing sequence, interpolated linearly in log sigma at evenly spaced
    positions from its first to its last element (float64)."""
    ascending = np.log(np.asarray(sigmas, dtype=np.float64)[::-1])
    positions = np.linspace(0, 1, len(ascending))
    wanted = np.linspace(0, 1, num)
    return np.exp(np.interp(wanted, positions, ascending))[::-1].copy()


def _finish(sigmas: Sequence[float] | np.ndarray, steps: int, denoise: float) -> Tensor:
    """The last ``round(steps * denoise) + 1`` sigmas with the final one set to 0 (float32)."""
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    out = torch.tensor(np.asarray(sigmas, dtype=np.float64)[-(kept + 1):], dtype=torch.float32)
    out[-1] = 0
    return out


def align_your_steps(model_type: str, steps: int, denoise: float = 1.0) -> Tensor:
    """AYS sigmas for ``steps`` steps: the 10-step table of ``model_type`` (SD1, SDXL, SVD),
    log-linearly interpolated to steps + 1 values, the last round(steps * denoise) + 1 kept, the last 0."""
    try:
        table = AYS_NOISE_LEVELS[model_type]
    except KeyError:
        raise ValueError(f"unknown Align Your Steps model type {model_type!r}; choose one of "
                         f"{', '.join(AYS_MODEL_TYPES)}") from None
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    sigmas = np.asarray(table) if steps + 1 == len(table) else loglinear_interp(table, steps + 1)
    return _finish(sigmas, steps, denoise)


@cache
def gits_tables() -> dict[float, tuple[tuple[float, ...], ...]]:
    """GITS's published SD1.5 tables: coefficient -> row k holds the sigmas for k + 2 steps (2..20)."""
    raw = json.loads(_GITS_FILE.read_text(encoding="utf-8"))
    return {round(float(coeff), 2): tuple(tuple(row) for row in rows) for coeff, rows in raw.items()}


def gits(coeff: float, steps: int, denoise: float = 1.0) -> Tensor:
    """GITS sigmas: the table row for ``steps`` (2..20) of coefficient ``coeff`` (0.80..1.50 in 0.05
    steps); more steps interpolate the 20-step row log-linearly. Denoise and the final 0 as AYS."""
    tables = gits_tables()
    key = round(coeff, 2)
    if key not in tables:
        raise ValueError(f"GITS has no table for coeff {coeff}; use a multiple of 0.05 from "
                         f"{min(tables):.2f} to {max(tables):.2f}")
    if steps < 2:
        raise ValueError(f"GITS needs at least 2 steps, got {steps}")
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    rows = tables[key]
    sigmas = np.asarray(rows[steps - 2]) if steps <= 20 else loglinear_interp(rows[-1], steps + 1)
    return _finish(sigmas, steps, denoise)
