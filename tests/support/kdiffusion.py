"""The PyPI ``k-diffusion`` package's samplers as a test-only reference.

k-diffusion's package ``__init__`` imports its training stack (torchvision, CLIP, wandb, ...), which
the tests neither need nor install (``make setup-test`` installs the wheel with ``--no-deps``). Only
``k_diffusion/sampling.py`` is loaded here, from the installed wheel, with the two things it imports
from elsewhere stood in for while it loads: ``k_diffusion.utils.append_dims`` (index a tensor up to
``n`` dimensions) and ``torchdiffeq.odeint`` (used by its log-likelihood helper only, never by a sampler).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from torch import Tensor


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims, more than {target_dims}")
    return x[(...,) + (None,) * missing]


def _no_odeint(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("torchdiffeq is not installed for the tests")


def load_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module (raises ImportError naming the fix when the wheel is missing)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: run `make setup-test` (it installs k-diffusion --no-deps)")
    source = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(source.parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims  # type: ignore[attr-defined]
    stand_ins = {"k_diffusion": package, "k_diffusion.utils": utils}
    if importlib.util.find_spec("torchdiffeq") is None:
        torchdiffeq = types.ModuleType("torchdiffeq")
        torchdiffeq.odeint = _no_odeint  # type: ignore[attr-defined]
        stand_ins["torchdiffeq"] = torchdiffeq
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", source)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module
