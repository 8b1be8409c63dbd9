"""RunContext: the narrow view of the engine a node gets while it runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import Interrupted
from engine.events import EventSink, PreviewImage, Progress, WebsocketImage
from engine.expansion import GraphBuilder, expansion_prefix
from engine.folders import Folders
from engine.providers import ModelProvider, NoModels


@dataclass
class RunContext:
    """Handed to ``Node.run``: where files live, models, progress, interrupt checks, a logger.

    ``prompt`` and ``extra_pnginfo`` are what SaveImage embeds in its PNGs.
    """

    node_id: str
    prompt_id: str
    folders: Folders
    sink: EventSink
    interrupt: threading.Event
    prompt: Mapping[str, Any] = field(default_factory=dict)
    extra_pnginfo: Mapping[str, Any] = field(default_factory=dict)
    models: ModelProvider = field(default_factory=NoModels)
    previews: bool = False
    #: How previews are made when ``previews``: latent2rgb, taesd or auto (engine/vae_approx.py).
    preview_method: str = "latent2rgb"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("loom.node"))
    #: Which run of the node this is when it runs once per list item (0 otherwise).
    call_index: int = 0
    #: The websocket client the prompt came from (``client_id`` of POST /prompt), if it named one.
    client_id: str | None = None
    _graphs: int = 0

    def graph_builder(self) -> GraphBuilder:
        """A builder for a fragment this node expands into, with ComfyUI's id prefix for it."""
        builder = GraphBuilder(expansion_prefix(self.node_id, self.call_index, self._graphs))
        self._graphs += 1
        return builder

    def check_interrupted(self) -> None:
        """Raise Interrupted if the prompt was interrupted; call it between steps."""
        if self.interrupt.is_set():
            raise Interrupted(f"interrupted at node {self.node_id}")

    def progress(self, value: int, total: int) -> None:
        """Report progress (e.g. sampler steps) and honour an interrupt."""
        self.sink.emit(Progress(value=value, max=total, prompt_id=self.prompt_id, node=self.node_id))
        self.check_interrupted()

    def preview(self, image_format: str, data: bytes) -> None:
        """Send an encoded preview image (JPEG or PNG) to clients that asked for previews.

        Nodes check ``previews`` first so that no preview is computed when nobody wants it.
        """
        self.sink.emit(PreviewImage(prompt_id=self.prompt_id, node=self.node_id,
                                    image_format=image_format, data=data))

    def send_image(self, image_format: str, data: bytes) -> None:
        """Send an encoded image (PNG or JPEG) to the prompt's client as a binary websocket frame, always
        (not only to clients that asked for previews): SaveImageWebsocket's output."""
        self.sink.emit(WebsocketImage(prompt_id=self.prompt_id, node=self.node_id,
                                      image_format=image_format, data=data))
