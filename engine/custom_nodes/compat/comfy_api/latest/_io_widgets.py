"""The widget types of ComfyUI's V3 interface: ``io.Int``, ``io.Float``, ``io.String``, ``io.Boolean``,
``io.Combo``, each with the options its ``Input`` takes (``io.Int.Input("steps", default=20, min=1, max=100)``)
and gives in ``as_dict()`` as ComfyUI's V1 option dict. Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from engine.custom_nodes.compat.comfy_api.latest._io_types import (
    ComfyTypeIO,
    ControlAfterGenerate,
    FolderType,
    NumberDisplay,
    UploadType,
    WidgetInput,
    plain,
    pruned,
)
from engine.custom_nodes.compat.comfy_api.latest._io_types import (
    Output as PlainOutput,
)

__all__ = ["Boolean", "Combo", "Float", "Int", "String"]


class Boolean(ComfyTypeIO, io_type="BOOLEAN"):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                     raw_link: bool | None = None, advanced: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.label_on = label_on
            self.label_off = label_off

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | pruned({"label_on": self.label_on, "label_off": self.label_off})


class Int(ComfyTypeIO, io_type="INT"):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,  # noqa: A002
                     control_after_generate: bool | ControlAfterGenerate | None = None,
                     display_mode: NumberDisplay | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                     raw_link: bool | None = None, advanced: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | pruned({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": plain(self.control_after_generate), "display": plain(self.display_mode)})


class Float(ComfyTypeIO, io_type="FLOAT"):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,  # noqa: A002
                     round: float | None = None, display_mode: NumberDisplay | None = None,  # noqa: A002
                     gradient_stops: list[dict[str, Any]] | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                     raw_link: bool | None = None, advanced: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min, self.max, self.step, self.round = min, max, step, round
            self.display_mode = display_mode
            self.gradient_stops = gradient_stops

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | pruned({
                "min": self.min, "max": self.max, "step": self.step, "round": self.round,
                "display": plain(self.display_mode), "gradient_stops": self.gradient_stops})


class String(ComfyTypeIO, io_type="STRING"):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                     raw_link: bool | None = None, advanced: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | pruned({"multiline": self.multiline, "placeholder": self.placeholder,
                                               "dynamicPrompts": self.dynamic_prompts})


class Combo(ComfyTypeIO, io_type="COMBO"):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: list[Any] | type[Enum] | None = None,  # noqa: A002
                     display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: Any = None,
                     control_after_generate: bool | ControlAfterGenerate | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     remote: Any = None, socketless: bool | None = None, extra_dict: dict[str, Any] | None = None,
                     raw_link: bool | None = None, advanced: bool | None = None) -> None:
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            super().__init__(id, display_name, optional, tooltip, lazy, plain(default), socketless, None, None,
                             extra_dict, raw_link, advanced)
            self.options = list(options) if options is not None else None
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder
            self.remote = remote

        def as_dict(self) -> dict[str, Any]:
            upload = {plain(self.upload): True} if self.upload is not None else {}
            return super().as_dict() | pruned({
                "options": self.options, "control_after_generate": plain(self.control_after_generate),
                "image_folder": plain(self.image_folder),
                "remote": self.remote.as_dict() if hasattr(self.remote, "as_dict") else self.remote}) | upload

    class Output(PlainOutput):
        def __init__(self, id: str | None = None, display_name: str | None = None,  # noqa: A002
                     options: list[str] | None = None, tooltip: str | None = None,
                     is_output_list: bool = False) -> None:
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = list(options or [])
