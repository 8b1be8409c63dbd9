"""MODEL as a pack sees it: :class:`ComfyModel`, the parts of ComfyUI's ModelPatcher packs use most.

It wraps Loom's immutable :class:`~engine.models.handles.ModelHandle`. Packs clone it and record
functions in ``model_options`` the way ComfyUI's ModelPatcher does (``sampler_cfg_function``,
``sampler_post_cfg_function`` and ``sampler_pre_cfg_function`` lists, ``disable_cfg1_optimization``,
``transformer_options["patches"]``), with its methods or by writing the dict; :meth:`ComfyModel.to_handle`
turns what was recorded into sampling patches on a new handle (engine/custom_nodes/comfy_guidance.py).
What Loom cannot run (weight patches, UNet wrappers, attention replacements, object patches other than
``model_sampling``) raises NotImplementedError naming the method and docs/custom-nodes.md.

Torch-free at import: the torch side is imported when a value is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.custom_nodes.runtime import current_run
from engine.models.handles import ModelHandle

__all__ = ["ComfyBaseModel", "ComfyModel", "unsupported"]

log = logging.getLogger(__name__)

_DOCS = "docs/custom-nodes.md"
#: model_options keys :meth:`ComfyModel.to_handle` reads; others a pack set are logged and ignored.
_KNOWN_OPTIONS = ("transformer_options", "sampler_cfg_function", "sampler_post_cfg_function",
                  "sampler_pre_cfg_function", "disable_cfg1_optimization")


def unsupported(method: str, detail: str = "") -> NotImplementedError:
    """The error a pack gets for a ComfyUI method Loom does not offer."""
    extra = f" ({detail})" if detail else ""
    return NotImplementedError(f"{method} is not supported by Loom's MODEL{extra}; see {_DOCS} for what packs "
                               "can use")


def _run_context() -> Any:
    ctx = current_run()
    if ctx is None:
        raise RuntimeError("a MODEL's device and model sampling are known only while a node runs")
    return ctx


class ComfyBaseModel:
    """``ModelPatcher.model`` as packs read it: ``model_sampling``, ``get_dtype()`` and ``latent_format``."""

    def __init__(self, handle: ModelHandle) -> None:
        self._handle = handle
        self._sampling: Any = None

    @property
    def model_sampling(self) -> Any:
        """Loom's model sampling of the handle (sigma_min, sigma_max, percent_to_sigma, timestep, sigma, ...)."""
        if self._sampling is None:
            from engine.sdk import ops

            self._sampling = ops.model_sampling(self._handle)
        return self._sampling

    @property
    def latent_format(self) -> Any:
        from engine.sdk import ops

        return ops.model_traits(self._handle.family, sampling_spec=self._handle.sampling).latent_format

    def get_dtype(self) -> Any:
        return _run_context().models.unet_dtype(self._handle)


class ComfyModel:
    """ComfyUI's ModelPatcher over a Loom MODEL handle (see the module docstring)."""

    def __init__(self, handle: ModelHandle, model_options: dict[str, Any] | None = None,
                 object_patches: dict[str, Any] | None = None, base: ComfyBaseModel | None = None) -> None:
        self.handle = handle
        self.model_options: dict[str, Any] = model_options if model_options is not None \
            else {"transformer_options": {}}
        self.object_patches: dict[str, Any] = object_patches if object_patches is not None else {}
        self.model = base if base is not None else ComfyBaseModel(handle)
        self.patches: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ cloning

    def clone(self) -> ComfyModel:
        """A new wrapper of the same model with its own copy of ``model_options`` (functions shared)."""
        options = _copy_options(self.model_options)
        return ComfyModel(self.handle, options, dict(self.object_patches), self.model)

    def is_clone(self, other: Any) -> bool:
        """True when ``other`` wraps the same model (a clone of this one or its original)."""
        return isinstance(other, ComfyModel) and other.model is self.model

    def clone_has_same_weights(self, other: Any) -> bool:
        return self.is_clone(other)

    # ------------------------------------------------------------------------------ sampler functions

    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable[..., Any],
                                       disable_cfg1_optimization: bool = False) -> None:
        """Replace CFG with ``sampler_cfg_function(args)`` (an old three-argument function gets cond, uncond
        and cond_scale)."""
        self.model_options["sampler_cfg_function"] = _args_function(sampler_cfg_function)
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable[..., Any],
                                            disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_post_cfg_function", post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable[..., Any],
                                           disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_pre_cfg_function", pre_cfg_function, disable_cfg1_optimization)

    def disable_model_cfg1_optimization(self) -> None:
        self.model_options["disable_cfg1_optimization"] = True

    def _append(self, key: str, function: Callable[..., Any], disable_cfg1_optimization: bool) -> None:
        self.model_options[key] = [*self.model_options.get(key, []), function]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    # ------------------------------------------------------------------------------ UNet patches

    def set_model_patch(self, patch: Callable[..., Any], name: str) -> None:
        """Add ``patch`` at the UNet patch point ``name`` (``transformer_options["patches"][name]``)."""
        from engine.custom_nodes.comfy_guidance import UNET_POINTS

        if name not in UNET_POINTS:
            raise unsupported(f"set_model_patch(..., {name!r})", f"Loom's UNet offers {', '.join(UNET_POINTS)}")
        transformer = self.model_options.setdefault("transformer_options", {})
        patches = transformer.setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_attn1_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_output_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Callable[..., Any]) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_attn1_replace(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("set_model_attn1_replace")

    def set_model_attn2_replace(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("set_model_attn2_replace")

    def set_model_unet_function_wrapper(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("set_model_unet_function_wrapper")

    def set_model_denoise_mask_function(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("set_model_denoise_mask_function")

    def set_model_sampler_calc_cond_batch_function(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("set_model_sampler_calc_cond_batch_function")

    def add_patches(self, *args: Any, **kwargs: Any) -> list[str]:
        raise unsupported("add_patches", "weight patches: use LoraLoader or the model merge nodes")

    def add_wrapper(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("add_wrapper")

    def add_wrapper_with_key(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("add_wrapper_with_key")

    def add_callback(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("add_callback")

    # ------------------------------------------------------------------------------ objects

    def add_object_patch(self, name: str, obj: Any) -> None:
        """Record an object patch; only ``model_sampling`` is known (read back by get_model_object)."""
        if name != "model_sampling":
            raise unsupported(f"add_object_patch({name!r}, ...)", "only 'model_sampling' is recorded")
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        """The object patched in as ``name``, else the model's own (``model_sampling`` only)."""
        if name in self.object_patches:
            return self.object_patches[name]
        if name == "model_sampling":
            return self.model.model_sampling
        raise unsupported(f"get_model_object({name!r})", "only 'model_sampling' is available")

    # ------------------------------------------------------------------------------ devices and sizes

    def model_dtype(self) -> Any:
        return self.model.get_dtype()

    @property
    def load_device(self) -> Any:
        return _run_context().models.device

    @property
    def offload_device(self) -> Any:
        import torch

        return torch.device("cpu")

    @property
    def size(self) -> int:
        """The checkpoint file's size in bytes (ComfyUI: the model's size in memory)."""
        return int(self.handle.checkpoint.size)

    def model_size(self) -> int:
        return self.size

    def memory_required(self, input_shape: Any) -> int:
        return 0

    # ------------------------------------------------------------------------------ back to Loom

    def to_handle(self) -> ModelHandle:
        """The handle with what this wrapper recorded as sampling patches (the handle itself when nothing was)."""
        patches = [*self._guidance_patches(), *self._unet_patches()]
        self._check_object_patches()
        handle = self.handle
        for patch in patches:
            handle = handle.with_sampling_patch(patch)
        return handle

    def _guidance_patches(self) -> list[Any]:
        from engine.custom_nodes.comfy_guidance import ComfyGuidancePatch

        options = self.model_options
        ignored = sorted(str(key) for key in options if key not in _KNOWN_OPTIONS)
        if ignored:
            log.warning("MODEL options Loom does not run were ignored: %s (see %s)", ", ".join(ignored), _DOCS)
        needs_uncond = bool(options.get("disable_cfg1_optimization", False))
        patches = [ComfyGuidancePatch("pre_cfg", fn, needs_uncond, options)
                   for fn in options.get("sampler_pre_cfg_function", [])]
        if options.get("sampler_cfg_function") is not None:
            patches.append(ComfyGuidancePatch("cfg", options["sampler_cfg_function"], needs_uncond, options))
        patches += [ComfyGuidancePatch("post_cfg", fn, needs_uncond, options)
                    for fn in options.get("sampler_post_cfg_function", [])]
        return patches

    def _unet_patches(self) -> list[Any]:
        from engine.custom_nodes.comfy_guidance import UNET_POINTS, ComfyUnetPatch

        transformer = self.model_options.get("transformer_options") or {}
        for key in ("patches_replace", "wrappers", "callbacks"):
            if transformer.get(key):
                raise unsupported(f'model_options["transformer_options"][{key!r}]')
        patches = []
        for point, functions in (transformer.get("patches") or {}).items():
            if point not in UNET_POINTS:
                raise unsupported(f'transformer_options["patches"][{point!r}]',
                                  f"Loom's UNet offers {', '.join(UNET_POINTS)}")
            patches += [ComfyUnetPatch(point, fn) for fn in functions]
        return patches

    def _check_object_patches(self) -> None:
        patched = self.object_patches.get("model_sampling")
        if patched is not None and patched is not self.model.model_sampling:
            raise unsupported("add_object_patch('model_sampling', ...) with a new model sampling",
                              "Loom samples with its own; use the ModelSampling* nodes")


def _args_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """ComfyUI's old three-argument cfg functions ``(cond, uncond, cond_scale)`` as one taking ``args``."""
    import inspect

    try:
        count = len(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return function
    if count != 3:
        return function
    return lambda args: function(args["cond"], args["uncond"], args["cond_scale"])


def _copy_options(value: Any) -> Any:
    """A copy of ``model_options`` whose dicts and lists are new and whose functions and tensors are shared."""
    if isinstance(value, dict):
        return {key: _copy_options(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_options(item) for item in value]
    return value
