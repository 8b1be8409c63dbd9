"""ComfyUI's V1 node interface adapted into Loom's :class:`engine.node.Node` (facts of the interface only).

A V1 node is a class with ``INPUT_TYPES()`` (``{"required": {...}, "optional": {...}, "hidden": {...}}``, each
input ``(TYPE,)`` or ``(TYPE, options)`` where TYPE is a socket type name, a list of choices, or ``"COMBO"`` with
``options["options"]``), ``RETURN_TYPES``, ``RETURN_NAMES``, ``FUNCTION``, ``CATEGORY``, ``OUTPUT_NODE``,
``OUTPUT_IS_LIST``, ``INPUT_IS_LIST``, ``OUTPUT_TOOLTIPS``, ``DESCRIPTION``, ``DEPRECATED``, ``EXPERIMENTAL``,
and optionally ``IS_CHANGED``, ``VALIDATE_INPUTS`` and ``check_lazy_status``. :func:`adapt` makes a Node subclass
that declares the same inputs and outputs (so ``/object_info`` shows what ComfyUI shows) and whose ``run``
instantiates the pack's class and calls its function with ComfyUI's arguments:

* hidden inputs: ``PROMPT`` (the API prompt), ``EXTRA_PNGINFO``, ``UNIQUE_ID`` (the node id) and ``DYNPROMPT``
  (:class:`DynamicPrompt`), under the names the node gave them;
* results: a tuple, or a dict with ``"result"``, ``"ui"`` and ``"expand"`` (a graph fragment that runs in the
  node's place), as Loom's NodeOutput;
* ``IS_CHANGED`` feeds the cache key (a NaN result re-runs every time), ``VALIDATE_INPUTS`` runs before the
  prompt (its parameters' built-in checks are skipped, as ComfyUI does), ``check_lazy_status`` decides lazy
  inputs.

Values travel as ComfyUI passes them (IMAGE [B,H,W,C] float, MASK [B,H,W], LATENT dicts, CONDITIONING lists), which
are Loom's own conventions. MODEL, CLIP and VAE are Loom's handles (docs/custom-nodes.md says what they offer).
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.context import RunContext
from engine.custom_nodes.bridge import from_pack, to_pack
from engine.custom_nodes.runtime import running
from engine.folders import Folders
from engine.node import Input, Node, NodeOutput, Output
from engine.types import BOOLEAN, COMBO, FLOAT, INT, STRING

__all__ = ["DynamicPrompt", "NodeAdaptError", "adapt"]

_HIDDEN_KINDS = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT")
_OPTION_FIELDS = ("default", "min", "max", "step", "round", "multiline", "tooltip", "lazy")


class NodeAdaptError(TypeError):
    """A pack's node class that cannot be adapted; the message names the node and what is wrong."""


class DynamicPrompt:
    """ComfyUI's ``DYNPROMPT`` hidden input, read-only over the prompt being run."""

    def __init__(self, prompt: Mapping[str, Any]) -> None:
        self._prompt = prompt

    def get_node(self, node_id: str) -> Mapping[str, Any]:
        if node_id not in self._prompt:
            raise KeyError(f"node {node_id} is not in the prompt")
        return self._prompt[node_id]

    def has_node(self, node_id: str) -> bool:
        return node_id in self._prompt

    def all_node_ids(self) -> list[str]:
        return list(self._prompt)

    def get_original_prompt(self) -> Mapping[str, Any]:
        return self._prompt


def _input_types(cls: type) -> dict[str, Any]:
    types = cls.INPUT_TYPES()  # type: ignore[attr-defined]
    if not isinstance(types, Mapping):
        raise NodeAdaptError(f"INPUT_TYPES() returned {type(types).__name__}, not a dict")
    return dict(types)


def _fresh_choices(cls: type, section: str, name: str) -> Callable[[Folders], Sequence[str]]:
    """Choices read from INPUT_TYPES each time (file lists stay live, as in ComfyUI)."""
    def choices(folders: Folders) -> Sequence[str]:
        kind, options = _split(_input_types(cls).get(section, {}).get(name, ((),)))
        listed = kind if isinstance(kind, list | tuple) else options.get("options", [])
        return [str(choice) for choice in listed]
    return choices


def _split(spec: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, list | tuple) or not spec:
        raise NodeAdaptError(f"an input spec must be (TYPE,) or (TYPE, options), got {spec!r}")
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    return spec[0], dict(options)


def _typed_default(kind: str, value: Any) -> Any:
    """The default in the widget's own type, or None when it cannot be (a float default of an INT widget)."""
    if value is None:
        return None
    if kind == INT:
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and \
            float(value).is_integer() else None
    if kind == FLOAT:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == BOOLEAN:
        return value if isinstance(value, bool) else None
    if kind == STRING:
        return value if isinstance(value, str) else str(value)
    return value


def make_input(cls: type, section: str, name: str, spec: Any) -> Input:
    """One Loom Input from a ComfyUI input spec."""
    kind, options = _split(spec)
    extra = {key: value for key, value in options.items()
             if key not in _OPTION_FIELDS and key not in ("forceInput", "options", "control_after_generate",
                                                           "image_upload")}
    common: dict[str, Any] = {
        "optional": section == "optional", "tooltip": str(options.get("tooltip", "")),
        "lazy": bool(options.get("lazy", False)), "extra": extra,
    }
    if isinstance(kind, list | tuple) or kind == COMBO:
        default = options.get("default")
        return Input(name, COMBO, default=default, choices=_fresh_choices(cls, section, name),
                     control_after_generate=bool(options.get("control_after_generate", False)),
                     image_upload=bool(options.get("image_upload", False)), **common)
    kind = str(kind)
    numbers = {key: options[key] for key in ("min", "max", "step", "round")
               if isinstance(options.get(key), int | float) and not isinstance(options.get(key), bool)}
    return Input(name, kind, default=_typed_default(kind, options.get("default")), **numbers,
                 multiline=bool(options.get("multiline", False)), socket_only=bool(options.get("forceInput", False)),
                 control_after_generate=bool(options.get("control_after_generate", False)), **common)


def _outputs(cls: type) -> tuple[Output, ...]:
    types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", ()) or ())
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    tips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", ()) or ())
    outputs = []
    for index, kind in enumerate(types):
        label = names[index] if index < len(names) else ""
        out_type = "COMBO" if isinstance(kind, list | tuple) else str(kind)
        outputs.append(Output(out_type, str(label) if label != out_type else "",
                              str(tips[index]) if index < len(tips) else "",
                              bool(is_list[index]) if index < len(is_list) else False))
    return tuple(outputs)


def _hidden(cls: type) -> dict[str, str]:
    """The node's hidden inputs we fill: its parameter name -> ComfyUI's kind (PROMPT, UNIQUE_ID, ...)."""
    hidden = _input_types(cls).get("hidden") or {}
    out = {}
    for name, spec in hidden.items():
        kind = spec if isinstance(spec, str) else (spec[0] if isinstance(spec, list | tuple) and spec else "")
        if kind in _HIDDEN_KINDS:
            out[str(name)] = str(kind)
    return out


def _hidden_values(hidden: Mapping[str, str], ctx: RunContext) -> dict[str, Any]:
    values = {"PROMPT": ctx.prompt, "EXTRA_PNGINFO": ctx.extra_pnginfo, "UNIQUE_ID": ctx.node_id,
              "DYNPROMPT": DynamicPrompt(ctx.prompt)}
    return {name: values[kind] for name, kind in hidden.items()}


def accepted_kwargs(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments of ``values`` that ``fn`` takes; None when it needs one that is not there."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(values)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    taken = {name: value for name, value in values.items() if name in params}
    needed = [name for name, p in params.items() if p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("s", "cls", "self")]
    return taken if all(name in taken for name in needed) else None


def _result(outputs: tuple[Output, ...], result: Any) -> NodeOutput:
    """A V1 function's return value as a NodeOutput (missing outputs are None, as in ComfyUI)."""
    ui = expand = None
    if isinstance(result, Mapping):
        ui, expand = result.get("ui"), result.get("expand")
        result = result.get("result", ())
    values = tuple(result) if isinstance(result, list | tuple) else (() if result is None else (result,))
    values = values[:len(outputs)] + (None,) * max(len(outputs) - len(values), 0)
    return NodeOutput(loom_values(outputs, values), ui=ui, expand=expand)


def loom_values(outputs: tuple[Output, ...], values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pack's output values for Loom's nodes (ComfyUI-style MODEL/CLIP/VAE objects back to handles)."""
    return tuple([from_pack(item) for item in value] if output.is_list and isinstance(value, list | tuple)
                 else from_pack(value) for output, value in zip(outputs, values, strict=True))


def pack_inputs(inputs: Mapping[str, Any], as_lists: bool) -> dict[str, Any]:
    """Loom's input values for a pack's function (handles as ComfyUI-style MODEL/CLIP/VAE objects)."""
    if as_lists:
        return {name: [to_pack(item) for item in value] if isinstance(value, list) else to_pack(value)
                for name, value in inputs.items()}
    return {name: to_pack(value) for name, value in inputs.items()}


def _run(self: Any, ctx: RunContext, **inputs: Any) -> NodeOutput:
    cls = type(self)
    function = getattr(self.comfy_node, cls.comfy_function)
    with running(ctx):
        result = function(**pack_inputs(inputs, cls.input_is_list), **_hidden_values(cls.comfy_hidden, ctx))
    return _result(cls.outputs, result)


def _check_lazy_status(self: Any, ctx: RunContext, **inputs: Any) -> Sequence[str]:
    check = getattr(self.comfy_node, "check_lazy_status", None)
    if check is None:
        return [spec.name for spec in type(self).inputs if spec.lazy and inputs.get(spec.name) is None]
    with running(ctx):
        needed = check(**inputs, **_hidden_values(type(self).comfy_hidden, ctx))
    return [str(name) for name in needed or ()]


def _fingerprint(cls: Any, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    is_changed = getattr(cls.comfy_class, "IS_CHANGED", None)
    if is_changed is None:
        return None
    kwargs = accepted_kwargs(is_changed, inputs)
    if kwargs is None:  # it needs a linked input's value, which is not known yet: run every time
        return uuid.uuid4().hex
    value = is_changed(**kwargs)
    if isinstance(value, float) and math.isnan(value):
        return uuid.uuid4().hex
    return repr(value)


def _validate_inputs(cls: Any, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
    validate = getattr(cls.comfy_class, "VALIDATE_INPUTS", None)
    if validate is None:
        return None
    kwargs = accepted_kwargs(validate, inputs)
    if kwargs is None:
        return None  # checked with the linked values ComfyUI would pass: not known before the run
    verdict = validate(**kwargs)
    return None if verdict is True else str(verdict)


def _init(self: Any) -> None:
    self.comfy_node = type(self).comfy_class()


def adapt(name: str, cls: type, *, pack: str, display_name: str = "") -> type[Node]:
    """A Node subclass that runs the V1 node class ``cls`` registered as ``name`` by ``pack``."""
    function = getattr(cls, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(cls, function, None)):
        raise NodeAdaptError(f"node {name}: FUNCTION must name a method of {cls.__name__}, got {function!r}")
    types = _input_types(cls)
    inputs = tuple(make_input(cls, section, str(key), spec)
                   for section in ("required", "optional") for key, spec in (types.get(section) or {}).items())
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    validated = tuple(p for p in inspect.signature(validate).parameters if p not in ("s", "cls", "input_types")) \
        if callable(validate) else ()
    attrs: dict[str, Any] = {
        "type_name": name, "display_name": display_name or str(getattr(cls, "DISPLAY_NAME", "") or ""),
        "category": str(getattr(cls, "CATEGORY", "") or "custom"),
        "description": str(getattr(cls, "DESCRIPTION", "") or ""),
        "inputs": inputs, "outputs": _outputs(cls), "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "python_module": f"custom_nodes.{pack}", "input_is_list": bool(getattr(cls, "INPUT_IS_LIST", False)),
        "validated_inputs": validated, "deprecated": bool(getattr(cls, "DEPRECATED", False)),
        "experimental": bool(getattr(cls, "EXPERIMENTAL", False)),
        "comfy_class": cls, "comfy_function": function, "comfy_hidden": _hidden(cls),
        "__init__": _init, "run": _run, "check_lazy_status": _check_lazy_status,
        "fingerprint": classmethod(_fingerprint), "validate_inputs": classmethod(_validate_inputs),
        "__doc__": str(getattr(cls, "DESCRIPTION", "") or ""), "__module__": f"custom_nodes.{pack}",
    }
    if not attrs["outputs"] and not attrs["output_node"]:
        attrs["output_node"] = True  # ComfyUI lists such a node and never runs it; Loom needs outputs or this
    return type(f"Comfy_{name}", (Node,), attrs)
