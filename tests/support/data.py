"""Paths of the data files in tests/data/ (kept in the repository, so no test reads anything beside it)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"

#: Every tensor of a real SD1.5 checkpoint: ``name<TAB>dtype<TAB>[d0, d1, ...]`` per line.
SD15_CHECKPOINT_KEYS = DATA / "sd15-checkpoint-keys.tsv"
