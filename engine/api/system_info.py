"""``GET /system_stats``: the machine, Python, torch and devices, without importing torch.

Until something else has imported torch (the first prompt, or a cluster front that never does),
the torch version comes from the installed package's metadata and the one device reported is the
CPU with the machine's RAM. Once torch is loaded, CUDA devices are reported with their memory.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.api.comfyui_packages import REQUIRED_FRONTEND_VERSION, REQUIRED_TEMPLATES_VERSION, installed_version
from engine.settings import Settings

LOOM_VERSION = "0.1.0"
#: The ComfyUI release whose API Loom mirrors (reported as ``comfyui_version``).
COMFYUI_API_VERSION = "0.3.64"


def memory() -> tuple[int, int]:
    """(total, available) RAM in bytes; (0, 0) when the system does not say."""
    try:
        info = Path("/proc/meminfo").read_text().splitlines()
        values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in info if line.count(" ")}
        return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            return 0, 0


def scrub_argv(argv: list[str], secret: str | None) -> list[str]:
    """The command line without the auth token (it must never appear in /system_stats)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in ("--auth-token", "--token"):
            out.append(arg)
            hide_next = True
        elif arg.startswith(("--auth-token=", "--token=")):
            out.append(arg.split("=", 1)[0] + "=***")
        elif secret and secret in arg:
            out.append(arg.replace(secret, "***"))
        else:
            out.append(arg)
    return out


def loaded_torch() -> Any:
    """The torch module once another thread has finished importing it, else None (never imports it).

    While the server's background thread is still importing torch, ``sys.modules`` already holds a
    partly initialised module (its spec says ``_initializing``); that one must not be touched.
    """
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch


def torch_version() -> str:
    """The loaded torch's version, else the installed package's ("" when torch is not installed)."""
    torch = loaded_torch()
    if torch is not None:
        return str(torch.__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def cpu_device(ram_total: int, ram_free: int) -> dict[str, Any]:
    return {"name": "cpu", "type": "cpu", "index": 0, "vram_total": ram_total, "vram_free": ram_free,
            "torch_vram_total": ram_total, "torch_vram_free": ram_free}


def cuda_devices() -> list[dict[str, Any]]:
    """CUDA devices with their memory, only when torch is already loaded (never imports it)."""
    torch = loaded_torch()
    if torch is None or not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        reserved = torch.cuda.memory_reserved(index)
        devices.append({
            "name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda", "index": index,
            "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
            "torch_vram_free": reserved - torch.cuda.memory_allocated(index),
        })
    return devices


def system_stats(settings: Settings) -> dict[str, Any]:
    """ComfyUI's /system_stats without Loom's ``loom`` figures (the route adds the runner's)."""
    ram_total, ram_free = memory()
    stats: dict[str, Any] = {
        "system": {
            "os": os.name, "ram_total": ram_total, "ram_free": ram_free,
            "comfyui_version": COMFYUI_API_VERSION, "loom_version": LOOM_VERSION,
            "required_frontend_version": REQUIRED_FRONTEND_VERSION,
            "installed_templates_version": installed_version("comfyui-workflow-templates"),
            "required_templates_version": REQUIRED_TEMPLATES_VERSION,
            "python_version": sys.version, "pytorch_version": torch_version(),
            "embedded_python": False, "argv": scrub_argv(list(sys.argv), settings.auth_token),
        },
        "devices": cuda_devices() or [cpu_device(ram_total, ram_free)],
    }
    return stats
