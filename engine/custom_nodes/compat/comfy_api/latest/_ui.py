"""``comfy_api.latest.ui``: what a V3 node shows in the UI, passed as ``io.NodeOutput(..., ui=...)``.

Each object's ``as_dict()`` is ComfyUI's per-node UI dict: :class:`PreviewText` gives ``{"text": [text]}``,
:class:`PreviewImage` saves the images into the temp folder (fast compression, the prompt and PNG extras of
``cls.hidden`` as metadata) and gives ``{"images": [{"filename", "subfolder", "type"}], "animated": [False]}``.
Written from ComfyUI's interface, not its code.
"""

from __future__ import annotations

from typing import Any

from engine.custom_nodes.compat.comfy_api.latest._io_types import FolderType

__all__ = ["PreviewImage", "PreviewMask", "PreviewText", "SavedImages", "SavedResult", "UIOutput"]


class UIOutput:
    """Base of the UI objects: ``as_dict()`` gives the UI dict."""

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not define as_dict()")


class SavedResult(dict[str, Any]):
    """One saved file as the UI names it: ``{"filename", "subfolder", "type"}``."""

    def __init__(self, filename: str, subfolder: str, type: FolderType | str) -> None:  # noqa: A002
        super().__init__(filename=filename, subfolder=subfolder, type=getattr(type, "value", type))

    @property
    def filename(self) -> str:
        return str(self["filename"])

    @property
    def subfolder(self) -> str:
        return str(self["subfolder"])


class SavedImages(UIOutput):
    """Images a node saved itself."""

    def __init__(self, results: list[SavedResult], is_animated: bool = False) -> None:
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"images": list(self.results)}
        if self.is_animated:
            data["animated"] = [True]
        return data


class PreviewText(UIOutput):
    """A text shown under the node."""

    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": [self.value]}


class PreviewImage(UIOutput):
    """An IMAGE batch saved into the temp folder and shown on the node; pass ``cls=cls`` to keep the prompt."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        from engine.custom_nodes.compat.nodes import PreviewImage as TempSaver

        hidden = getattr(cls, "hidden", None)
        prompt = getattr(hidden, "prompt", None)
        extra = getattr(hidden, "extra_pnginfo", None)
        saved = TempSaver().save_images(image, "ComfyUI", prompt, extra)["ui"]["images"]
        self.values = [SavedResult(item["filename"], item["subfolder"], item["type"]) for item in saved]
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": list(self.values), "animated": [self.animated]}


class PreviewMask(PreviewImage):
    """A MASK batch ``[B, H, W]`` shown as grey images."""

    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(image, animated, cls, **kwargs)
