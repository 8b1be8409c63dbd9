"""LoraSave ("Extract and Save Lora", ComfyUI's comfy_extras/nodes_lora_extract.py): a difference model as a
LoRA file.

Connect a ModelMergeSubtract(tuned, base, 1.0) output to ``model_diff`` and/or a CLIPMergeSubtract output to
``text_encoder_diff``: every weight of the difference becomes a rank-``rank`` LoRA (truncated SVD; ``full_diff``
stores the whole difference instead), saved under the kohya names Loom's LoraLoader maps back to the same
weights, so ``base`` + this LoRA at strength 1 is ``tuned`` again up to the rank (exactly, up to fp16, at full
rank or with ``full_diff``). The tensor work is engine/models/lora_extract.py.

Where the file goes (Folders.model_save_dir, shared with the other model-saving nodes): ``loras/sub/name``
saves ``name_00001_.safetensors`` (the counter after the highest one there) in ``sub`` of a model root's
loras folder, where LoraLoader lists it; a prefix whose first folder is no model folder saves in the output
folder, as ComfyUI does with every prefix. Nothing is ever overwritten.

With neither input connected ComfyUI returns silently; Loom raises an error that says what to connect, since a
save node that saves nothing looks like it worked.
"""

from __future__ import annotations

from pathlib import Path

from engine.sdk import (
    BOOLEAN,
    CLIP,
    COMBO,
    INT,
    MODEL,
    STRING,
    ClipHandle,
    Input,
    LoomError,
    ModelHandle,
    Node,
    NodeOutput,
    RunContext,
    next_counter,
)
from nodes.image_io import expand_prefix

#: ComfyUI's lora_type choices; the first is the default.
LORA_TYPES = ("standard", "full_diff")


def model_file_path(ctx: RunContext, filename_prefix: str, extension: str = ".safetensors") -> Path:
    """The counted file a model-saving prefix names: ``{folder}/{name}_{counter:05}_{extension}``, the counter
    1 + the highest there (the writer still takes the next free name if another saver got there first).

    ``%year%`` ... ``%second%`` in the prefix are expanded (``%width%`` / ``%height%`` become 0, as in
    ComfyUI); the folder is :meth:`Folders.model_save_dir`'s (a model folder for ``loras/...``).
    """
    directory, name = ctx.folders.model_save_dir(expand_prefix(filename_prefix, 0, 0))
    return directory / f"{name}_{next_counter(directory, name):05}_{extension}"


class LoraSave(Node):
    """Extract a LoRA from a difference model (ModelMergeSubtract / CLIPMergeSubtract output) and save it."""

    display_name = "Extract and Save Lora"
    category = "_for_testing"
    python_module = "comfy_extras.nodes_lora_extract"
    output_node = True
    outputs = ()
    inputs = (
        Input("filename_prefix", STRING, default="loras/ComfyUI_extracted_lora"),
        Input("rank", INT, default=8, min=1, max=4096, step=1),
        Input("lora_type", COMBO, choices=LORA_TYPES, default=LORA_TYPES[0]),
        Input("bias_diff", BOOLEAN, default=True),
        Input("model_diff", MODEL, optional=True, tooltip="The ModelSubtract output to be converted to a lora."),
        Input("text_encoder_diff", CLIP, optional=True,
              tooltip="The CLIPSubtract output to be converted to a lora."),
    )

    def run(self, ctx: RunContext, filename_prefix: str, rank: int, lora_type: str, bias_diff: bool,
            model_diff: ModelHandle | None = None, text_encoder_diff: ClipHandle | None = None) -> NodeOutput:
        from engine.sdk import model_files

        if model_diff is None and text_encoder_diff is None:
            raise LoomError("LoraSave: nothing to save; connect model_diff (a ModelMergeSubtract of the tuned and "
                            "the base model) and/or text_encoder_diff (a CLIPMergeSubtract of their CLIPs)")
        for handle, what in ((model_diff, "model_diff"), (text_encoder_diff, "text_encoder_diff")):
            if handle is not None and handle.merge is None:
                ctx.log.warning("LoraSave: %s is a plain model, not a difference (no ModelMergeSubtract / "
                                "CLIPMergeSubtract before it): the LoRA will hold its whole weights", what)
        path = model_file_path(ctx, filename_prefix)
        lora = model_files.extract_lora(ctx.models, model_diff, text_encoder_diff, rank=rank, lora_type=lora_type,
                                        bias_diff=bias_diff)
        for part, params in lora.left_out.items():
            ctx.log.warning("LoraSave: %d changed %s weights have no LoRA key Loom reads and are not saved: %s%s",
                            len(params), part, ", ".join(params[:6]), " ..." if len(params) > 6 else "")
        written = 0

        def check() -> None:
            nonlocal written
            ctx.progress(written, len(lora.entries))  # also raises Interrupted when the prompt was interrupted
            written += 1

        saved = model_files.write_safetensors(path, lora.entries, check=check)
        ctx.log.info("LoraSave: saved %d tensors (%s, rank %d) to %s", len(lora.entries), lora_type, rank, saved)
        return NodeOutput()


MODEL_SAVING_NODES: tuple[type[Node], ...] = (LoraSave,)
