"""Typed errors. Each one says what was wrong, where (node id, input name) and what to do.

Graph errors map one-to-one onto ComfyUI's validation error types (the ``kind`` attribute), so the
400 response of ``POST /prompt`` has the shape ComfyUI clients already parse.
"""

from __future__ import annotations

from typing import Any


class LoomError(Exception):
    """Base of every error Loom raises on purpose."""


class GraphError(LoomError):
    """A problem with one node of a submitted graph, found before anything runs."""

    kind = "invalid_prompt"
    summary = "Invalid prompt"

    def __init__(
        self,
        node_id: str | None,
        message: str,
        *,
        input_name: str | None = None,
        class_type: str | None = None,
        extra_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.message = message
        self.input_name = input_name
        self.class_type = class_type
        self.extra_info = dict(extra_info or {})
        if input_name is not None:
            self.extra_info.setdefault("input_name", input_name)

    def to_comfy(self) -> dict[str, Any]:
        """ComfyUI's ``{type, message, details, extra_info}`` error object."""
        return {
            "type": self.kind,
            "message": self.summary,
            "details": self.message,
            "extra_info": self.extra_info,
        }


class UnknownNode(GraphError):
    kind = "invalid_prompt"
    summary = "Unknown node type"


class MalformedNode(GraphError):
    kind = "invalid_prompt"
    summary = "Malformed node"


class MissingInput(GraphError):
    kind = "required_input_missing"
    summary = "Required input is missing"


class BadLink(GraphError):
    kind = "bad_linked_input"
    summary = "Bad linked input"


class TypeMismatch(GraphError):
    kind = "return_type_mismatch"
    summary = "Return type mismatch between linked nodes"


class BadValue(GraphError):
    kind = "invalid_input_type"
    summary = "Invalid input value"


class ValueTooSmall(GraphError):
    kind = "value_smaller_than_min"
    summary = "Value smaller than min"


class ValueTooLarge(GraphError):
    kind = "value_bigger_than_max"
    summary = "Value bigger than max"


class NotInChoices(GraphError):
    kind = "value_not_in_list"
    summary = "Value not in list"


class Cycle(GraphError):
    kind = "dependency_cycle"
    summary = "Dependency cycle"


class NoOutputs(GraphError):
    kind = "prompt_no_outputs"
    summary = "Prompt has no outputs"


class ValidationFailed(LoomError):
    """Every error found in a graph, grouped per node; renders as ComfyUI's 400 body."""

    def __init__(
        self,
        errors: list[GraphError],
        dependent_outputs: dict[str, list[str]] | None = None,
    ) -> None:
        self.errors = errors
        self.dependent_outputs = dependent_outputs or {}
        first = errors[0].message if errors else "no errors"
        super().__init__(f"{len(errors)} error(s) in the prompt; first: {first}")

    def node_errors(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for err in self.errors:
            if err.node_id is None:
                continue
            entry = out.setdefault(
                err.node_id,
                {
                    "errors": [],
                    "dependent_outputs": self.dependent_outputs.get(err.node_id, []),
                    "class_type": err.class_type,
                },
            )
            entry["errors"].append(err.to_comfy())
        return out

    def to_response(self) -> dict[str, Any]:
        """The body of ComfyUI's 400 response to ``POST /prompt``."""
        top = [e for e in self.errors if e.node_id is None]
        if top:
            error = top[0].to_comfy()
        else:
            details = "; ".join(f"node {e.node_id}: {e.message}" for e in self.errors[:20])
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            }
        return {"error": error, "node_errors": self.node_errors()}


class Interrupted(LoomError):
    """Raised inside a node when the running prompt was interrupted."""


class OutOfMemory(LoomError):
    """The compute device ran out of memory; the message says what to change."""


class NodeExecutionError(LoomError):
    """A node raised while running. Carries what an ``execution_error`` event needs."""

    def __init__(
        self,
        node_id: str,
        class_type: str,
        message: str,
        *,
        exception_type: str,
        traceback_lines: list[str],
        current_inputs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{class_type} (node {node_id}): {message}")
        self.node_id = node_id
        self.class_type = class_type
        self.message = message
        self.exception_type = exception_type
        self.traceback_lines = traceback_lines
        self.current_inputs = current_inputs or {}


class QueueFull(LoomError):
    """The prompt queue holds its maximum number of pending prompts."""


class PathOutsideRoot(LoomError):
    """A requested file path would resolve outside the folder it must stay in."""


class ModelError(LoomError):
    """A model file cannot be used as asked (wrong kind of file, wrong model family); says which and why."""


class LoraMismatch(ModelError):
    """A LoRA does not fit the model it is applied to: names the file, what it looks like and the model."""
