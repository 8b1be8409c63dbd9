"""ComfyUI's data packages that its frontend reads from the server: workflow templates and node docs.

* ``comfyui-workflow-templates`` is a set of packages, each with a ``templates/`` folder: the JSON one holds
  the template browser's indexes (``index.json``, ``index.<locale>.json``, ``index_logo.json``) and each
  template's workflow (``<name>.json``); the media ones hold thumbnails (``<name>-1.webp``), input files and
  logos (``logo/...``). ``/templates/<file>`` is looked up in each installed package's folder in turn.
* ``comfyui-embedded-docs`` holds each core node's help (``docs/<Node>/<locale>.md`` and its pictures),
  served at ``/docs/<file>``.

Both are optional (``pip install -e '.[comfyui-frontend]'``): without them these paths answer 404 and the
template browser lists only custom-node templates (none). Nothing here imports a package: their folders are
found with :func:`importlib.util.find_spec`, so a server without them starts as fast as before.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from engine.errors import PathOutsideRoot
from engine.folders import resolve_inside

__all__ = ["DOCS_PACKAGE", "REQUIRED_FRONTEND_VERSION", "REQUIRED_TEMPLATES_VERSION", "TEMPLATE_PACKAGES",
           "docs_root", "find_file", "installed_version", "template_roots"]

#: The versions the ``comfyui-frontend`` extra pins (pyproject.toml), reported by /system_stats as ComfyUI does.
REQUIRED_FRONTEND_VERSION = "1.58.1"
REQUIRED_TEMPLATES_VERSION = "0.11.97"
#: The packages of comfyui-workflow-templates with a templates/ folder, the indexes' package first.
TEMPLATE_PACKAGES = (
    "comfyui_workflow_templates_json", "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_api", "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_other", "comfyui_workflow_templates_media_assets_01",
    "comfyui_workflow_templates_media_assets_02",
)
DOCS_PACKAGE = "comfyui_embedded_docs"


def _package_folder(package: str, folder: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / folder
        if path.is_dir():
            return path
    return None


def template_roots() -> tuple[Path, ...]:
    """The installed template packages' ``templates/`` folders, in :data:`TEMPLATE_PACKAGES` order."""
    return tuple(path for package in TEMPLATE_PACKAGES if (path := _package_folder(package, "templates")))


def docs_root() -> Path | None:
    """The installed node docs' folder, or None."""
    return _package_folder(DOCS_PACKAGE, "docs")


def find_file(roots: tuple[Path, ...], rel: str) -> Path | None:
    """The file ``rel`` names in the first root that has it; None when none does or it leaves its root."""
    for root in roots:
        try:
            path = resolve_inside(root, rel)
        except PathOutsideRoot:
            return None
        if path.is_file():
            return path
    return None


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` ("" when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""
