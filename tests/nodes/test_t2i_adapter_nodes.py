"""T2I-Adapters through ControlNetLoader and ControlNetApplyAdvanced on the demo SD1 model, end to end
through the executor: a tiny full adapter file (original key layout, widths read from the demo UNet)
steers KSampler, strength 0 is the plain run bit for bit, start/end percent limit the steps it acts on,
and an adapter of other widths fails naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.t2i_adapter import T2IAdapter, T2IAdapterConfig
from engine.backend.unet import UNetConfig
from engine.models import parts
from engine.models.handles import CHECKPOINT_UNET
from engine.models.loaders import CheckpointFile
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    checkpoint_loader,
    make_executor,
    require_demo_model,
    run_prompt,
    shape_image,
    text,
)


def _demo_unet() -> UNetConfig:
    with CheckpointFile(DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT) as ckpt:
        return UNetConfig.from_state_dict(parts.unet_shapes(ckpt, CHECKPOINT_UNET))


def write_adapter(path: Path, widths: tuple[int, ...], kind: str = "full", seed: int = 0) -> Path:
    """A random adapter in the original key layout (``conv_in``, ``body.N.block1`` ...)."""
    torch.manual_seed(seed)
    cin = 3 * 64
    config = T2IAdapterConfig(kind, cin, widths, 2 if kind == "full" else 1)
    state = T2IAdapter(config).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_demo_model()
    unet = _demo_unet()
    widths = tuple(unet.model_channels * m for m in unet.channel_mult)
    root = tmp_path_factory.mktemp("adapters")
    write_adapter(root / "controlnet" / "tiny-adapter.safetensors", widths)
    write_adapter(root / "controlnet" / "tiny-light-adapter.safetensors", widths, kind="light", seed=1)
    write_adapter(root / "controlnet" / "narrow-adapter.safetensors", tuple(w // 2 for w in widths))
    return root


def _prompt(hint: str, adapter: str | None, strength: float = 1.0, start: float = 0.0,
            end: float = 1.0) -> tuple[dict[str, Any], list[Any]]:
    nodes: dict[str, Any] = {
        "ckpt": checkpoint_loader(),
        "pos": text("a red circle on a blue background"),
        "neg": text("blurry"),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "hint": {"class_type": "LoadImage", "inputs": {"image": hint}},
    }
    positive, negative = ["pos", 0], ["neg", 0]
    if adapter is not None:
        nodes["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": adapter}}
        nodes["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        positive, negative = ["apply", 0], ["apply", 1]
    nodes["sample"] = {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["ckpt", 0], "positive": positive, "negative": negative, "latent_image": ["empty", 0]}}
    return nodes, ["sample", 0]


@pytest.fixture
def run(adapter_root: Path, tmp_path: Path) -> Any:
    executor = make_executor(tmp_path, DEMO_MODELS, adapter_root)
    shape_image(executor.folders.input_dir / "hint.png", color="yellow", box=(20, 20, 60, 60), ellipse=False)

    def sample(adapter: str | None, **kwargs: Any) -> torch.Tensor:
        prompt, link = _prompt("hint.png", adapter, **kwargs)
        return run_prompt(executor, prompt, latent=link)["latent"]["samples"]

    return sample


def test_adapter_steers_sampling_and_strength_zero_is_the_plain_run(run: Any) -> None:
    plain = run(None)
    steered = run("tiny-adapter.safetensors")
    assert (steered - plain).abs().mean() > 1e-3
    assert torch.equal(run("tiny-adapter.safetensors", strength=0.0), plain)
    light = run("tiny-light-adapter.safetensors")
    assert (light - plain).abs().mean() > 1e-3 and not torch.allclose(light, steered)


def test_start_and_end_percent_limit_the_steps(run: Any) -> None:
    plain = run(None)
    full = run("tiny-adapter.safetensors")
    late = run("tiny-adapter.safetensors", start=0.5, end=1.0)
    early = run("tiny-adapter.safetensors", start=0.0, end=0.5)
    for part in (late, early):
        assert (part - plain).abs().mean() > 1e-5
        assert (part - full).abs().mean() > 1e-5
    # A window that starts after every step's sigma leaves the run plain.
    assert torch.allclose(run("tiny-adapter.safetensors", start=1.0, end=1.0), plain, atol=1e-6)


def test_adapter_of_other_widths_fails_naming_the_file(adapter_root: Path, tmp_path: Path) -> None:
    executor = make_executor(tmp_path, DEMO_MODELS, adapter_root)
    shape_image(executor.folders.input_dir / "hint.png")
    prompt, link = _prompt("hint.png", "narrow-adapter.safetensors")
    from engine.events import ExecutionError, ListSink

    sink = ListSink()
    outcome = executor.execute({**prompt, "capture": {"class_type": "Capture", "inputs": {"latent": link}}}, "p", sink)
    assert outcome.status_str == "error"
    error = [e for e in sink.events if isinstance(e, ExecutionError)][-1]
    assert "narrow-adapter.safetensors" in error.exception_message and "does not fit" in error.exception_message
