"""The socket types of ComfyUI's V3 interface: ``io.Image.Input("image")``, ``io.Image.Output()``, ``io.Custom``.

A type is a class with ``io_type`` (the socket type name ``/object_info`` shows) and nested ``Input`` and
``Output`` classes bound to it (``Parent``), so an input knows its type. ``Input.as_dict()`` gives the option
dict of ComfyUI's V1 form (``{"tooltip": "..."}``), which :mod:`engine.custom_nodes.v3` turns into Loom inputs;
options left as None are left out, as ComfyUI leaves them out. The widget types are in :mod:`._io_widgets`.
Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

import types
from enum import Enum, StrEnum
from typing import Any, ClassVar

__all__ = [
    "AnyType", "Audio", "Clip", "ClipVision", "ClipVisionOutput", "ComfyType", "ComfyTypeI", "ComfyTypeIO",
    "Conditioning", "ControlAfterGenerate", "ControlNet", "Custom", "FolderType", "Gligen", "Guider", "Image", "Input",
    "Latent", "Mask", "Model", "Noise", "NumberDisplay", "Output", "Sampler", "Sigmas", "StyleModel", "UploadType",
    "UpscaleModel", "Vae", "Video", "WidgetInput", "comfytype", "plain", "pruned",
]


class NumberDisplay(StrEnum):
    """How a number widget is drawn (``display`` in the options)."""

    number = "number"
    slider = "slider"
    gradient_slider = "gradientslider"


class ControlAfterGenerate(StrEnum):
    """What the frontend does to a seed-like widget after each queued prompt."""

    fixed = "fixed"
    increment = "increment"
    decrement = "decrement"
    randomize = "randomize"


class FolderType(StrEnum):
    """The folder a saved file is in, as the UI's ``type`` names it."""

    input = "input"
    output = "output"
    temp = "temp"


class UploadType(StrEnum):
    """The upload button a combo gets (the option key the frontend reads)."""

    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


def pruned(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the keys whose value is None."""
    return {key: value for key, value in values.items() if value is not None}


def plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


class Input:
    """One input of a V3 node (``id`` is its name in ``execute``'s keyword arguments)."""

    Parent: ClassVar[type[ComfyType] | None] = None

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                 tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict[str, Any] | None = None,
                 raw_link: bool | None = None, advanced: bool | None = None) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = dict(extra_dict or {})
        self.rawLink = raw_link
        self.advanced = advanced

    @property
    def io_type(self) -> str:
        return self.Parent.io_type if self.Parent is not None else "*"

    def get_io_type(self) -> str:
        """The socket type this input shows in ``/object_info``."""
        return self.io_type

    def get_all(self) -> list[Input]:
        return [self]

    def validate(self) -> None:
        """Check the declaration (nothing to check for plain inputs)."""

    def as_dict(self) -> dict[str, Any]:
        """The V1 option dict (``optional`` included; the adapter takes it out)."""
        return pruned({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy, "rawLink": self.rawLink, "advanced": self.advanced}) | \
            pruned(self.extra_dict)


class WidgetInput(Input):
    """An input edited by a widget in the node (a number, a text, a toggle, a choice)."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 socketless: bool | None = None, widget_type: str | None = None, force_input: bool | None = None,
                 extra_dict: dict[str, Any] | None = None, raw_link: bool | None = None,
                 advanced: bool | None = None) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def get_io_type(self) -> str:
        return self.widget_type or self.io_type

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | pruned({"default": plain(self.default), "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})


class Output:
    """One output of a V3 node; ``id`` defaults to one made from its place and type."""

    Parent: ClassVar[type[ComfyType] | None] = None

    def __init__(self, id: str | None = None, display_name: str | None = None,  # noqa: A002
                 tooltip: str | None = None, is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name or id
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type if self.Parent is not None else "*"

    def get_io_type(self) -> str:
        return self.io_type

    def validate(self) -> None:
        """Check the declaration (nothing to check for plain outputs)."""

    def as_dict(self) -> dict[str, Any]:
        return pruned({"display_name": self.display_name or self.id, "tooltip": self.tooltip,
                       "is_output_list": self.is_output_list})


def _bind(cls: type[ComfyType], name: str) -> None:
    """Give ``cls`` its own subclass of the ``Input``/``Output`` class it has, bound to it as ``Parent``."""
    base = getattr(cls, name, None)
    if isinstance(base, type):
        bound = type(name, (base,), {"Parent": cls, "__qualname__": f"{cls.__qualname__}.{name}",
                                     "__module__": cls.__module__})
        setattr(cls, name, bound)


class ComfyType:
    """A socket type; subclass with ``io_type=`` (``class Seed(ComfyTypeIO, io_type="SEED")``) or use
    :func:`comfytype` / :func:`Custom`."""

    io_type: ClassVar[str] = "*"
    Type: ClassVar[Any] = Any

    def __init_subclass__(cls, io_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if io_type is not None:
            cls.io_type = io_type
        _bind(cls, "Input")
        _bind(cls, "Output")


class ComfyTypeI(ComfyType):
    """A type with inputs only."""

    Input: ClassVar[type[Any]] = Input


class ComfyTypeIO(ComfyTypeI):
    """A type with inputs and outputs."""

    Output: ClassVar[type[Any]] = Output


def comfytype(io_type: str, **kwargs: Any) -> Any:
    """Decorator: make the class a socket type called ``io_type`` (a plain class becomes a ComfyTypeIO)."""
    def decorate(cls: type) -> type:
        if issubclass(cls, ComfyType):
            cls.io_type = io_type
            return cls
        namespace = {key: value for key, value in vars(cls).items() if key not in ("__dict__", "__weakref__")}
        return types.new_class(cls.__name__, (cls, ComfyTypeIO), {"io_type": io_type},
                               lambda ns: ns.update(namespace))
    return decorate


def Custom(io_type: str) -> type[ComfyTypeIO]:  # noqa: N802 - ComfyUI's name
    """A socket type for a type name of the pack's own (``io.Custom("MY_DATA")``)."""
    return types.new_class(io_type, (ComfyTypeIO,), {"io_type": io_type})


class Image(ComfyTypeIO, io_type="IMAGE"):
    """Images: a float tensor ``[B, H, W, C]`` in 0..1."""


class Mask(ComfyTypeIO, io_type="MASK"):
    """Masks: a float tensor ``[B, H, W]`` in 0..1."""


class Latent(ComfyTypeIO, io_type="LATENT"):
    """Latents: a dict with ``samples`` (and optionally ``noise_mask``, ``batch_index``)."""


class Conditioning(ComfyTypeIO, io_type="CONDITIONING"):
    """Conditioning: a list of ``[tensor, dict]`` pairs."""


class Model(ComfyTypeIO, io_type="MODEL"):
    """A diffusion model (Loom's handle)."""


class Clip(ComfyTypeIO, io_type="CLIP"):
    """A text encoder (Loom's handle)."""


class Vae(ComfyTypeIO, io_type="VAE"):
    """A VAE (Loom's handle)."""


class ControlNet(ComfyTypeIO, io_type="CONTROL_NET"):
    """A ControlNet."""


class ClipVision(ComfyTypeIO, io_type="CLIP_VISION"):
    """A CLIP vision model."""


class ClipVisionOutput(ComfyTypeIO, io_type="CLIP_VISION_OUTPUT"):
    """What a CLIP vision model gives for an image."""


class StyleModel(ComfyTypeIO, io_type="STYLE_MODEL"):
    """A style model."""


class Gligen(ComfyTypeIO, io_type="GLIGEN"):
    """A GLIGEN model."""


class UpscaleModel(ComfyTypeIO, io_type="UPSCALE_MODEL"):
    """An image upscale model."""


class Sampler(ComfyTypeIO, io_type="SAMPLER"):
    """A sampler object (custom sampling)."""


class Sigmas(ComfyTypeIO, io_type="SIGMAS"):
    """A 1-D tensor of noise levels."""


class Noise(ComfyTypeIO, io_type="NOISE"):
    """A noise generator (custom sampling)."""


class Guider(ComfyTypeIO, io_type="GUIDER"):
    """A guider (custom sampling)."""


class Audio(ComfyTypeIO, io_type="AUDIO"):
    """Audio: a dict with ``waveform`` and ``sample_rate``."""


class Video(ComfyTypeIO, io_type="VIDEO"):
    """A video."""


class AnyType(ComfyTypeIO, io_type="*"):
    """Any type: a socket that links to every other."""
