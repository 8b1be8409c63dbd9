"""Model patches that act inside the UNet (ComfyUI's FreeU, FreeU_V2, PatchModelAddDownscale, HyperTile,
TomePatchModel, UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply,
TorchCompileModel, SelfAttentionGuidance, PerturbedAttentionGuidance).

Each MODEL node returns the model with one more sampling patch (:mod:`engine.sdk.unet_patches`): a
frozen object that installs functions at the UNet's patch points for each sampling run and changes
no weights, so the input MODEL samples exactly as before. Patches compose in node order.
CLIPAttentionMultiply returns the CLIP with its attention multipliers on the handle (applied when
text is encoded).
"""

from __future__ import annotations

from engine.sdk import BOOLEAN, CLIP, COMBO, FLOAT, INT, MODEL, ClipHandle, Input, ModelHandle, Node, Output, RunContext

_MODEL_IN = Input("model", MODEL)
_MODEL_OUT = (Output(MODEL),)
RESIZE_METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


def _freeu_inputs(b1: float, b2: float) -> tuple[Input, ...]:
    def factor(name: str, default: float) -> Input:
        return Input(name, FLOAT, default=default, min=0.0, max=10.0, step=0.01)

    return (_MODEL_IN, factor("b1", b1), factor("b2", b2), factor("s1", 0.9), factor("s2", 0.2))


class FreeU(Node):
    """FreeU: scale the UNet decoder's backbone features (b1, b2) and damp the low frequencies of its
    skip features (s1, s2) at the two deepest widths."""

    category = "model_patches/unet"
    inputs = _freeu_inputs(1.1, 1.2)
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, b1: float, b2: float, s1: float,
            s2: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.FreeUPatch(b1, b2, s1, s2, version=1)),)


class FreeU_V2(Node):  # noqa: N801 - ComfyUI's name
    """FreeU v2: the backbone scaling follows each image's normalised mean feature map."""

    category = "model_patches/unet"
    inputs = _freeu_inputs(1.3, 1.4)
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, b1: float, b2: float, s1: float,
            s2: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.FreeUPatch(b1, b2, s1, s2, version=2)),)


class PatchModelAddDownscale(Node):
    """Kohya deep shrink: shrink one input block's features early in sampling, grow them back at the decoder."""

    display_name = "PatchModelAddDownscale (Kohya Deep Shrink)"
    category = "_for_testing"
    inputs = (
        _MODEL_IN,
        Input("block_number", INT, default=3, min=1, max=32, step=1),
        Input("downscale_factor", FLOAT, default=2.0, min=0.1, max=9.0, step=0.001),
        Input("start_percent", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        Input("end_percent", FLOAT, default=0.35, min=0.0, max=1.0, step=0.001),
        Input("downscale_after_skip", BOOLEAN, default=True),
        Input("downscale_method", COMBO, choices=RESIZE_METHODS),
        Input("upscale_method", COMBO, choices=RESIZE_METHODS),
    )
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, block_number: int, downscale_factor: float,
            start_percent: float, end_percent: float, downscale_after_skip: bool, downscale_method: str,
            upscale_method: str) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        patch = unet_patches.DownscalePatch(block_number, downscale_factor, start_percent, end_percent,
                                            downscale_after_skip, downscale_method, upscale_method)
        return (model.with_sampling_patch(patch),)


class HyperTile(Node):
    """HyperTile: self-attention within tiles of about tile_size pixels at the shallow UNet levels."""

    category = "_for_testing"
    inputs = (
        _MODEL_IN,
        Input("tile_size", INT, default=256, min=1, max=2048),
        Input("swap_size", INT, default=2, min=1, max=128),
        Input("max_depth", INT, default=0, min=0, max=10),
        Input("scale_depth", BOOLEAN, default=False),
    )
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, tile_size: int, swap_size: int, max_depth: int,
            scale_depth: bool) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.HyperTilePatch(tile_size, swap_size, max_depth, scale_depth)),)


class TomePatchModel(Node):
    """Token merging: merge a ratio of similar full-resolution self-attention queries (faster, approximate)."""

    category = "_for_testing"
    inputs = (_MODEL_IN, Input("ratio", FLOAT, default=0.3, min=0.0, max=1.0, step=0.01))
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, ratio: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.TomePatch(ratio)),)


def _multipliers() -> tuple[Input, ...]:
    return tuple(Input(name, FLOAT, default=1.0, min=0.0, max=10.0, step=0.01) for name in ("q", "k", "v", "out"))


class UNetSelfAttentionMultiply(Node):
    """Multiply the UNet's self-attention q, k, v and output projections."""

    category = "_for_testing/attention_experiments"
    inputs = (_MODEL_IN, *_multipliers())
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, q: float, k: float, v: float,
            out: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.AttentionMultiplyPatch("attn1", q, k, v, out)),)


class UNetCrossAttentionMultiply(Node):
    """Multiply the UNet's cross-attention q, k, v and output projections."""

    category = "_for_testing/attention_experiments"
    inputs = (_MODEL_IN, *_multipliers())
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, q: float, k: float, v: float,
            out: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.AttentionMultiplyPatch("attn2", q, k, v, out)),)


class CLIPAttentionMultiply(Node):
    """Multiply the text encoder's self-attention q, k, v and output projections."""

    category = "_for_testing/attention_experiments"
    inputs = (Input("clip", CLIP), *_multipliers())
    outputs = (Output(CLIP),)

    def run(self, ctx: RunContext, clip: ClipHandle, q: float, k: float, v: float, out: float) -> tuple[ClipHandle]:
        return (clip.with_attention_scale(q, k, v, out),)


class TorchCompileModel(Node):
    """Run the UNet through torch.compile where it can (CUDA); elsewhere it logs and runs as before."""

    category = "_for_testing"
    inputs = (_MODEL_IN, Input("backend", COMBO, choices=("inductor", "cudagraphs")))
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, backend: str) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.TorchCompilePatch(backend)),)


class SelfAttentionGuidance(Node):
    """Self-attention guidance: guide away from a prediction blurred where the model's self-attention looks."""

    display_name = "Self-Attention Guidance"
    category = "_for_testing"
    inputs = (
        _MODEL_IN,
        Input("scale", FLOAT, default=0.5, min=-2.0, max=5.0, step=0.01),
        Input("blur_sigma", FLOAT, default=2.0, min=0.0, max=10.0, step=0.1),
    )
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, scale: float, blur_sigma: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.SelfAttentionGuidancePatch(scale, blur_sigma)),)


class PerturbedAttentionGuidance(Node):
    """Perturbed-attention guidance: guide away from a prediction whose middle-block self-attention is identity."""

    category = "_for_testing"
    inputs = (_MODEL_IN, Input("scale", FLOAT, default=3.0, min=0.0, max=100.0, step=0.1, round=0.01))
    outputs = _MODEL_OUT

    def run(self, ctx: RunContext, model: ModelHandle, scale: float) -> tuple[ModelHandle]:
        from engine.sdk import unet_patches

        return (model.with_sampling_patch(unet_patches.PerturbedAttentionGuidancePatch(scale)),)


UNET_PATCH_NODES: tuple[type[Node], ...] = (
    FreeU, FreeU_V2, PatchModelAddDownscale, HyperTile, TomePatchModel, UNetSelfAttentionMultiply,
    UNetCrossAttentionMultiply, CLIPAttentionMultiply, TorchCompileModel, SelfAttentionGuidance,
    PerturbedAttentionGuidance,
)
