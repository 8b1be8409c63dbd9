"""Checking live HTTP replies and websocket frames against the server's own /openapi.json.

Each check returns the list of mismatches (empty when the reply keeps the contract), so the tests
can show them all and the self-test can prove that a mismatch is caught.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.api.conftest import Reply

DOC_URI = "urn:loom:openapi"


def pointer(*parts: str) -> str:
    """A JSON pointer (``/a/b~1c``) from unescaped parts."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Contract:
    """The validators of one OpenAPI document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource(contents=doc, specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
        self.messages: dict[str, str] = doc["components"]["schemas"]["WsMessage"]["discriminator"]["mapping"]

    def errors(self, where: str, instance: Any) -> list[str]:
        """Mismatches of ``instance`` against the schema at JSON pointer ``where`` of the document."""
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#{where}"}, registry=self.registry)
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message[:300]}"
                for e in validator.iter_errors(instance)]

    def _response(self, path: str, method: str, status: int) -> tuple[str, dict[str, Any]] | None:
        """(pointer, response object) documented for a status, following a ``$ref``."""
        responses = self.doc["paths"][path][method]["responses"]
        if str(status) not in responses:
            return None
        where = pointer("paths", path, method, "responses", str(status))
        entry = responses[str(status)]
        if "$ref" in entry:
            where = entry["$ref"].removeprefix("#")
            entry = self.doc
            for part in where.strip("/").split("/"):
                entry = entry[part.replace("~1", "/").replace("~0", "~")]
        return where, entry

    def reply_errors(self, path: str, method: str, reply: Reply) -> list[str]:
        """Mismatches of a live reply with what the document says ``METHOD path`` answers."""
        found = self._response(path, method, reply.status)
        if found is None:
            return [f"{method.upper()} {path}: status {reply.status} is not documented"]
        where, entry = found
        content = entry.get("content")
        if content is None:
            return [] if not reply.body else [f"{method.upper()} {path}: a body where none is documented"]
        ctype = (reply.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in content:
            return [f"{method.upper()} {path}: content type {ctype!r} is not one of {sorted(content)}"]
        if ctype != "application/json":
            return [] if reply.body else [f"{method.upper()} {path}: empty {ctype} body"]
        schema_at = f"{where}{pointer('content', ctype, 'schema')}"
        return [f"{method.upper()} {path}: {error}" for error in self.errors(schema_at, reply.json())]

    def frame_errors(self, frame: dict[str, Any]) -> list[str]:
        """Mismatches of a websocket text frame with the schema of its message type."""
        message_type = frame.get("type")
        if message_type not in self.messages:
            return [f"message type {message_type!r} is not documented"]
        where = self.messages[message_type].removeprefix("#")
        return [f"{message_type}: {error}" for error in self.errors(where, frame)]
