"""Reading GLIGEN files (models/gligen) into :class:`engine.backend.gligen.Gligen`.

The layout (GLIGEN's SD1 text-box checkpoints as ComfyUI distributes them), under any prefix:

* ``position_net.null_positive_feature`` [text dim], ``position_net.null_position_feature``
  [8 * Fourier bands], ``position_net.linears.{0,2,4}.{weight,bias}`` (the MLP);
* per transformer block ``{input_blocks.N | middle_block | output_blocks.N}.<i>.transformer_blocks.K.
  fuser.*``: ``linear``, ``attn.to_q`` / ``to_k`` / ``to_v`` (no bias), ``attn.to_out.0``,
  ``ff.net.0.proj``, ``ff.net.2``, ``norm1``, ``norm2``, ``alpha_attn``, ``alpha_dense``.

Sizes come from the shapes; heads follow ComfyUI's rule (:func:`engine.backend.gligen.heads_for`).
``.safetensors`` files are read directly, ``.pth`` / ``.ckpt`` / ``.pt`` / ``.bin`` only through
``torch.load(weights_only=True)`` (a ``state_dict`` or ``model`` entry is unwrapped). Parsed files are
cached by path, size and mtime (:func:`read_gligen`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.backend.gligen import BlockKey, GatedFuser, Gligen, Linear, PositionNet, heads_for
from engine.errors import ModelError
from engine.models.handles import FileRef

log = logging.getLogger(__name__)

_FUSER_KEY = re.compile(r"(?:^|\.)(input_blocks\.(\d+)|middle_block|output_blocks\.(\d+))\.\d+\."
                        r"transformer_blocks\.(\d+)\.fuser\.(.+)$")
_POSITION = "position_net."
_CACHED_FILES = 4


class GligenFileError(ModelError):
    """A GLIGEN file that cannot be used: names the file and what is wrong."""


@functools.lru_cache(maxsize=_CACHED_FILES)
def read_gligen(ref: FileRef) -> Gligen:
    """The GLIGEN model of ``ref`` (cached by path, size and mtime: an edited file is re-read)."""
    path = Path(ref.path)
    model = parse_gligen(_read_tensors(path), path.name)
    log.info("read GLIGEN %s: %d fusers, text dim %d, object dim %d", path.name, len(model.fusers),
             model.position_net.text_dim, model.position_net.object_dim)
    return model


def _read_tensors(path: Path) -> Mapping[str, Any]:
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (OSError, SafetensorError) as exc:
            raise GligenFileError(f"GLIGEN file {path.name} cannot be read as safetensors ({exc})") from exc
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds; all mean "refused"
        raise GligenFileError(f"GLIGEN file {path.name} could not be read safely ({type(exc).__name__}); pickled "
                              "files are read with weights_only=True only: re-save it as .safetensors") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict):
        raise GligenFileError(f"GLIGEN file {path.name} does not hold a state dict (found {type(data).__name__})")
    return data


class _Tensors:
    """Named tensor lookups that fail with the file's name and the missing key."""

    def __init__(self, state: Mapping[str, Any], prefix: str, file_name: str) -> None:
        self.state, self.prefix, self.file_name = state, prefix, file_name

    def get(self, name: str) -> torch.Tensor:
        value = self.state.get(self.prefix + name)
        if not isinstance(value, torch.Tensor):
            raise GligenFileError(f"GLIGEN file {self.file_name}: missing tensor {self.prefix + name!r}")
        return value.float()

    def linear(self, name: str, bias: bool = True) -> Linear:
        return self.get(f"{name}.weight"), self.get(f"{name}.bias") if bias else None


def parse_gligen(state: Mapping[str, Any], file_name: str) -> Gligen:
    """Validate a GLIGEN state dict and build its modules (GligenFileError naming what is wrong)."""
    anchor = next((k for k in state if str(k).endswith(_POSITION + "null_positive_feature")), None)
    if anchor is None:
        raise GligenFileError(f"{file_name} is not a GLIGEN file: no position_net.null_positive_feature tensor "
                              "(pick a GLIGEN text-box model from models/gligen)")
    prefix = str(anchor)[:-len("null_positive_feature")]
    net = _position_net(_Tensors(state, prefix, file_name), file_name)
    blocks: dict[BlockKey, str] = {}  # block -> its fuser's key prefix
    for key in state:
        match = _FUSER_KEY.search(str(key))
        if match is None:
            continue
        blocks[_block(match)] = str(key)[:match.start(5)]
    if not blocks:
        raise GligenFileError(f"GLIGEN file {file_name} has no fuser tensors (…transformer_blocks.K.fuser.*)")
    fusers = {block: _fuser(_Tensors(state, prefix_, file_name), net.object_dim, file_name)
              for block, prefix_ in blocks.items()}
    return Gligen(Path(file_name).stem, net, fusers)


def _block(match: re.Match[str]) -> BlockKey:
    """The PatchContext name of a fuser key's transformer block."""
    if match[2] is not None:
        return "input", int(match[2]), int(match[4])
    if match[3] is not None:
        return "output", int(match[3]), int(match[4])
    return "middle", 0, int(match[4])


def _position_net(t: _Tensors, file_name: str) -> PositionNet:
    null_text, null_position = t.get("null_positive_feature"), t.get("null_position_feature")
    linears = (t.linear("linears.0"), t.linear("linears.2"), t.linear("linears.4"))
    if null_position.ndim != 1 or null_position.shape[0] % 8 or null_text.ndim != 1:
        raise GligenFileError(f"GLIGEN file {file_name}: null features of shapes {list(null_text.shape)} / "
                              f"{list(null_position.shape)} (expected [text dim] / [8 * Fourier bands])")
    width = null_text.shape[0] + null_position.shape[0]
    for name, (weight, bias) in zip(("linears.0", "linears.2", "linears.4"), linears, strict=True):
        if weight.ndim != 2 or weight.shape[1] != width or bias is None or bias.shape != weight.shape[:1]:
            raise GligenFileError(f"GLIGEN file {file_name}: position_net.{name} has shape {list(weight.shape)} "
                                  f"after width {width} (the MLP layers do not chain)")
        width = weight.shape[0]
    return PositionNet(null_text, null_position, linears)


def _fuser(t: _Tensors, object_dim: int, file_name: str) -> GatedFuser:
    linear = t.linear("linear")
    width = int(linear[0].shape[0])
    to_q = t.get("attn.to_q.weight")
    inner = int(to_q.shape[0])
    heads = heads_for(object_dim, inner)
    if linear[0].shape[1] != object_dim or to_q.shape[1] != width or inner % heads:
        raise GligenFileError(f"GLIGEN file {file_name}: fuser {t.prefix!r} has linear {list(linear[0].shape)} "
                              f"and to_q {list(to_q.shape)}, not matching the position net's object dim {object_dim}")
    return GatedFuser(
        linear=linear, norm1=t.linear("norm1"), norm2=t.linear("norm2"),
        to_q=to_q, to_k=t.get("attn.to_k.weight"), to_v=t.get("attn.to_v.weight"), to_out=t.linear("attn.to_out.0"),
        ff_in=t.linear("ff.net.0.proj"), ff_out=t.linear("ff.net.2"),
        alpha_attn=t.get("alpha_attn").reshape(()), alpha_dense=t.get("alpha_dense").reshape(()), heads=heads)
