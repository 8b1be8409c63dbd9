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
from typing import Any, get_args

from pydantic import ValidationError

from engine.cache import OutputCache
from engine.errors import LoomError, ValidationFailed
from engine.events import Event, Executing, ExecutionError, Progress
from engine.executor import Executor
from engine.malloc_tuning import tune_malloc
from engine.providers import DeferredModels, ModelProvider
from engine.registry import NodeRegistry
from engine.settings import Settings
from engine.validate import validate_prompt
from engine.workflow import is_ui_workflow, ui_to_api

log = logging.getLogger("loom")

HERE = Path(__file__).parent


def build_registry(extra_node_modules: Sequence[str] = (), settings: Settings | None = None) -> NodeRegistry:
    """The built-in nodes, any ``--extra-nodes`` modules (each exposes ``register(registry)``) and, with
    ``settings``, the ComfyUI custom node packs of its custom nodes folders (unless disabled)."""
    from nodes import register_builtin_nodes

    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for name in extra_node_modules:
        module = importlib.import_module(name)
        module.register(registry)
    if settings is not None and not settings.disable_custom_nodes:
        from engine.custom_nodes.packs import load_packs

        load_packs(settings.custom_nodes_dirs, registry, settings.folders())
    return registry


def build_model_manager(settings: Settings) -> ModelProvider:
    """The ModelManager (this imports torch: call it where torch is wanted, or on a background thread)."""
    from engine.models.manager import ModelManager, pick_device

    return ModelManager(pick_device(settings.device), vram=settings.vram_mode, vram_budget=settings.vram_budget,
                        ram_budget=settings.ram_budget)


def _setting(parser: argparse.ArgumentParser, flag: str, field: str, *, note: str = "", **options: Any) -> None:
    """An option for one Settings field: its default and help come from the field (``note`` adds to the help)."""
    info = Settings.model_fields[field]
    options.setdefault("default", info.get_default(call_default_factory=True))
    shown = " (default: %(default)s)" if options["default"] is not None and options.get("action") != "append" else ""
    options["help"] = " ".join(filter(None, [info.description, note])) + shown or None
    parser.add_argument(flag, **options)


def _checkout_default(field: str) -> Any:
    """A Settings path default, resolved in this checkout (so Loom finds its own folders from any directory)."""
    default = Settings.model_fields[field].default
    return tuple(HERE / path for path in default) if isinstance(default, tuple) else HERE / default


def load_node_backends() -> None:
    """Import the torch half of the node SDK (torch, transformers, the backend), so the first prompt
    does not wait for it; the server calls this on a background thread right after it listens."""
    for module in ("engine.sdk.ops", "engine.sdk.imaging", "engine.sdk.files"):
        importlib.import_module(module)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "--models-dir", "models_dirs", action="append", type=Path, default=None,
             note="Repeatable: Loom's, ComfyUI's or AUTOMATIC1111's models folder "
                  f"(default: {', '.join(map(str, _checkout_default('models_dirs')))}).")
    _setting(parser, "--input-dir", "input_dir", type=Path)
    _setting(parser, "--output-dir", "output_dir", type=Path)
    _setting(parser, "--temp-dir", "temp_dir", type=Path)
    _setting(parser, "--data-dir", "data_dir", type=Path)
    _setting(parser, "--cache-bytes", "cache_bytes", type=int)
    _setting(parser, "--extra-nodes", "extra_nodes", action="append", default=[], metavar="MODULE",
             note="Repeatable.")
    _setting(parser, "--custom-nodes-dir", "custom_nodes_dirs", action="append", default=[], type=Path,
             metavar="DIR", note=f"Repeatable (default: {_checkout_default('custom_nodes_dirs')[0]}).")
    _setting(parser, "--disable-custom-nodes", "disable_custom_nodes", action="store_true")
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                        help="Leave glibc's malloc settings as they are (by default freed tensor memory is kept in "
                             "the heap for reuse: engine/malloc_tuning.py).")
    _setting(parser, "--device", "device")
    _setting(parser, "--vram", "vram_mode", choices=get_args(Settings.model_fields["vram_mode"].annotation))
    _setting(parser, "--vram-budget", "vram_budget", type=int, metavar="BYTES")
    _setting(parser, "--ram-budget", "ram_budget", type=int, metavar="BYTES")
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
    _setting(parser, "--listen", "host")
    _setting(parser, "--port", "port", type=int)
    _setting(parser, "--auth-token", "auth_token", note="Or set LOOM_AUTH_TOKEN.")
    _setting(parser, "--frontend", "frontend", choices=get_args(Settings.model_fields["frontend"].annotation))
    _setting(parser, "--frontend-dir", "frontend_dir", type=Path, default=_checkout_default("frontend_dir"),
             note="With --frontend comfyui: the static folder of a ComfyUI frontend build.")
    _setting(parser, "--preview-method", "preview_method", choices=["none", "auto", "latent2rgb", "taesd"])
    _setting(parser, "--user-dir", "user_dir", type=Path)
    _setting(parser, "--multi-user", "multi_user", action="store_true")
    _setting(parser, "--cluster", "cluster", metavar="auto|ADDRESS",
             note="Needs Ray: pip install -e '.[cluster]'. An address is e.g. ray://HOST:10001.")
    _setting(parser, "--cluster-workers", "cluster_workers", type=int, metavar="N")
    _setting(parser, "--worker-cpus", "worker_cpus", type=float)
    _common_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "serve"
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    fields: dict[str, Any] = {
        "models_dirs": tuple(args.models_dir or _checkout_default("models_dirs")),
        "input_dir": args.input_dir, "output_dir": args.output_dir, "temp_dir": args.temp_dir,
        "data_dir": args.data_dir, "cache_bytes": args.cache_bytes, "device": args.device,
        "vram_mode": args.vram, "vram_budget": args.vram_budget, "ram_budget": args.ram_budget,
        "custom_nodes_dirs": tuple(args.custom_nodes_dir or _checkout_default("custom_nodes_dirs")),
        "disable_custom_nodes": args.disable_custom_nodes, "malloc_tuning": args.malloc_tuning,
    }
    if args.command == "serve":
        frontend_dir = args.frontend_dir
        if args.frontend == "comfyui" and frontend_dir != _checkout_default("frontend_dir"):
            # a ComfyUI frontend build instead of the package; Loom's editor stays at /frontend/
            fields["comfyui_frontend_dir"], frontend_dir = frontend_dir, _checkout_default("frontend_dir")
        fields.update(host=args.listen, port=args.port, frontend=args.frontend, frontend_dir=frontend_dir,
                      auth_token=args.auth_token or os.environ.get("LOOM_AUTH_TOKEN") or None,
                      preview_method=args.preview_method, user_dir=args.user_dir, multi_user=args.multi_user,
                      cluster=args.cluster,
                      cluster_workers=args.cluster_workers, worker_cpus=args.worker_cpus,
                      extra_nodes=tuple(args.extra_nodes))
    return Settings(**fields)


def serve(settings: Settings, registry: NodeRegistry) -> None:
    from engine.api.hub import Hub
    from engine.api.server import create_app, start_server
    from engine.queue import PromptQueue
    from engine.worker import PromptRunner, PromptWorker

    if settings.frontend == "comfyui":  # say what is missing before anything starts
        from engine.api.comfyui_frontend import comfyui_static_root

        log.info("serving ComfyUI's frontend from %s", comfyui_static_root(settings))
    folders = settings.folders()
    folders.ensure()
    queue = PromptQueue(settings.database_path, max_pending=settings.max_queue,
                        max_history=settings.max_history)
    hub = Hub()
    worker: PromptRunner
    models: DeferredModels | None = None  # built beside the listening server (torch loads there)
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
        models = DeferredModels(lambda: build_model_manager(settings), warm_up=load_node_backends)
        cache = OutputCache(settings.cache_bytes, settings.cache_entries)
        executor = Executor(registry, folders, cache, models,
                            previews=settings.preview_method != "none", preview_method=settings.preview_method)
        worker = PromptWorker(queue, executor, hub.sink_for)  # POST /free unloads executor.models
    app = create_app(settings, registry, queue, worker, hub)

    async def main() -> None:
        runner = await start_server(app, settings)
        if models is not None:
            models.start()
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
        if settings.malloc_tuning:
            tune_malloc()  # before any thread starts: see engine/malloc_tuning.py
        registry = build_registry(args.extra_nodes, settings)
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
