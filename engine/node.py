"""How a node is declared.

A node is a class with typed inputs and outputs, declared once::

    class ImageInvert(Node):
        '''Invert the colours of an image.'''
        category = "image"
        inputs = (Input("image", IMAGE),)
        outputs = (Output("IMAGE"),)

        def run(self, ctx: RunContext, image: Tensor) -> tuple[Tensor]:
            return (1.0 - image,)

Everything else derives from that declaration: validation and coercion of inputs, the
``/object_info`` schema (ComfyUI's exact shape), the editor's widgets, cache keys.

``run`` receives validated, coerced inputs as keyword arguments and returns a tuple with one value
per output, or a :class:`NodeOutput` when it also shows something in the UI (saved images).
Impure nodes (they read files) override :meth:`Node.fingerprint` so that the cache notices when the
file changes; nodes that must run every time set ``always_run = True``.

ComfyUI's graph semantics, declared the same way:

* Lists. An output declared ``Output(..., is_list=True)`` gives a list of items; a node reading it
  runs once per item (shorter inputs repeat their last item) and its outputs collect one item per
  run. A node with ``input_is_list = True`` instead runs once and gets every input as a list.
* Lazy inputs. ``Input(..., lazy=True)`` is not computed before the node runs. The executor calls
  :meth:`Node.check_lazy_status` with the values it has (None for lazy inputs not yet computed); it
  returns the names it needs, which are then computed, and it is asked again until it needs nothing.
* Custom validation. :meth:`Node.validate_inputs` sees the node's literal inputs before anything
  runs and returns an error message or None; inputs named in ``validated_inputs`` skip the built-in
  choice and range checks (so LoadImage can accept ``"name.png [output]"``).
* Expansion. ``run`` may return ``NodeOutput(values, expand=graph)``: ``graph`` is an API-format
  fragment (build it with :class:`engine.expansion.GraphBuilder`) that runs in the node's place, and
  ``values`` may hold links ``[node_id, index]`` into it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from engine.folders import Folders
from engine.types import BOOLEAN, COMBO, FLOAT, INT, STRING, WIDGET_TYPES

if TYPE_CHECKING:
    from engine.context import RunContext

Choices = Sequence[str] | Callable[[Folders], Sequence[str]]

#: ComfyUI's seed range: 0 .. 2**64 - 1.
SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Input:
    """One input of a node.

    ``type`` is a socket type name (IMAGE, LATENT, INT, ...) or COMBO. Widget types (INT, FLOAT,
    STRING, BOOLEAN, COMBO) are edited in place and may also be linked; ``socket_only`` makes
    them link-only. ``choices`` is a list or a function of the folders (file lists stay live).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    choices: Choices | None = None
    multiline: bool = False
    optional: bool = False
    socket_only: bool = False
    tooltip: str = ""
    control_after_generate: bool = False
    image_upload: bool = False
    #: Computed only when the node asks for it (:meth:`Node.check_lazy_status`).
    lazy: bool = False
    #: The value names a file in this folder: a model folder ("checkpoints", "loras", "vae",
    #: "controlnet") or "input". A cluster front reads it to route prompts and ship input files.
    file_folder: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.choices is not None and self.type != COMBO:
            raise TypeError(f"input {self.name!r}: choices are only for COMBO inputs")
        if self.type == COMBO and self.choices is None:
            raise TypeError(f"COMBO input {self.name!r} needs choices")

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.socket_only

    def choice_list(self, folders: Folders) -> list[str]:
        if self.choices is None:
            return []
        if callable(self.choices):
            return list(self.choices(folders))
        return list(self.choices)

    def options(self) -> dict[str, Any]:
        """The option dict ComfyUI puts beside the type in ``/object_info``."""
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        for key in ("min", "max", "step", "round"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        if self.type == STRING:
            opts["multiline"] = self.multiline
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.socket_only:
            opts["forceInput"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.image_upload:
            opts["image_upload"] = True
        if self.lazy:
            opts["lazy"] = True
        opts.update(self.extra)
        return opts

    def spec(self, folders: Folders) -> list[Any]:
        """``[type, options]``; a COMBO's type is its list of choices (ComfyUI's legacy form)."""
        kind: Any = self.choice_list(folders) if self.type == COMBO else self.type
        return [kind, self.options()]


@dataclass(frozen=True)
class Output:
    """One output of a node: its socket type and a display name (defaults to the type)."""

    type: str
    name: str = ""
    tooltip: str = ""
    is_list: bool = False

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass(frozen=True)
class NodeOutput:
    """What ``run`` returns when it also shows something in the UI.

    ``ui`` is ComfyUI's per-node UI dict, e.g. ``{"images": [{"filename", "subfolder", "type"}]}``.
    """

    values: tuple[Any, ...] = ()
    ui: Mapping[str, Any] | None = None
    #: An API-format graph fragment that runs in the node's place; ``values`` may link into it.
    expand: Mapping[str, Any] | None = None


class Node:
    """Base class of every node. Subclasses declare class attributes and implement ``run``."""

    type_name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = "loom"
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[Input, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]] = ()
    output_node: ClassVar[bool] = False
    version: ClassVar[str] = "1"
    aliases: ClassVar[tuple[str, ...]] = ()
    always_run: ClassVar[bool] = False
    python_module: ClassVar[str] = "nodes"
    #: Run once with every input as a list (ComfyUI's INPUT_IS_LIST) instead of once per item.
    input_is_list: ClassVar[bool] = False
    #: Inputs whose built-in checks (choices, min, max) :meth:`validate_inputs` replaces.
    validated_inputs: ClassVar[tuple[str, ...]] = ()
    #: Shown as such in the node library (ComfyUI's DEPRECATED and EXPERIMENTAL flags).
    deprecated: ClassVar[bool] = False
    experimental: ClassVar[bool] = False

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        """Check the node's literal inputs before the prompt runs; an error message, or None if fine.

        Linked inputs are absent from ``inputs``. Inputs in ``validated_inputs`` arrive unchecked
        (coerced to their type only).
        """
        return None

    def check_lazy_status(self, ctx: RunContext, **inputs: Any) -> Sequence[str]:
        """The names of lazy inputs this node still needs, given what it has (None = not computed)."""
        return ()

    @classmethod
    def fingerprint(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        """Extra cache-key material for impure nodes (file size + mtime, a content hash).

        ``inputs`` holds the node's literal (widget) inputs. Pure nodes return None.
        """
        return None

    if TYPE_CHECKING:
        #: ``run(ctx, **inputs)``: each node names its own inputs as parameters, which a method
        #: signature here could not allow (mypy would call every override incompatible).
        run: Callable[..., tuple[Any, ...] | NodeOutput]
    else:
        def run(self, ctx: RunContext, **inputs: Any) -> tuple[Any, ...] | NodeOutput:
            raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    @classmethod
    def input_named(cls, name: str) -> Input | None:
        for spec in cls.inputs:
            if spec.name == name:
                return spec
        return None

    @classmethod
    def widget_inputs(cls) -> list[Input]:
        """Inputs that carry a widget, in declaration order (the editor's widgets_values order)."""
        return [spec for spec in cls.inputs if spec.is_widget]


def check_declaration(cls: type[Node]) -> None:
    """Refuse a malformed node class at registration time, with a message naming the fix."""
    name = cls.type_name or cls.__name__
    seen: set[str] = set()
    for spec in cls.inputs:
        if spec.name in seen:
            raise TypeError(f"node {name}: input {spec.name!r} is declared twice")
        seen.add(spec.name)
        if spec.type == INT and spec.default is not None and not isinstance(spec.default, int):
            raise TypeError(f"node {name}: INT input {spec.name!r} needs an int default")
        if spec.type == FLOAT and spec.default is not None and not isinstance(spec.default, int | float):
            raise TypeError(f"node {name}: FLOAT input {spec.name!r} needs a number default")
        if spec.type == BOOLEAN and spec.default is not None and not isinstance(spec.default, bool):
            raise TypeError(f"node {name}: BOOLEAN input {spec.name!r} needs a bool default")
    if cls.run is Node.run:
        raise TypeError(f"node {name}: implement run(self, ctx, **inputs)")
    params = inspect.signature(cls.run).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        missing = seen - set(params)
        if missing:
            raise TypeError(f"node {name}: run() lacks parameters for inputs {sorted(missing)}")
    if not cls.outputs and not cls.output_node:
        raise TypeError(f"node {name}: declare outputs, or set output_node = True")
