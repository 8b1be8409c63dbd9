"""``comfy.utils.ProgressBar``: a pack's progress, reported as Loom progress events of the node running now.

The bar remembers the :class:`engine.context.RunContext` of the node that made it (or, made outside a node,
the one running when it is updated), so updates from the pack's worker threads still reach the right prompt.
Each update emits a :class:`engine.events.Progress` and then honours an interrupt, as Loom's own progress does
(:class:`engine.errors.Interrupted`, which is ``comfy.model_management.InterruptProcessingException``).
Outside a node an update only records the value.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from engine.context import RunContext
from engine.custom_nodes.runtime import current_run
from engine.events import Progress

__all__ = ["ProgressBar"]

log = logging.getLogger(__name__)


class ProgressBar:
    """ComfyUI's ``ProgressBar(total, node_id=None)`` with ``update`` and ``update_absolute``."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = total
        self.current = 0
        self.node_id = node_id
        self._ctx = current_run()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        """Set the progress to ``value`` (capped at ``total``) and report it; ``preview`` is ComfyUI's
        ``(format, PIL image, max size)``, sent when the client asked for previews."""
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        ctx = self._ctx if self._ctx is not None else current_run()
        if ctx is None:
            return
        node = str(self.node_id) if self.node_id is not None else ctx.node_id
        ctx.sink.emit(Progress(value=int(self.current), max=int(self.total), prompt_id=ctx.prompt_id, node=node))
        if preview is not None and ctx.previews:
            _send_preview(ctx, preview)
        ctx.check_interrupted()

    def update(self, value: int) -> None:
        """Advance the progress by ``value`` steps."""
        self.update_absolute(self.current + value)


def _send_preview(ctx: RunContext, preview: Any) -> None:
    """Encode a pack's ``(format, PIL image, max size)`` preview and send it; a malformed one is logged and skipped."""
    try:
        image_format, image, max_size = preview
        image = image.copy()
        if max_size:
            image.thumbnail((int(max_size), int(max_size)))
        buffer = io.BytesIO()
        kind = "PNG" if str(image_format).upper() == "PNG" else "JPEG"
        image.convert("RGB").save(buffer, format=kind, quality=95)
    except (TypeError, ValueError, AttributeError, OSError) as exc:
        log.debug("custom nodes: preview %r not sent: %s", type(preview).__name__, exc)
        return
    ctx.preview(kind, buffer.getvalue())
