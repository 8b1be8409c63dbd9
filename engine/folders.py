"""Where files live, and the one place that turns a requested name into a path safely.

Every path that comes from a request or a workflow (``/view``, uploads, image and model names)
resolves through :class:`Folders`, which refuses anything that would land outside its root:
``..`` segments, absolute paths, drive letters, NUL bytes and symlinks that point out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import PathOutsideRoot

#: Model folder names (ComfyUI's) and the other spellings found in model trees we read
#: (AUTOMATIC1111's ``models/Stable-diffusion``, ``models/Lora``, ...).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "vae": ("vae", "VAE"),
    "loras": ("loras", "Lora", "LyCORIS"),
    "controlnet": ("controlnet", "ControlNet"),
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "configs": ("configs",),
    "diffusers": ("diffusers",),
    "embeddings": ("embeddings",),
    "upscale_models": ("upscale_models", "ESRGAN"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "hypernetworks": ("hypernetworks",),
    "vae_approx": ("vae_approx",),
    "photomaker": ("photomaker",),
    "gligen": ("gligen",),
}

#: File endings a model folder lists.
MODEL_EXTENSIONS: tuple[str, ...] = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: Endings tried, in order, for an ``embedding:NAME`` written without one: ``.safetensors``, ``.pt`` and
#: ``.bin`` first (ComfyUI's order), then the other model endings.
EMBEDDING_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".bin",
                                       *(ext for ext in MODEL_EXTENSIONS if ext not in (".safetensors", ".pt", ".bin")))

#: The file kinds a client may read and write (``type`` in ``/view`` and ``/upload``).
FILE_KINDS: tuple[str, ...] = ("input", "output", "temp")


_ENCODED_ESCAPE = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)


def path_problem(part: str, *, from_request: bool = False) -> str | None:
    """Why a relative path piece may not be used, or None when it is fine.

    Always refused: NUL bytes, absolute paths and drive letters, ``..`` segments (backslashes count
    as separators). ``from_request`` (names straight from an HTTP request) also refuses backslashes
    and percent-encoded dots, slashes, backslashes and NULs, which only a double-decoding attack
    sends.
    """
    if "\x00" in part:
        return "contains a NUL byte"
    if from_request and "\\" in part:
        return "contains a backslash"
    norm = part.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "is an absolute path"
    if any(seg == ".." for seg in norm.split("/")):
        return "contains '..'"
    if from_request and _ENCODED_ESCAPE.search(part):
        return "contains a percent-encoded path character"
    return None


def _checked_pieces(parts: Iterable[str]) -> list[str]:
    """The path segments of ``parts``, each part checked by :func:`path_problem` (PathOutsideRoot if not)."""
    pieces: list[str] = []
    for part in parts:
        if not part:
            continue
        problem = path_problem(part)
        if problem is not None:
            raise PathOutsideRoot(f"path {part!r} {problem}")
        pieces.extend(seg for seg in part.replace("\\", "/").split("/") if seg and seg != ".")
    return pieces


def join_inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root``, checking the names only (lexically): PathOutsideRoot for ``..``,
    absolute paths and NULs. Symlinks that the folder itself holds are followed wherever they lead: in a
    model folder they are the operator's choice (one models folder shared with ComfyUI or AUTOMATIC1111, a
    large file linked from another disk), unlike a name a request makes up. Folders that clients write or
    read files of (input, output, temp) use :func:`resolve_inside`, which refuses links out.
    """
    return root.joinpath(*_checked_pieces(parts))


def resolve_inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and return the real path, or raise PathOutsideRoot.

    Each part must pass :func:`path_problem`. Symlinks are resolved before the final check, so a
    link that leads out of ``root`` is refused.
    """
    root_real = root.resolve()
    pieces = _checked_pieces(parts)
    candidate = root_real.joinpath(*pieces).resolve()
    if candidate != root_real and root_real not in candidate.parents:
        raise PathOutsideRoot(f"{'/'.join(pieces)!r} resolves outside {root_real}")
    return candidate


_ANNOTATION = re.compile(r"^(?P<name>.*?)\s*\[(?P<kind>input|output|temp)\]$")


def split_annotation(name: str, default_kind: str = "input") -> tuple[str, str]:
    """ComfyUI's ``"NAME [output]"`` file references: (kind, NAME); a plain name is in ``default_kind``."""
    match = _ANNOTATION.match(name)
    return (match["kind"], match["name"]) if match else (default_kind, name)


@dataclass(frozen=True)
class Folders:
    """The input/output/temp folders and the model roots of one Loom instance."""

    input_dir: Path
    output_dir: Path
    temp_dir: Path
    model_roots: tuple[Path, ...] = field(default_factory=tuple)

    def ensure(self) -> None:
        """Create the input, output and temp folders if they are missing."""
        for path in (self.input_dir, self.output_dir, self.temp_dir):
            path.mkdir(parents=True, exist_ok=True)

    def root(self, kind: str) -> Path:
        """The folder of a file kind: ``input``, ``output`` or ``temp``."""
        if kind == "input":
            return self.input_dir
        if kind == "output":
            return self.output_dir
        if kind == "temp":
            return self.temp_dir
        raise ValueError(f"unknown file type {kind!r}; use one of {', '.join(FILE_KINDS)}")

    def file_path(self, kind: str, filename: str, subfolder: str = "") -> Path:
        """A file inside the input/output/temp folder; raises PathOutsideRoot on escapes."""
        return resolve_inside(self.root(kind), subfolder, filename)

    def list_files(self, kind: str, extensions: Sequence[str] = ()) -> list[str]:
        """Relative names of the files under a kind's folder, sorted, optionally by ending."""
        return _list_tree(self.root(kind), extensions)

    def model_dirs(self, folder: str) -> list[Path]:
        """Existing directories that hold models of ``folder`` across every model root."""
        names = MODEL_FOLDERS.get(folder, (folder,))
        found: list[Path] = []
        for root in self.model_roots:
            for name in names:
                path = root / name
                if path.is_dir() and path not in found:
                    found.append(path)
        return found

    def model_save_dir(self, filename_prefix: str) -> tuple[Path, str]:
        """Where a model-saving node's ``filename_prefix`` saves: ``(folder, name stem)``.

        A prefix whose first folder names a model folder (``checkpoints/ComfyUI``, ``loras/x``, ``vae/...``,
        ``clip/...``, ``diffusion_models/...``, or their other spellings) saves into that model folder of the
        first model root that has it (else the first root), so the file is listed by the loaders at once; any
        other prefix saves under the output folder, as ComfyUI saves everything. Subfolders of the prefix are
        kept; a prefix that would leave the folder raises PathOutsideRoot.
        """
        prefix = filename_prefix.replace("\\", "/").strip("/")
        first, _, rest = prefix.partition("/")
        kind = next((k for k, names in MODEL_FOLDERS.items() if first in names), None)
        if kind is not None and rest and self.model_roots:
            dirs = [d for d in self.model_dirs(kind) if d.name == first] or self.model_dirs(kind)
            base, prefix = (dirs[0] if dirs else self.model_roots[0] / first), rest
        else:
            base = self.output_dir
        subfolder, _, name = prefix.rpartition("/")
        if not name:
            raise PathOutsideRoot(f"filename_prefix {filename_prefix!r} names no file")
        try:
            directory = resolve_inside(base, subfolder)
        except PathOutsideRoot as exc:
            raise PathOutsideRoot(f"filename_prefix {filename_prefix!r} would save outside {base}: {exc}; use a "
                                  "relative prefix without '..'") from exc
        directory.mkdir(parents=True, exist_ok=True)
        return directory, name

    def list_models(self, folder: str, extensions: Sequence[str] = MODEL_EXTENSIONS) -> list[str]:
        """Relative model file names in a model folder (all roots merged), sorted, unique."""
        names: set[str] = set()
        for directory in self.model_dirs(folder):
            names.update(_list_tree(directory, extensions, follow_links=True))
        return sorted(names)

    def embedding_names(self) -> list[str]:
        """Textual-inversion names as prompts write them (``embedding:NAME``): the embeddings folder's
        model files with their ending stripped, sorted, unique (``GET /embeddings``)."""
        return sorted({os.path.splitext(name)[0] for name in self.list_models("embeddings")})

    def model_path(self, folder: str, name: str) -> Path:
        """The file of model ``name`` in ``folder`` (symlinks the folder holds followed: :func:`join_inside`);
        FileNotFoundError names where it looked."""
        dirs = self.model_dirs(folder)
        for directory in dirs:
            path = join_inside(directory, name)
            if path.is_file():
                return path
        looked = ", ".join(str(d) for d in dirs) or "no such folder under any model root"
        raise FileNotFoundError(f"model {name!r} not found in {folder} ({looked})")


def walk_tree(root: Path, *, follow_links: bool = False) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``root`` with hidden folders skipped and the rest in name order; ``follow_links``
    descends into linked folders too, each real folder once (so a link loop ends)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def _list_tree(root: Path, extensions: Iterable[str], *, follow_links: bool = False) -> list[str]:
    """Files under ``root`` by relative name (:func:`walk_tree`)."""
    exts = tuple(e.lower() for e in extensions)
    if not root.is_dir():
        return []
    out: list[str] = []
    for dirpath, _, filenames in walk_tree(root, follow_links=follow_links):
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or (exts and not name.lower().endswith(exts)):
                continue
            out.append((rel_dir / name).as_posix())
    return sorted(out)
