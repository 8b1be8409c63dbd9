"""The node side of ComfyUI's V3 interface: ``io.ComfyNode``, ``io.Schema``, ``io.NodeOutput``, ``io.Hidden``.

A V3 node is a class with classmethods: ``define_schema()`` returns a :class:`Schema` (id, display name,
category, inputs, outputs, hidden values wanted, flags) and ``execute(**inputs)`` (plain or ``async``) returns a
:class:`NodeOutput` (or a tuple). Optional classmethods: ``validate_inputs`` (V1's VALIDATE_INPUTS),
``fingerprint_inputs`` (V1's IS_CHANGED) and ``check_lazy_status``. Hidden values are read inside ``execute`` as
``cls.hidden.unique_id`` etc.: Loom runs each call on a fresh subclass that carries them
(:mod:`engine.custom_nodes.v3`). Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from engine.custom_nodes.compat.comfy_api.latest._io_types import Input, Output

__all__ = ["ComfyNode", "Hidden", "HiddenHolder", "NodeOutput", "Schema", "overrides"]


class Hidden(StrEnum):
    """The hidden values a node can ask for in ``Schema(hidden=[...])``; the value is V1's name."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """``cls.hidden`` while a node runs: the node id, the prompt, the PNG extras and the dynamic prompt; any
    other name reads as None (Loom has no comfy.org account values)."""

    def __init__(self, unique_id: str | None = None, prompt: Any = None, extra_pnginfo: Any = None,
                 dynprompt: Any = None, **others: Any) -> None:
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        for name, value in others.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


@dataclass
class Schema:
    """What a V3 node declares (the fields of ComfyUI's Schema that decide how it shows and runs)."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    price_badge: Any = None
    not_idempotent: bool = False
    enable_expand: bool = False
    accept_all_inputs: bool = False
    essentials_category: str | None = None
    has_intermediate_output: bool = False

    def validate(self) -> None:
        """Refuse input or output ids given twice (ValueError naming them)."""
        problems = []
        for kind, ids in (("Input", [i.id for item in self.inputs for i in item.get_all()]),
                          ("Output", [o.id for o in self.outputs])):
            twice = sorted(str(name) for name, count in Counter(ids).items() if count > 1)
            if twice:
                problems.append(f"{kind} ids must be unique, but {twice} are not.")
        if problems:
            raise ValueError(" ".join(problems))
        for item in self.inputs:
            item.validate()
        for output in self.outputs:
            output.validate()

    def finalize(self) -> None:
        """Output nodes get the prompt and PNG extras; outputs without an id get one from place and type."""
        self.inputs, self.outputs, self.hidden = list(self.inputs or []), list(self.outputs or []), \
            list(self.hidden or [])
        if self.is_output_node:
            self.hidden += [h for h in (Hidden.prompt, Hidden.extra_pnginfo) if h not in self.hidden]
        for index, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"


class NodeOutput:
    """What ``execute`` returns: the output values in order, and optionally ``ui`` (a ``ui.*`` object or ComfyUI's
    UI dict) and ``expand`` (a graph fragment that runs in the node's place)."""

    def __init__(self, *args: Any, ui: Any = None, expand: Mapping[str, Any] | None = None,
                 block_execution: str | None = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeOutput:
        """From V1's ``{"result": (...), "ui": {...}, "expand": {...}}``."""
        return cls(*tuple(data.get("result") or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class ComfyNode:
    """Base class of V3 nodes: override ``define_schema`` and ``execute`` (classmethods)."""

    #: Set on the per-call subclass Loom runs; None outside a run.
    hidden: ClassVar[HiddenHolder | None] = None
    SCHEMA: ClassVar[Schema | None] = None
    RELATIVE_PYTHON_MODULE: ClassVar[str | None] = None

    @classmethod
    def define_schema(cls) -> Schema:
        """The node's declaration."""
        raise NotImplementedError(f"{cls.__name__} does not define define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> Any:
        """Run the node (may be ``async``); a NodeOutput, a tuple or None."""
        raise NotImplementedError(f"{cls.__name__} does not define execute()")

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        """True when the inputs are fine, else an error message (V1's VALIDATE_INPUTS)."""
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        """A value that changes when the node must run again (V1's IS_CHANGED)."""
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        """The inputs still needed: by default every one that is None (not computed yet)."""
        return [name for name, value in kwargs.items() if value is None]

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:  # noqa: N802 - ComfyUI's name
        """``define_schema()``, finalized."""
        schema = cls.define_schema()
        if not isinstance(schema, Schema):
            raise TypeError(f"{cls.__name__}.define_schema() returned {type(schema).__name__}, not io.Schema")
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802 - ComfyUI's name
        """The finalized, validated schema, also kept as ``SCHEMA``."""
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        """The inputs in V1's form (``{"required": {id: (TYPE, options)}, "optional": ..., "hidden": ...}``)."""
        schema = cls.FINALIZE_SCHEMA()
        types: dict[str, Any] = {"required": {}}
        for item in schema.inputs:
            options = item.as_dict()
            section = "optional" if options.pop("optional", False) else "required"
            types.setdefault(section, {})[item.id] = (item.get_io_type(), options)
        if schema.hidden:
            types["hidden"] = {hidden.name: (hidden.value,) for hidden in schema.hidden}
        return types


def overrides(cls: type, name: str) -> bool:
    """Whether the node class ``cls`` defines its own ``name`` classmethod rather than ComfyNode's."""
    own = getattr(cls, name, None)
    base = getattr(ComfyNode, name)
    return own is not None and getattr(own, "__func__", own) is not base.__func__
