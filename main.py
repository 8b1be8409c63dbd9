"""Loom's command line.

    python main.py [--listen HOST] [--port N] ...          serve the API and the graph editor
    python main.py run WORKFLOW.json [--set ID.INPUT=VALUE]  run a workflow headless

Builds one Settings object and wires registry + executor + queue + worker + server. Serving and
headless runs go through the same executor.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.cache import OutputCache
from engine.errors import LoomError, ValidationFailed
from engine.events import Event, Executing, ExecutionError, Progress
from engine.executor import Executor
from engine.models.manager import ModelManager, pick_device
from engine.registry import NodeRegistry
from engine.settings import Settings
from engine.validate import validate_prompt
from engine.workflow import is_ui_workflow, ui_to_api

log = logging.getLogger("loom")


def build_registry(extra_node_modules: Sequence[str] = ()) -> NodeRegistry:
    """The built-in nodes plus any ``--extra-nodes`` modules (each exposes ``register(registry)``)."""
    from nodes import register_builtin_nodes

    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for name in extra_node_modules:
        module = importlib.import_module(name)
        module.register(registry)
    return registry


def build_model_manager(settings: Settings) -> ModelManager:
    return ModelManager(pick_device(settings.device), vram=settings.vram_mode, vram_budget=settings.vram_budget,
                        ram_budget=settings.ram_budget)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", action="append", type=Path, default=None,
                        help="a model root (repeatable): Loom's, ComfyUI's or AUTOMATIC1111's models folder")
    parser.add_argument("--input-dir", type=Path, default=Path("input"))
    parser.add_argument("--output-dir", type=Path, default=Path("output"))
    parser.add_argument("--temp-dir", type=Path, default=Path("temp"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="queue and history database")
    parser.add_argument("--cache-bytes", type=int, default=2 * 1024**3, help="output cache budget")
    parser.add_argument("--extra-nodes", action="append", default=[], metavar="MODULE",
                        help="import MODULE and call its register(registry) (repeatable)")
    parser.add_argument("--device", default="auto", help="compute device: auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--vram", choices=["high", "normal", "low", "none", "cpu"], default="normal",
                        help="model placement on the device (default normal: least recently used offloaded)")
    parser.add_argument("--vram-budget", type=int, default=None, metavar="BYTES",
                        help="device bytes for models and working memory (default: free memory minus a reserve)")
    parser.add_argument("--ram-budget", type=int, default=None, metavar="BYTES",
                        help="RAM bytes for loaded models; idle ones beyond it are unloaded")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO; WARNING for run)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    if argv and argv[0] == "run":
        parser = argparse.ArgumentParser(prog="main.py run", description="Run a workflow headless.")
        parser.add_argument("workflow", type=Path, help="workflow JSON (API or editor format) or PNG")
        parser.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE",
                            help="override an input; ID is a node id or title (repeatable)")
        _common_arguments(parser)
        args = parser.parse_args(argv[1:])
        args.command = "run"
        return args
    parser = argparse.ArgumentParser(prog="main.py", description="Serve Loom's API and graph editor.",
                                     epilog="Use 'main.py run WORKFLOW.json' to run a workflow headless.")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--auth-token", default=None,
                        help="require this bearer token (or set LOOM_AUTH_TOKEN); needed off loopback")
    parser.add_argument("--frontend-dir", type=Path, default=Path(__file__).parent / "frontend")
    parser.add_argument("--preview-method", choices=["none", "latent2rgb"], default="none")
    parser.add_argument("--cluster", default=None, metavar="auto|ADDRESS",
                        help="run prompts on Ray workers (pip install -e '.[cluster]'): 'auto' joins this "
                             "machine's Ray cluster or starts a local one; or a Ray address (ray://HOST:10001)")
    parser.add_argument("--cluster-workers", type=int, default=None, metavar="N",
                        help="most Ray workers (default: one per GPU, or per --worker-cpus CPUs)")
    parser.add_argument("--worker-cpus", type=float, default=1.0,
                        help="CPUs per Ray worker on a cluster without GPUs (default 1)")
    _common_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "serve"
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    fields: dict[str, Any] = {
        "models_dirs": tuple(args.models_dir or [Path(__file__).parent / "models"]),
        "input_dir": args.input_dir, "output_dir": args.output_dir, "temp_dir": args.temp_dir,
        "data_dir": args.data_dir, "cache_bytes": args.cache_bytes, "device": args.device,
        "vram_mode": args.vram, "vram_budget": args.vram_budget, "ram_budget": args.ram_budget,
    }
    if args.command == "serve":
        fields.update(host=args.listen, port=args.port, frontend_dir=args.frontend_dir,
                      auth_token=args.auth_token or os.environ.get("LOOM_AUTH_TOKEN") or None,
                      preview_method=args.preview_method, cluster=args.cluster,
                      cluster_workers=args.cluster_workers, worker_cpus=args.worker_cpus,
                      extra_nodes=tuple(args.extra_nodes))
    return Settings(**fields)


def serve(settings: Settings, registry: NodeRegistry) -> None:
    from engine.api.hub import Hub
    from engine.api.server import create_app, start_server
    from engine.queue import PromptQueue
    from engine.worker import PromptRunner, PromptWorker

    folders = settings.folders()
    folders.ensure()
    queue = PromptQueue(settings.database_path, max_pending=settings.max_queue,
                        max_history=settings.max_history)
    hub = Hub()
    worker: PromptRunner
    cache: OutputCache | None = None
    if settings.cluster:  # prompts run on Ray actors, each with its own executor, models and cache
        try:
            from engine.cluster.setup import build_cluster_runner
        except ModuleNotFoundError as exc:
            if exc.name != "ray":
                raise
            queue.close()
            raise LoomError("--cluster needs Ray: install it with .venv/bin/pip install -e '.[cluster]'") from exc
        worker = build_cluster_runner(settings, registry, queue, hub.sink_for)
    else:
        cache = OutputCache(settings.cache_bytes, settings.cache_entries)
        executor = Executor(registry, folders, cache, build_model_manager(settings),
                            previews=settings.preview_method != "none")
        worker = PromptWorker(queue, executor, hub.sink_for)  # POST /free unloads executor.models
    app = create_app(settings, registry, queue, worker, hub, cache=cache)

    async def main() -> None:
        runner = await start_server(app, settings)
        await asyncio.to_thread(worker.start)  # a cluster's first workers may take a while
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        worker.stop()
        queue.close()


def load_workflow(path: Path, registry: NodeRegistry) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API prompt, extra_pnginfo) from a workflow JSON file or a PNG made by Loom or ComfyUI."""
    if path.suffix.lower() == ".png":
        from engine.pngmeta import read_png_metadata

        meta = read_png_metadata(path.read_bytes())
        data: Any = meta.get("workflow") or meta.get("prompt")
        if data is None:
            raise LoomError(f"{path} carries no workflow: it was not saved by Loom or ComfyUI")
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
    if is_ui_workflow(data):
        return ui_to_api(data, registry), {"workflow": data}
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    return data, {}


def apply_overrides(prompt: dict[str, Any], overrides: Sequence[str]) -> None:
    """``ID.INPUT=VALUE``: ID is a node id or its title; VALUE is JSON when it parses, else text."""
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise LoomError(f"--set {item!r}: write it as ID.INPUT=VALUE, e.g. --set 6.text=\"a cat\"")
        node_id = _find_node(prompt, node_ref)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[node_id]["inputs"][input_name] = value


def _find_node(prompt: dict[str, Any], ref: str) -> str:
    if ref in prompt:
        return ref
    matches = [nid for nid, node in prompt.items() if (node.get("_meta") or {}).get("title") == ref]
    if len(matches) == 1:
        return matches[0]
    titles = sorted({str((n.get("_meta") or {}).get("title")) for n in prompt.values()})
    problem = "is ambiguous" if matches else "matches no node id or title"
    raise LoomError(f"--set: {ref!r} {problem}; node ids: {', '.join(sorted(prompt))}; titles: {titles}")


class _ConsoleSink:
    """Shows headless progress with tqdm on stderr and collects errors."""

    def __init__(self, prompt: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(prompt), unit="node", file=sys.stderr, leave=False)
        self.errors: list[ExecutionError] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Executing) and event.node is not None:
                self.bar.update(1)
                self.bar.set_description(f"node {event.node}")
            elif isinstance(event, Progress):
                self.bar.set_postfix_str(f"step {event.value}/{event.max}")
            elif isinstance(event, ExecutionError):
                self.errors.append(event)


def run_headless(settings: Settings, registry: NodeRegistry, path: Path, overrides: Sequence[str]) -> int:
    prompt, extra_pnginfo = load_workflow(path, registry)
    apply_overrides(prompt, overrides)
    folders = settings.folders()
    folders.ensure()
    validate_prompt(prompt, registry, folders)  # readable errors before any work
    models = build_model_manager(settings)
    executor = Executor(registry, folders, OutputCache(settings.cache_bytes, settings.cache_entries), models)
    sink = _ConsoleSink(prompt)
    outcome = executor.execute(prompt, uuid.uuid4().hex, sink, extra_data={"extra_pnginfo": extra_pnginfo})
    sink.bar.close()
    for error in sink.errors:
        sys.stderr.write(f"error in node {error.node_id} ({error.node_type}): {error.exception_message}\n")
    for ui in outcome.outputs.values():
        for image in ui.get("images", []):
            path_out = folders.file_path(image.get("type", "output"), image["filename"], image.get("subfolder", ""))
            sys.stdout.write(f"{path_out}\n")
    return 0 if outcome.status_str == "success" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    level = args.log_level or ("WARNING" if args.command == "run" else "INFO")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
        registry = build_registry(args.extra_nodes)
        if args.command == "run":
            return run_headless(settings, registry, args.workflow, args.set)
        serve(settings, registry)
        return 0
    except ValidationFailed as exc:
        for node_id, entry in exc.to_response()["node_errors"].items():
            for err in entry["errors"]:
                sys.stderr.write(f"node {node_id} ({entry['class_type']}): {err['details']}\n")
        if not exc.to_response()["node_errors"]:
            sys.stderr.write(f"{exc.to_response()['error']['details']}\n")
        return 2
    except ValidationError as exc:
        sys.stderr.write(f"invalid settings: {exc.errors()[0]['msg']}\n")
        return 2
    except (LoomError, OSError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
