"""The API answers /system_stats, /object_info, /openapi.json and the editor without importing torch:
a fresh process serves them and is checked for torch and transformers afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SERVE_AND_ASK = """
import asyncio, json, sys
from pathlib import Path
import aiohttp
from engine.api import Hub, bound_port, create_app, start_server
from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.settings import Settings

class IdleWorker:
    def interrupt(self, prompt_id=None): return False
    def request_free(self, unload_models, free_memory): pass
    def describe(self): return None
    def stats(self): return {}

async def main(root):
    settings = Settings(port=0, data_dir=root / "data", input_dir=root / "in", output_dir=root / "out",
                        temp_dir=root / "tmp", frontend_dir=Path("frontend"), models_dirs=(Path("models"),))
    settings.data_dir.mkdir(parents=True)
    queue = PromptQueue(settings.database_path)
    runner = await start_server(create_app(settings, NodeRegistry(), queue, IdleWorker(), Hub()), settings)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    answers = {}
    async with aiohttp.ClientSession() as session:
        for path in ("/system_stats", "/object_info", "/openapi.json", "/", "/frontend/src/api.js",
                     "/loom/default-workflow", "/models/checkpoints"):
            async with session.get(base + path) as reply:
                body = await reply.read()
                answers[path] = [reply.status, json.loads(body) if path == "/system_stats" else len(body)]
    await runner.cleanup()
    queue.close()
    answers["modules"] = [m for m in ("torch", "transformers") if m in sys.modules]
    print(json.dumps(answers))

asyncio.run(main(Path(sys.argv[1])))
"""


def test_serving_the_editor_and_system_stats_imports_no_torch(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SERVE_AND_ASK, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers.pop("modules") == []
    stats_status, stats = answers.pop("/system_stats")
    assert stats_status == 200
    assert stats["system"]["pytorch_version"] == metadata.version("torch")
    assert [device["type"] for device in stats["devices"]] == ["cpu"]
    assert stats["devices"][0]["vram_total"] == stats["system"]["ram_total"] > 0
    for path, (status, size) in answers.items():
        assert status == 200 and size > 0, path
