"""Writing a .safetensors file one tensor at a time, under a free name, never replacing a file.

The format (the safetensors specification): an 8-byte little-endian header length, a JSON header (each
tensor's ``dtype``, ``shape`` and ``data_offsets`` into the byte buffer that follows, plus string
``__metadata__``), padded with spaces to a multiple of 8, then the tensors' bytes back to back. The header is
written from the entries' declared shapes and dtypes before any tensor exists; each tensor is then made,
converted, written and dropped, so saving a model holds one tensor of it at a time besides the model.

The bytes go to a hidden temporary file in the target folder, which then takes the first free name of the
counted series (``ComfyUI_00001_.safetensors``, ``..._00002_...``) by a hard link, so a reader never sees a
partial file and two savers never overwrite each other (engine/files.py).
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engine.files import NamePolicy, claim_free, counted_names

__all__ = ["SAFETENSORS_DTYPES", "TensorEntry", "write_safetensors"]

#: torch dtype -> the format's dtype name.
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor to write: its key, shape and stored dtype, and how to make it (called once, when written;
    the result is converted to ``dtype``)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def _header(entries: Sequence[TensorEntry], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        if entry.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{entry.name}: safetensors cannot store {entry.dtype}")
        header[entry.name] = {"dtype": SAFETENSORS_DTYPES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    data = json.dumps(header, separators=(",", ":")).encode()
    return data + b" " * (-len(data) % 8)


def _tensor_bytes(entry: TensorEntry) -> bytes:
    tensor = entry.make().detach().to(device="cpu", dtype=entry.dtype).contiguous()
    if tuple(tensor.shape) != entry.shape:
        raise ValueError(f"{entry.name}: made a tensor of shape {tuple(tensor.shape)}, declared {entry.shape}")
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path: Path, entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None = None, *,
                      names: NamePolicy = counted_names, check: Callable[[], None] | None = None) -> Path:
    """Write ``entries`` to ``path``, or to the next free name of its series; returns the path written.

    ``check`` runs before each tensor (an interrupt check: raising leaves nothing behind). Duplicate names
    are refused.
    """
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"{entry.name} is written twice")
        seen.add(entry.name)
    header = _header(entries, metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".loom-{secrets.token_hex(8)}.part"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides, as for any file
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)))
            handle.write(header)
            for entry in entries:
                if check is not None:
                    check()
                handle.write(_tensor_bytes(entry))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return claim_free(temporary, path, names=names)
