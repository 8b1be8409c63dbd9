"""The pydantic models of Loom's HTTP shapes that have no other source (ComfyUI's shapes).

These models are the boundary: request bodies are parsed with them (leniently: unknown keys are
kept or ignored, as ComfyUI clients send extra fields) and :mod:`engine.api.openapi` derives the
OpenAPI document from them. Responses that pass engine data through (history entries,
``/object_info``) are described here for the document and the contract test; the handlers build
them from the engine's own dicts. Websocket payloads of execution events are not here: their
schemas come from the event dataclasses of :mod:`engine.events` (see :mod:`engine.api.messages`);
only the ``status`` and ``feature_flags`` messages, which the hub makes itself, are modelled here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    """One error: a machine-readable ``type``, a short ``message`` and the full ``details``."""

    type: str = Field(description="Machine-readable error kind, e.g. no_prompt, invalid_json, queue_full.")
    message: str = Field(description="One-line summary.")
    details: str = Field("", description="What exactly was wrong and what to do about it.")
    extra_info: dict[str, Any] = Field(default_factory=dict, description="Structured context, if any.")


class NodeError(BaseModel):
    """Validation errors of one node of a submitted prompt."""

    errors: list[ErrorDetail]
    dependent_outputs: list[str] = Field(default_factory=list)
    class_type: str | None = None


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx JSON response (ComfyUI's ``POST /prompt`` error shape)."""

    error: ErrorDetail
    node_errors: dict[str, NodeError] = Field(default_factory=dict)


# --------------------------------------------------------------------------- requests


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class PromptRequest(_Lenient):
    """``POST /prompt``. ``prompt`` is an API-format prompt or an editor (UI) workflow; a UI
    workflow may also come as ``workflow``."""

    prompt: dict[str, Any] | None = Field(None, description="API-format prompt or editor workflow.")
    workflow: dict[str, Any] | None = Field(None, description="Editor-format workflow (Loom extension).")
    client_id: str | None = Field(None, description="Websocket clientId that receives this prompt's events.")
    prompt_id: str | None = Field(None, min_length=1, max_length=256,
                                  description="Client-chosen id; a uuid4 is made when absent.")
    extra_data: dict[str, Any] | None = Field(
        None, description="extra_pnginfo and other client data, stored in history: at most max_extra_data_bytes "
        "of compact JSON (413 beyond).")
    front: bool | None = Field(None, description="Queue before everything pending.")
    number: float | None = Field(None, description="Explicit priority number (lowest runs first); "
                                 "reported back as an integer when it is whole.")
    partial_execution_targets: list[str] | None = Field(
        None, description="Only run these output node ids.")


class QueueOperation(_Lenient):
    """``POST /queue``: clear pending prompts and/or delete some (a running one is interrupted)."""

    clear: bool | None = None
    delete: list[str] | None = None


class HistoryOperation(_Lenient):
    """``POST /history``: forget all entries and/or some."""

    clear: bool | None = None
    delete: list[str] | None = None


class InterruptRequest(_Lenient):
    """``POST /interrupt``: with ``prompt_id``, only interrupt if that prompt is the one running."""

    prompt_id: str | None = None


class FreeRequest(_Lenient):
    """``POST /free``: unload models and/or free cached memory after the current prompt."""

    unload_models: bool | None = None
    free_memory: bool | None = None


class UploadForm(BaseModel):
    """Multipart fields of ``POST /upload/image`` (``/upload/mask`` adds ``original_ref``)."""

    image: bytes = Field(description="The image file (multipart file part).")
    type: Literal["input", "output", "temp"] = "input"
    subfolder: str = ""
    overwrite: str = Field("false", description='"true" or "1" replaces an existing file.')
    original_ref: str | None = Field(
        None, description='/upload/mask only: JSON {"filename","subfolder","type"} of the image to mask.')


class FileRef(BaseModel):
    """A file in the input/output/temp folders."""

    filename: str
    subfolder: str = ""
    type: Literal["input", "output", "temp"] = "output"


# --------------------------------------------------------------------------- responses


class PromptWarning(BaseModel):
    """An input the prompt left out that took its declared default."""

    node_id: str
    class_type: str
    input_name: str
    message: str


class PromptResponse(BaseModel):
    prompt_id: str
    number: int | float = Field(description="Priority number: an integer (as ComfyUI's) unless a fractional "
                                "number was sent.")
    node_errors: dict[str, NodeError] = Field(default_factory=dict)
    warnings: list[PromptWarning] | None = Field(
        default=None, description="Beyond ComfyUI: inputs the prompt left out that took their declared "
        "default (an older prompt missing an input added later). Present only when there is one.")


class ExecInfo(BaseModel):
    queue_remaining: int


class PromptStatus(BaseModel):
    """``GET /prompt``."""

    exec_info: ExecInfo


class QueueResponse(BaseModel):
    """``GET /queue``: items are ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``; ``number``
    is an integer unless a fractional one was sent."""

    queue_running: list[list[Any]]
    queue_pending: list[list[Any]]


class HistoryStatus(BaseModel):
    status_str: Literal["success", "error"]
    completed: bool
    messages: list[list[Any]] = Field(description="[[event_type, data], ...]")


class HistoryEntry(BaseModel):
    prompt: list[Any] = Field(description="[number, prompt_id, prompt, extra_data, outputs_to_execute]")
    outputs: dict[str, dict[str, Any]]
    status: HistoryStatus
    meta: dict[str, Any] = Field(default_factory=dict)


class UploadResponse(BaseModel):
    name: str
    subfolder: str
    type: Literal["input", "output", "temp"]


class NodeInfo(BaseModel):
    """One entry of ``/object_info`` (ComfyUI's schema)."""

    input: dict[str, dict[str, Any]]
    input_order: dict[str, list[str]]
    output: list[str]
    output_is_list: list[bool]
    output_name: list[str]
    output_tooltips: list[str] = Field(default_factory=list)
    name: str
    display_name: str
    description: str
    python_module: str
    category: str
    output_node: bool


class SystemInfo(BaseModel):
    os: str
    ram_total: int
    ram_free: int
    comfyui_version: str = Field(description="The ComfyUI API version Loom is compatible with.")
    loom_version: str
    required_frontend_version: str = ""
    installed_templates_version: str = ""
    required_templates_version: str = ""
    python_version: str
    pytorch_version: str
    embedded_python: bool = False
    argv: list[str]


class DeviceInfo(BaseModel):
    name: str
    type: str
    index: int | None = Field(description="0 for the CPU device.")
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


class SystemStats(BaseModel):
    system: SystemInfo
    devices: list[DeviceInfo]


class FeatureFlags(BaseModel):
    """``GET /features`` and the websocket ``feature_flags`` answer."""

    model_config = ConfigDict(extra="forbid")

    supports_preview_metadata: bool = True
    max_upload_size: int


# --------------------------------------------------------------------------- users, settings, user data


class NewUser(_Lenient):
    """``POST /users`` (multi-user servers)."""

    username: str = Field(description="The new user's name; its id is made from it (ComfyUI's rules).")


class UserError(BaseModel):
    """ComfyUI's own error body of ``POST /users``: its frontend shows ``error`` to the person signing up."""

    model_config = ConfigDict(extra="forbid")

    error: str


class SingleUserConfig(BaseModel):
    """``GET /users`` of a single-user server (ComfyUI's shape)."""

    model_config = ConfigDict(extra="forbid")

    storage: Literal["server"] = "server"
    migrated: bool = Field(description="Whether the user's folder exists (settings or files were stored).")


class MultiUserConfig(BaseModel):
    """``GET /users`` of a multi-user server (ComfyUI's shape)."""

    model_config = ConfigDict(extra="forbid")

    storage: Literal["server"] = "server"
    users: dict[str, str] = Field(description="{user_id: name}; send the id as the Comfy-User header.")


class UserFileInfo(BaseModel):
    """A user data file (ComfyUI's ``full_info``)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Relative path, '/'-separated.")
    size: int
    modified: int = Field(description="Modification time, milliseconds since the epoch.")
    created: int = Field(description="Creation (inode change) time, milliseconds since the epoch.")


class UserDataEntry(BaseModel):
    """A file or folder of ``GET /v2/userdata`` (ComfyUI's shape)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(description="Path relative to the user's folder, '/'-separated.")
    type: Literal["file", "directory"]
    size: int | None = Field(None, description="Files only: bytes.")
    modified: float | None = Field(None, description="Files only: modification time, seconds since the epoch.")


# --------------------------------------------------------------------------- websocket messages (hub-made)


class StatusData(BaseModel):
    """Data of the websocket ``status`` message (on connect, with ``sid``, and on every queue change)."""

    model_config = ConfigDict(extra="forbid")

    status: PromptStatus
    sid: str | None = Field(None, description="Only in the first status after connecting.")


class ClientFeatureFlags(_Lenient):
    """The optional first client message ``{"type": "feature_flags", "data": {...}}``.

    ``supports_preview_metadata`` selects type-4 preview frames; ``previews: true`` (Loom) asks for
    type-1 preview frames. Either only matters when the server has previews enabled.
    """

    supports_preview_metadata: bool = False
    previews: bool = False


# --------------------------------------------------------------------------- schema references

REF = "#/components/schemas/{model}"


def ref(name: str | type[BaseModel]) -> dict[str, Any]:
    """A ``$ref`` to a component schema of the OpenAPI document."""
    return {"$ref": REF.format(model=name if isinstance(name, str) else name.__name__)}


def map_of(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": ref(model)}


#: ``{prompt_id: HistoryEntry}`` (GET /history and /history/{prompt_id}).
HISTORY = map_of(HistoryEntry)
#: ``{class_name: NodeInfo}`` (GET /object_info and /object_info/{node_class}).
NODE_INFO_MAP = map_of(NodeInfo)
#: Any websocket text frame (a component built by engine.api.messages).
WS_MESSAGE = ref("WsMessage")

#: Models that become component schemas of the OpenAPI document.
COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse, PromptRequest, PromptResponse, PromptStatus, QueueResponse, QueueOperation, HistoryOperation,
    HistoryEntry, InterruptRequest, FreeRequest, UploadForm, UploadResponse, NodeInfo, SystemStats, FeatureFlags,
    StatusData, ClientFeatureFlags, FileRef, NewUser, UserError, SingleUserConfig, MultiUserConfig, UserFileInfo,
    UserDataEntry,
)
