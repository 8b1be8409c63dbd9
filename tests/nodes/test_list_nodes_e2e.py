"""The built-in list nodes through the real executor: RebatchImages / RebatchLatents fan out downstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.cache import OutputCache
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes


def _executor(folders: Folders) -> Executor:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return Executor(registry, folders, OutputCache(2**28, 1000))


def test_rebatched_images_run_the_next_nodes_once_per_batch(folders: Folders) -> None:
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 5, "color": 0x102030}},
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "rebatch"}},
        "5": {"class_type": "GetImageSize", "inputs": {"image": ["2", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
    }
    outcome = _executor(folders).execute(prompt, "p", ListSink())
    assert outcome.status_str == "success", outcome.messages
    saved = outcome.outputs["4"]["images"]
    assert len(saved) == 5  # three SaveImage calls (2 + 2 + 1 images), UI lists merged
    assert all(Path(folders.output_dir, item["subfolder"], item["filename"]).is_file() for item in saved)
    assert outcome.outputs["6"]["text"] == ["2", "2", "1"]  # batch sizes, one PreviewAny call per batch


def test_rebatched_latents_keep_every_sample(folders: Folders) -> None:
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "3": {"class_type": "LatentBatch", "inputs": {"samples1": ["1", 0], "samples2": ["2", 0]}},
        "4": {"class_type": "RebatchLatents", "inputs": {"latents": ["3", 0], "batch_size": 4}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    }
    outcome = _executor(folders).execute(prompt, "p", ListSink())
    assert outcome.status_str == "success", outcome.messages
    first, second = outcome.outputs["5"]["text"]  # batches of 4 and 1, LatentBatch's indices kept
    assert first.endswith("'batch_index': [0, 1, 2, 0]}") and second.endswith("'batch_index': [1]}")
