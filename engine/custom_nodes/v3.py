"""ComfyUI's V3 node interface adapted into Loom's :class:`engine.node.Node` (facts of the interface only).

A V3 pack defines ``comfy_entrypoint()`` (usually ``async``) returning a ``ComfyExtension``; Loom awaits its
``on_load()`` and ``get_node_list()`` (:func:`extension_nodes`). Each node is an ``io.ComfyNode`` subclass
(:mod:`engine.custom_nodes.compat.comfy_api.latest`) whose ``define_schema()`` declares it; :func:`adapt` makes a
Node subclass that declares the same inputs and outputs (its V1 form, so ``/object_info`` shows what ComfyUI shows)
and whose ``run`` calls the class's ``execute``:

* on a fresh subclass per call whose ``hidden`` holds the node id, the prompt, the PNG extras and the dynamic
  prompt (``cls.hidden.unique_id``), so concurrent runs never share them;
* awaiting it when it is ``async`` (:func:`wait_for`: ``asyncio.run`` in the worker thread);
* inside :func:`engine.custom_nodes.runtime.running`, so ProgressBar and interrupts reach the node;
* its result (``io.NodeOutput``, a tuple, a V1-style dict or None) becoming Loom's NodeOutput, with ``ui``
  objects turned into ComfyUI's UI dict.

``fingerprint_inputs`` feeds the cache key (NaN re-runs every time), ``validate_inputs`` runs before the prompt,
``check_lazy_status`` decides lazy inputs; ``Schema.not_idempotent`` makes the node run every time.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from engine.context import RunContext
from engine.custom_nodes.compat.comfy_api.latest._io_node import ComfyNode, HiddenHolder, Schema, overrides
from engine.custom_nodes.compat.comfy_api.latest._io_node import NodeOutput as ComfyOutput
from engine.custom_nodes.runtime import running
from engine.custom_nodes.v1 import (
    DynamicPrompt,
    NodeAdaptError,
    accepted_kwargs,
    loom_values,
    make_input,
    pack_inputs,
)
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output

__all__ = ["adapt", "extension_nodes", "wait_for"]


def wait_for(value: Any) -> Any:
    """``value`` awaited when it is awaitable, from synchronous code: with ``asyncio.run`` in this thread, or in a
    helper thread (same context variables) when this thread already runs an event loop."""
    if not inspect.isawaitable(value):
        return value

    async def main(awaitable: Awaitable[Any]) -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main(value))
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-v3-await") as pool:
        return pool.submit(context.run, asyncio.run, main(value)).result()


def extension_nodes(module: ModuleType) -> list[type] | None:
    """The node classes of a V3 pack's extension (``comfy_entrypoint``), or None when the module has none."""
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if entrypoint is None:
        return None
    if not callable(entrypoint):
        raise NodeAdaptError(f"comfy_entrypoint must be a function, got {type(entrypoint).__name__}")
    extension = wait_for(entrypoint())
    wait_for(extension.on_load())
    nodes = wait_for(extension.get_node_list())
    if not isinstance(nodes, list | tuple):
        raise NodeAdaptError(f"get_node_list() returned {type(nodes).__name__}, not a list of node classes")
    return list(nodes)


def _schema(cls: type) -> Schema:
    if not (isinstance(cls, type) and issubclass(cls, ComfyNode)):
        raise NodeAdaptError(f"{cls!r} is not a subclass of comfy_api io.ComfyNode")
    if not overrides(cls, "execute"):
        raise NodeAdaptError(f"node class {cls.__name__} defines no execute()")
    return cls.GET_SCHEMA()


def _inputs(cls: type) -> tuple[Input, ...]:
    types = cls.INPUT_TYPES()  # type: ignore[attr-defined]
    return tuple(make_input(cls, section, str(key), spec)
                 for section in ("required", "optional") for key, spec in (types.get(section) or {}).items())


def _outputs(schema: Schema) -> tuple[Output, ...]:
    outputs = []
    for item in schema.outputs:
        kind = item.io_type
        label = item.display_name if item.display_name and item.display_name != kind else ""
        outputs.append(Output(kind, str(label), str(item.tooltip or ""), bool(item.is_output_list)))
    return tuple(outputs)


def _bound(cls: type, ctx: RunContext | None) -> Any:
    """A subclass of the node class for one call, whose ``hidden`` holds that call's values."""
    if ctx is None:
        hidden = HiddenHolder()
    else:
        hidden = HiddenHolder(unique_id=ctx.node_id, prompt=ctx.prompt, extra_pnginfo=ctx.extra_pnginfo,
                              dynprompt=DynamicPrompt(ctx.prompt))
    return type(cls.__name__, (cls,), {"hidden": hidden, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _as_comfy_output(result: Any) -> ComfyOutput:
    if result is None:
        return ComfyOutput()
    if isinstance(result, ComfyOutput):
        return result
    if isinstance(result, tuple):
        return ComfyOutput(*result)
    if isinstance(result, Mapping):
        return ComfyOutput.from_dict(result)
    raise TypeError(f"execute() returned {type(result).__name__}; return io.NodeOutput(...) or a tuple")


def _result(node_cls: Any, result: Any) -> NodeOutput:
    """``execute``'s return value as Loom's NodeOutput (missing outputs are None, as in ComfyUI)."""
    output = _as_comfy_output(result)
    if output.block_execution is not None:
        raise RuntimeError(f"the node blocked execution ({output.block_execution}); Loom does not support "
                           "ExecutionBlocker yet")
    if output.expand is not None and not node_cls.comfy_schema.enable_expand:
        raise RuntimeError(f"node {node_cls.type_name} returned expand without enable_expand=True in its Schema")
    ui = output.ui.as_dict() if hasattr(output.ui, "as_dict") else output.ui
    count = len(node_cls.outputs)
    values = tuple(output.args[:count]) + (None,) * max(count - len(output.args), 0)
    return NodeOutput(loom_values(node_cls.outputs, values), ui=dict(ui) if ui is not None else None,
                      expand=output.expand)


def _run(self: Any, ctx: RunContext, **inputs: Any) -> NodeOutput:
    node_cls = type(self)
    node = _bound(node_cls.comfy_class, ctx)
    with running(ctx):
        result = wait_for(node.execute(**pack_inputs(inputs, node_cls.input_is_list)))
    return _result(node_cls, result)


def _check_lazy_status(self: Any, ctx: RunContext, **inputs: Any) -> Sequence[str]:
    node_cls = type(self)
    if not overrides(node_cls.comfy_class, "check_lazy_status"):
        return [spec.name for spec in node_cls.inputs if spec.lazy and inputs.get(spec.name) is None]
    node = _bound(node_cls.comfy_class, ctx)
    with running(ctx):
        needed = wait_for(node.check_lazy_status(**inputs))
    return [str(name) for name in needed or ()]


def _fingerprint(cls: Any, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    if not overrides(cls.comfy_class, "fingerprint_inputs"):
        return None
    node = _bound(cls.comfy_class, None)
    kwargs = accepted_kwargs(node.fingerprint_inputs, inputs)
    if kwargs is None:  # it needs a linked input's value, which is not known yet: run every time
        return uuid.uuid4().hex
    value = wait_for(node.fingerprint_inputs(**kwargs))
    if isinstance(value, float) and math.isnan(value):
        return uuid.uuid4().hex
    return repr(value)


def _validate_inputs(cls: Any, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    if not overrides(cls.comfy_class, "validate_inputs"):
        return None
    node = _bound(cls.comfy_class, None)
    kwargs = accepted_kwargs(node.validate_inputs, inputs)
    if kwargs is None:
        return None  # checked with the linked values ComfyUI would pass: not known before the run
    verdict = wait_for(node.validate_inputs(**kwargs))
    return None if verdict is True else str(verdict)


def _validated(cls: type) -> tuple[str, ...]:
    """The inputs ``validate_inputs`` names, whose built-in checks it replaces (as in ComfyUI)."""
    if not overrides(cls, "validate_inputs"):
        return ()
    params = inspect.signature(cls.validate_inputs).parameters  # type: ignore[attr-defined]
    return tuple(name for name, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def adapt(cls: type, *, pack: str) -> type[Node]:
    """A Node subclass that runs the V3 node class ``cls`` of ``pack``, registered as its schema's ``node_id``."""
    try:
        schema = _schema(cls)
    except NodeAdaptError:
        raise
    except Exception as exc:  # noqa: BLE001 - define_schema is the pack's code
        raise NodeAdaptError(f"{getattr(cls, '__name__', cls)}: define_schema() failed: {exc}") from exc
    attrs: dict[str, Any] = {
        "type_name": schema.node_id, "display_name": str(schema.display_name or ""),
        "category": str(schema.category or "custom"), "description": str(schema.description or ""),
        "inputs": _inputs(cls), "outputs": _outputs(schema), "output_node": bool(schema.is_output_node),
        "python_module": f"custom_nodes.{pack}", "input_is_list": bool(schema.is_input_list),
        "validated_inputs": _validated(cls), "deprecated": bool(schema.is_deprecated),
        "experimental": bool(schema.is_experimental), "always_run": bool(schema.not_idempotent),
        "comfy_class": cls, "comfy_schema": schema,
        "run": _run, "check_lazy_status": _check_lazy_status,
        "fingerprint": classmethod(_fingerprint), "validate_inputs": classmethod(_validate_inputs),
        "__doc__": str(schema.description or ""), "__module__": f"custom_nodes.{pack}",
    }
    if not attrs["outputs"] and not attrs["output_node"]:
        attrs["output_node"] = True  # ComfyUI lists such a node and never runs it; Loom needs outputs or this
    return type(f"ComfyV3_{schema.node_id}", (Node,), attrs)
