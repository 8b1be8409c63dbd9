"""The one Settings object. main.py builds it from the command line and passes it down."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.folders import Folders

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_TOKEN_LENGTH = 16
MAX_DEFAULT_CACHE_BYTES = 2 * 1024**3


def is_loopback(host: str) -> bool:
    """Whether a listen address or Host name only reaches this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token_strength(token: str) -> None:
    """Refuse an auth token a guess or a copy-paste slip could produce (the message never repeats it)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the auth token is too short ({len(token)} characters); use at least "
                         f"{MIN_TOKEN_LENGTH} characters, e.g. the output of: python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))'")
    if any(ch.isspace() for ch in token):
        raise ValueError("the auth token contains whitespace (a quoting slip?); use a token without spaces, "
                         "tabs or newlines")


def default_cache_bytes(total_ram: int | None = None) -> int:
    """The output cache's default budget: an eighth of the machine's RAM, at most 2 GiB."""
    if total_ram is None:
        try:
            total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): today's budget
            return MAX_DEFAULT_CACHE_BYTES
    return min(MAX_DEFAULT_CACHE_BYTES, total_ram // 8)


class Settings(BaseModel):
    """Everything configurable about one Loom instance. No module-level defaults leak elsewhere."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # a refused auth token is never echoed

    host: str = Field("127.0.0.1", description="Address to listen on; non-loopback needs auth_token.")
    port: int = Field(8188, ge=0, le=65535, description="TCP port (0 picks a free one).")
    auth_token: str | None = Field(None, description="Bearer token every request must carry "
                                   f"(at least {MIN_TOKEN_LENGTH} characters, no whitespace).")
    models_dirs: tuple[Path, ...] = Field((Path("models"),), description="Model roots, searched in order.")
    input_dir: Path = Path("input")
    output_dir: Path = Path("output")
    temp_dir: Path = Path("temp")
    data_dir: Path = Field(Path("data"), description="Queue and history database live here.")
    user_dir: Path = Field(Path("user"), description="Settings and files of the frontend's users (ComfyUI's user "
                           "folder): default/ for the one user, or users.json and a folder per user with multi_user.")
    multi_user: bool = Field(False, description="Keep settings and files per user, picked by the Comfy-User request "
                             "header (ComfyUI's --multi-user). It separates users; it does not authenticate them.")
    frontend_dir: Path = Field(Path("frontend"), description="Static files of the graph editor.")
    frontend: Literal["loom", "comfyui"] = Field(
        "loom", description="The editor served at /: Loom's (frontend_dir), or ComfyUI's official frontend "
        "(comfyui_frontend_dir, else the installed comfyui-frontend-package: pip install -e '.[comfyui-frontend]').")
    comfyui_frontend_dir: Path | None = Field(None, description="A ComfyUI frontend build (its static folder) to "
                                              "serve with frontend comfyui instead of the installed package.")
    default_workflow: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parents[1] / "workflows" / "txt2img.json",
        description="Editor workflow the editor opens on first visit (GET /loom/default-workflow).")
    cache_bytes: int = Field(default_factory=default_cache_bytes, ge=0,
                             description="Output cache budget in bytes (default: RAM/8, at most 2 GiB).")
    cache_entries: int = Field(10_000, ge=0, description="Output cache budget in entries.")
    max_upload_bytes: int = Field(100 * 1024**2, gt=0)
    max_userdata_bytes: int = Field(10 * 1024**2, gt=0, description="Largest user data file (POST /userdata/{file}) "
                                    "and settings file, in bytes; larger is refused with 413.")
    max_image_pixels: int = Field(64 * 1024 * 1024, gt=0, description="Largest image accepted, in pixels.")
    max_queue: int = Field(1000, gt=0, description="Most pending prompts before POST /prompt is refused.")
    max_history: int = Field(10_000, gt=0, description="History entries kept (oldest dropped first).")
    max_extra_data_bytes: int = Field(2 * 1024**2, gt=0, description="Largest extra_data POST /prompt accepts, "
                                      "in bytes of compact JSON; larger is refused with 413, not stored.")
    max_history_reply_bytes: int = Field(32 * 1024**2, gt=0, description="Most bytes of one GET /history "
                                         "reply; entries beyond it are left out (X-Loom-History-Truncated).")
    allowed_origins: tuple[str, ...] = Field((), description="Extra browser origins allowed (CORS).")
    device: str = Field("auto", description="Compute device: auto, cpu, cuda, cuda:N, mps.")
    preview_method: str = Field("none", description="Latent previews: none, latent2rgb, taesd (the TAESD decoder in "
                                "models/vae_approx) or auto (taesd when its decoder is there, else latent2rgb).")
    vram_mode: Literal["high", "normal", "low", "none", "cpu"] = Field(
        "normal", description="Model placement: high (keep on device), normal (LRU within the budget), "
        "low (stream UNet blocks), none (stream UNet layers), cpu.")
    vram_budget: int | None = Field(None, ge=0, description="Device bytes for models and working memory "
                                    "(default: free device memory minus a reserve; unbounded on CPU).")
    ram_budget: int | None = Field(None, ge=0, description="RAM bytes for loaded models; idle ones beyond "
                                   "it are dropped and read again from their files when needed.")
    cluster: str | None = Field(None, description="Run prompts on Ray actors: 'auto' (join the Ray cluster "
                                "this machine is part of, or start a local one) or a Ray address.")
    cluster_workers: int | None = Field(None, gt=0, description="Most Ray workers (default: one per GPU, "
                                        "or per worker_cpus CPUs on a cluster without GPUs).")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs each worker takes on a cluster without GPUs.")
    extra_nodes: tuple[str, ...] = Field((), description="Modules whose register(registry) adds nodes.")
    custom_nodes_dirs: tuple[Path, ...] = Field((Path("custom_nodes"),), description="Folders of ComfyUI custom "
                                                "node packs, loaded at start (they run with the server's rights).")
    disable_custom_nodes: bool = Field(False, description="Load no custom node packs.")
    malloc_tuning: bool = Field(True, description="Keep freed tensor memory in the heap for reuse instead of "
                                "unmapping it (glibc; engine/malloc_tuning.py).")

    @field_validator("auth_token")
    @classmethod
    def _strong_token(cls, token: str | None) -> str | None:
        if token is not None:
            check_token_strength(token)
        return token

    @model_validator(mode="after")
    def _remote_needs_token(self) -> Settings:
        if not is_loopback(self.host) and not self.auth_token:
            raise ValueError(
                f"listening on {self.host} exposes Loom to the network; set an auth token "
                "with --auth-token or the LOOM_AUTH_TOKEN environment variable"
            )
        return self

    def folders(self) -> Folders:
        return Folders(
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            temp_dir=self.temp_dir,
            model_roots=tuple(self.models_dirs),
        )

    @property
    def database_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"
