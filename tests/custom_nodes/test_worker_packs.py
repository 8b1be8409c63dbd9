"""A cluster worker (engine/cluster/actor.py's LoomWorker, built here in-process as Ray builds it on a worker)
loads the same ComfyUI custom node packs as the front, from the folders its settings name."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from engine.cluster.actor import LoomWorker, WorkerConfig
from engine.settings import Settings

PACK = '''
class Shout:
    CATEGORY = "test"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "shout"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}

    def shout(self, text):
        return (text.upper(),)


NODE_CLASS_MAPPINGS = {"LoomWorkerShout": Shout}
'''


def test_a_worker_registers_the_packs_of_its_settings(tmp_path: Path) -> None:
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    name = f"loom_worker_pack_{uuid.uuid4().hex[:8]}"
    (custom / f"{name}.py").write_text(PACK)
    settings = Settings(models_dirs=(tmp_path / "models",), device="cpu", custom_nodes_dirs=(custom,))
    try:
        worker = LoomWorker(WorkerConfig(worker_id="w1", settings=settings, scratch_dir=str(tmp_path / "scratch")))
        assert "LoomWorkerShout" in worker.registry
        [report] = worker.registry.custom_packs
        assert report.name == name and report.status == "loaded"
        disabled = settings.model_copy(update={"disable_custom_nodes": True})
        bare = LoomWorker(WorkerConfig(worker_id="w2", settings=disabled, scratch_dir=str(tmp_path / "scratch2")))
        assert "LoomWorkerShout" not in bare.registry and bare.registry.custom_packs == []
    finally:
        sys.modules.pop(name, None)
