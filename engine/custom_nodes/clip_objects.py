"""CLIP as a pack sees it: :class:`ComfyClip`, the parts of ComfyUI's ``comfy.sd.CLIP`` packs use most.

``tokenize(text)`` returns :class:`ComfyTokens`, a dict shaped as ComfyUI's: one key per text tower
(``"l"``, ``"g"``, ``"h"``), each a list of 77-token chunks of ``(token, weight)`` pairs (``(token,
weight, word_id)`` with ``return_word_ids``; an embedding's slot holds its vector in place of the
token, as in ComfyUI). ``encode_from_tokens`` encodes with Loom's text encoder of the running node
(``ctx.models``): the pairs a pack left alone are encoded exactly as Loom's CLIPTextEncode encodes
them, and edited pairs are read back as ids and weights. Shapes are ComfyUI's: ``cond`` [1, 77 * chunks,
dim], ``pooled`` [1, pooled_dim].

Torch-free at import: the torch side is imported when a value is needed.
"""

from __future__ import annotations

from typing import Any

from engine.custom_nodes.model_objects import unsupported
from engine.custom_nodes.runtime import current_run
from engine.models.handles import ClipHandle

__all__ = ["ComfyClip", "ComfyTokens"]

#: Loom's tower keys and the names ComfyUI's tokenizers give them.
_COMFY_NAMES = {"clip_l": "l", "clip_g": "g", "clip_h": "h"}


def _run_context() -> Any:
    ctx = current_run()
    if ctx is None:
        raise RuntimeError("a CLIP tokenizes and encodes only while a node runs")
    return ctx


class ComfyTokens(dict[str, list[list[tuple[Any, ...]]]]):
    """ComfyUI's token dict, remembering Loom's tokenized prompts (``prompts``, by Loom's tower key) and the
    pairs they were shown as, so untouched entries encode exactly as Loom's own nodes encode them."""

    def __init__(self, prompts: dict[str, Any], word_ids: bool) -> None:
        super().__init__()
        self.prompts = prompts
        self.shown: dict[str, list[list[tuple[Any, ...]]]] = {}
        for key, prompt in prompts.items():
            pairs = _pairs(prompt, word_ids)
            self[_COMFY_NAMES.get(key, key)] = pairs
            self.shown[key] = [list(chunk) for chunk in pairs]


def _pairs(prompt: Any, word_ids: bool) -> list[list[tuple[Any, ...]]]:
    chunks = []
    for c, (ids, weights) in enumerate(zip(prompt.ids, prompt.weights, strict=True)):
        chunk: list[tuple[Any, ...]] = []
        for p, (token, weight) in enumerate(zip(ids, weights, strict=True)):
            value = prompt.embeddings.get((c, p), token)
            chunk.append((value, weight, 0) if word_ids else (value, weight))
        chunks.append(chunk)
    return chunks


def _prompt_from_pairs(chunks: list[list[tuple[Any, ...]]]) -> Any:
    """A Loom TokenizedPrompt from ComfyUI's pairs (a tensor in place of a token is an embedding's vector)."""
    from engine.sdk import ops

    ids: list[list[int]] = []
    weights: list[list[float]] = []
    embeddings: dict[tuple[int, int], Any] = {}
    for c, chunk in enumerate(chunks):
        ids.append([])
        weights.append([])
        for p, pair in enumerate(chunk):
            token, weight = pair[0], float(pair[1])
            if isinstance(token, int):
                ids[c].append(token)
            else:
                ids[c].append(0)  # the embedding slot id
                embeddings[(c, p)] = token
            weights[c].append(weight)
    return ops.TokenizedPrompt(ids=ids, weights=weights, embeddings=embeddings)


def _loom_prompts(tokens: Any, towers: Any) -> dict[str, Any]:
    """Loom's tokenized prompt per tower key of what a pack passed to encode_from_tokens."""
    prompts = {}
    for key in towers:
        name = _COMFY_NAMES.get(key, key)
        if name not in tokens:
            raise KeyError(f"the tokens have no {name!r} entry (this CLIP's towers: "
                           f"{', '.join(_COMFY_NAMES.get(k, k) for k in towers)})")
        pairs = tokens[name]
        kept = isinstance(tokens, ComfyTokens) and key in tokens.prompts and \
            [list(chunk) for chunk in pairs] == tokens.shown.get(key)
        prompts[key] = tokens.prompts[key] if kept else _prompt_from_pairs(pairs)
    return prompts


class ComfyClip:
    """ComfyUI's CLIP over a Loom CLIP handle (see the module docstring)."""

    def __init__(self, handle: ClipHandle) -> None:
        self.handle = handle
        self.layer_idx = handle.layer_idx

    def clone(self) -> ComfyClip:
        twin = ComfyClip(self.handle)
        twin.layer_idx = self.layer_idx
        return twin

    def clip_layer(self, layer_idx: int) -> None:
        """Read the hidden state of layer ``layer_idx`` (-1 the last; CLIPSetLastLayer)."""
        self.layer_idx = int(layer_idx)

    def set_clip_options(self, options: dict[str, Any]) -> None:
        """``{"layer": n}`` sets the layer read; other options are not offered by Loom."""
        other = sorted(str(key) for key in options if key != "layer")
        if other:
            raise unsupported(f"set_clip_options({', '.join(other)})")
        if options.get("layer") is not None:
            self.clip_layer(int(options["layer"]))

    def reset_clip_options(self) -> None:
        self.layer_idx = self.handle.layer_idx

    def to_handle(self) -> ClipHandle:
        """The handle with the layer this wrapper reads (the handle itself when unchanged)."""
        if self.layer_idx == self.handle.layer_idx or self.layer_idx is None:
            return self.handle
        return self.handle.with_layer(self.layer_idx)

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> ComfyTokens:
        """ComfyUI's token dict of ``text`` (weights and embeddings read as Loom's CLIPTextEncode reads them)."""
        from engine.sdk import ops

        ctx = _run_context()
        encoder = ctx.models.text_encoder(self.to_handle())
        return ComfyTokens(encoder.tokenize(text, embedding_lookup=ops.embedding_lookup(ctx.folders)),
                           return_word_ids)

    def encode_from_tokens_scheduled(self, tokens: Any, unprojected: bool = False,
                                     add_dict: dict[str, Any] | None = None, show_pbar: bool = True) -> list[Any]:
        """CONDITIONING for ``tokens``: ``[[cond, {"pooled_output": pooled, ...add_dict}], ...]``."""
        from engine.sdk import ops

        ctx = _run_context()
        handle = self.to_handle()
        prompts = _loom_prompts(tokens, ctx.models.text_encoder(handle).towers)
        return [[cond, {**extras, **(add_dict or {})}] for cond, extras in ops.encode_text(ctx, handle, prompts)]

    def encode_from_tokens(self, tokens: Any, return_pooled: bool | str = False,
                           return_dict: bool = False) -> Any:
        """``cond``; ``(cond, pooled)`` with ``return_pooled``; ``{"cond", "pooled_output"}`` with ``return_dict``."""
        [[cond, extras], *_] = self.encode_from_tokens_scheduled(tokens)
        pooled = extras["pooled_output"]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode(self, text: str) -> Any:
        """ComfyUI's old ``CLIP.encode(text)``: the cond tensor."""
        return self.encode_from_tokens(self.tokenize(text))

    def add_patches(self, *args: Any, **kwargs: Any) -> list[str]:
        raise unsupported("CLIP.add_patches", "weight patches: use LoraLoader or the CLIP merge nodes")

    def load_sd(self, *args: Any, **kwargs: Any) -> None:
        raise unsupported("CLIP.load_sd")
