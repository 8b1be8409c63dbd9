"""Model memory: VRAM modes, LRU residency within a simulated device budget, block streaming, the RAM
budget, out-of-memory recovery and POST /free, on the CPU with tiny real checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.api.system_info import system_stats
from engine.backend.unet import UNetModel
from engine.cache import OutputCache
from engine.events import ListSink
from engine.executor import ExecutionOutcome, Executor
from engine.folders import Folders
from engine.models.handles import ClipHandle, FileRef, ModelHandle, VaeHandle
from engine.models.loaders import CheckpointFile, detect_family
from engine.models.manager import ModelManager
from engine.models.memory import Residency, VramMode, working_memory_bytes
from engine.node import Input, Node, NodeOutput
from engine.queue import PromptQueue
from engine.settings import Settings
from engine.types import LATENT
from engine.worker import PromptWorker
from main import build_registry
from tests.fixtures.tiny_checkpoints import build_checkpoint


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    for seed in range(3):
        build_checkpoint(root / "checkpoints" / f"tiny-{seed}.safetensors", "sd1", seed=seed)
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    for name, out, inp in (("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
                           ("lora_te_text_model_encoder_layers_1_mlp_fc2", 64, 256)):
        tensors.update({f"{name}.lora_up.weight": torch.randn(out, 4, generator=generator),
                        f"{name}.lora_down.weight": torch.randn(4, inp, generator=generator),
                        f"{name}.alpha": torch.tensor(4.0)})
    save_file(tensors, str(root / "loras" / "tiny-lora.safetensors"))
    return root


def handle(model_root: Path, seed: int) -> ModelHandle:
    path = model_root / "checkpoints" / f"tiny-{seed}.safetensors"
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family)


def resident_parts(manager: ModelManager) -> list[tuple[str, str]]:
    return [(m["file"], m["part"]) for m in manager.loaded() if m["resident"]]


class LatentOut(Node):
    inputs = (Input("latent", LATENT),)
    output_node = True
    last: dict[str, Any] = {}

    def run(self, ctx: Any, latent: Any) -> NodeOutput:
        LatentOut.last = latent
        return NodeOutput(ui={})


def make_executor(model_root: Path, tmp_path: Path, manager: ModelManager) -> Executor:
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (model_root,))
    folders.ensure()
    executor = Executor(build_registry(), folders, OutputCache(2**30, 1000), manager)
    executor.registry.register(LatentOut)
    return executor


def txt2img(ckpt: str = "tiny-0.safetensors", *, lora: bool = True, seed: int = 1,
            text: str = "a red circle") -> dict[str, Any]:
    model, clip = ["ckpt", 0], ["ckpt", 1]
    graph: dict[str, Any] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora:
        graph["lora"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": "tiny-lora.safetensors",
            "strength_model": 1.0, "strength_clip": 1.0}}
        model, clip = ["lora", 0], ["lora", 1]
    graph.update({
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["decode", 0], "vae": ["ckpt", 2]}},
        "out": {"class_type": "LatentOut", "inputs": {"latent": ["encode", 0]}},
    })
    return graph


def run_latents(executor: Executor, prompt: dict[str, Any]) -> tuple[torch.Tensor, ExecutionOutcome]:
    """The re-encoded latent (text encoder, UNet, VAE decode and encode all ran) and the run's outcome."""
    sink = ListSink()
    outcome = executor.execute(prompt, "p", sink, targets=["out"])
    assert outcome.status_str == "success", sink.events[-1]
    return LatentOut.last["samples"], outcome


def test_residency_victims_are_least_recently_used_and_kept_ones_stay() -> None:
    residency = Residency()
    for key in "abc":
        residency.add(key, 10)
    residency.touch("a")
    assert residency.victims(needed=10, capacity=30) == ["b"]
    assert residency.victims(needed=25, capacity=30, keep={"b"}) == ["c", "a"]
    assert residency.victims(needed=0, capacity=30) == []


def test_working_memory_grows_with_batch_cfg_and_resolution() -> None:
    small = working_memory_bytes((1, 4, 64, 64), torch.float16, cfg=False)
    assert working_memory_bytes((1, 4, 64, 64), torch.float16, cfg=True) == 2 * small
    assert working_memory_bytes((2, 4, 64, 64), torch.float16, cfg=False) == 2 * small
    assert working_memory_bytes((1, 4, 64, 64), torch.float32, cfg=False) == 2 * small
    assert working_memory_bytes((1, 4, 128, 128), torch.float16, cfg=False) > 4 * small


def test_modes_step_down() -> None:
    assert VramMode.NORMAL.lower() is VramMode.LOW
    assert VramMode.LOW.lower() is VramMode.NONE
    assert VramMode.NONE.lower() is VramMode.NONE
    assert VramMode.CPU.lower() is VramMode.CPU


def test_three_models_in_a_budget_for_two_evict_the_least_recently_used(model_root: Path) -> None:
    probe = ModelManager("cpu")
    probe.unet(handle(model_root, 0))
    unet_bytes = probe.loaded()[0]["bytes"]
    manager = ModelManager("cpu", vram_budget=2 * unet_bytes + unet_bytes // 2)
    first, second, third = (handle(model_root, seed) for seed in range(3))
    manager.unet(first)
    manager.unet(second)
    assert resident_parts(manager) == [("tiny-0.safetensors", "unet"), ("tiny-1.safetensors", "unet")]
    manager.unet(first)  # now tiny-1 is the least recently used
    manager.unet(third)
    assert sorted(resident_parts(manager)) == [("tiny-0.safetensors", "unet"), ("tiny-2.safetensors", "unet")]
    assert len(manager.loaded()) == 3  # offloaded to RAM, not unloaded
    assert manager.residency.resident_bytes <= manager.budget.simulated_bytes


def test_no_model_is_held_twice_in_ram(model_root: Path) -> None:
    manager = ModelManager("cpu", vram_budget=1)  # every use offloads every other part
    model = handle(model_root, 0)
    unet = manager.unet(model)
    pointers = [p.data_ptr() for p in unet.parameters()]
    manager.offload_all()
    again = manager.unet(model)
    assert again is unet
    assert [p.data_ptr() for p in again.parameters()] == pointers
    assert manager.loaded()[0]["bytes"] == sum(p.numel() * p.element_size() for p in unet.parameters())


@pytest.mark.parametrize("mode,budget", [("normal", 1), ("low", None), ("none", None), ("high", 1)])
def test_sampling_is_bit_identical_with_offloading_and_streaming(model_root: Path, tmp_path: Path, mode: str,
                                                                 budget: int | None) -> None:
    # unpacked weights on both sides: packed ones (engine/backend/packed_layers.py) agree to float rounding only
    reference, _ = run_latents(make_executor(model_root, tmp_path, ModelManager("cpu", pack_weights=False)), txt2img())
    manager = ModelManager("cpu", vram=mode, vram_budget=budget, pack_weights=False)
    latent, _ = run_latents(make_executor(model_root, tmp_path, manager), txt2img())
    assert torch.equal(latent, reference)
    unet_entry = next(m for m in manager.loaded() if m["part"] == "unet")
    if mode in ("low", "none", "normal"):  # normal: the UNet does not fit one byte, so it streams too
        assert unet_entry["streamed"] and not unet_entry["resident"]
    if mode == "normal":
        assert len(resident_parts(manager)) == 1  # a budget of one byte keeps only the part in use
    if mode == "high":
        assert unet_entry["resident"] and not unet_entry["streamed"]


def test_normal_mode_places_a_unet_that_fits_and_streams_one_that_does_not(model_root: Path,
                                                                            tmp_path: Path) -> None:
    reference = make_executor(model_root, tmp_path, ModelManager("cpu", pack_weights=False))
    texts = ("a red circle", "a blue square")
    expected = [run_latents(reference, txt2img(text=text))[0] for text in texts]
    probe = ModelManager("cpu")
    channels = probe.unet(handle(model_root, 0)).config.model_channels
    unet_bytes = probe.loaded()[0]["bytes"]
    working = working_memory_bytes((2, 4, 8, 8), torch.float32, model_channels=channels)  # batch 2, with CFG
    for budget, streamed in ((unet_bytes + working, False), (unet_bytes + working - 1, True)):
        manager = ModelManager("cpu", vram_budget=budget, pack_weights=False)
        executor = make_executor(model_root, tmp_path, manager)
        # The second text places the LoRA-patched text encoder and UNet again after each pushed the other out.
        assert all(torch.equal(run_latents(executor, txt2img(text=text))[0], want)
                   for text, want in zip(texts, expected, strict=True))
        unet_entry = next(m for m in manager.loaded() if m["part"] == "unet")
        assert unet_entry["streamed"] is streamed


def test_block_streaming_puts_every_weight_back_home(model_root: Path) -> None:
    manager = ModelManager("cpu", vram="low")
    unet = manager.unet(handle(model_root, 0))
    before = {name: p.data_ptr() for name, p in unet.named_parameters()}
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        unet(x, torch.tensor([10.0]), torch.randn(1, 77, 64))
    assert {name: p.data_ptr() for name, p in unet.named_parameters()} == before


def test_switching_checkpoints_keeps_ram_bounded(model_root: Path) -> None:
    probe = ModelManager("cpu")
    probe.unet(handle(model_root, 0))
    unet_bytes = probe.loaded()[0]["bytes"]
    manager = ModelManager("cpu", ram_budget=unet_bytes + unet_bytes // 2)
    for turn in range(10):
        manager.unet(handle(model_root, turn % 2))
        assert len(manager.loaded()) == 1
        assert sum(m["bytes"] for m in manager.loaded()) <= manager.ram_budget


def test_the_old_checkpoint_is_dropped_before_the_new_one_is_read(model_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With a RAM budget, switching never holds both UNets: room is made from the file's header first."""
    probe = ModelManager("cpu")
    probe.unet(handle(model_root, 0))
    unet_bytes = probe.loaded()[0]["bytes"]
    manager = ModelManager("cpu", ram_budget=unet_bytes + unet_bytes // 2)
    held_at_load: list[int] = []
    load_unet = ModelManager._load_unet

    def watched(self: ModelManager, ref: FileRef, dtype: torch.dtype) -> UNetModel:
        held_at_load.append(sum(m["bytes"] for m in self.loaded()))
        return load_unet(self, ref, dtype)

    monkeypatch.setattr(ModelManager, "_load_unet", watched)
    for turn in range(4):
        manager.unet(handle(model_root, turn % 2))
    assert held_at_load == [0, 0, 0, 0]


def test_loaded_size_is_known_from_the_header_before_loading(model_root: Path) -> None:
    manager = ModelManager("cpu")
    model = handle(model_root, 0)
    manager.unet(model)
    manager.text_encoder(ClipHandle(model.checkpoint, model.family))
    manager.vae(VaeHandle(model.checkpoint, "first_stage_model."))
    for entry in manager.loaded():
        key = next(k for k in manager._loaded if k.part == entry["part"])
        assert manager._incoming_bytes(key) == pytest.approx(entry["bytes"], rel=0.01), entry["part"]


def test_out_of_memory_retries_in_a_lower_mode_and_then_succeeds(model_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # unpacked weights on both sides: the retry streams, and streamed blocks are never packed
    reference, _ = run_latents(make_executor(model_root, tmp_path, ModelManager("cpu", pack_weights=False)), txt2img())
    manager = ModelManager("cpu", pack_weights=False)
    executor = make_executor(model_root, tmp_path, manager)
    executor.cache.put("unrelated", (torch.zeros(8),), None)
    forward = UNetModel.forward
    calls = {"n": 0}

    def flaky(self: UNetModel, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNetModel, "forward", flaky)
    latent, outcome = run_latents(executor, txt2img())
    assert torch.equal(latent, reference)
    assert manager.mode is VramMode.LOW
    assert "unrelated" not in executor.cache
    assert outcome.executed.count("sample") == 1


def test_out_of_memory_twice_ends_the_prompt_and_the_executor_keeps_working(
        model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executor = make_executor(model_root, tmp_path, ModelManager("cpu"))
    forward = UNetModel.forward

    def always(self: UNetModel, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(UNetModel, "forward", always)
    outcome = executor.execute(txt2img(lora=False), "p1", ListSink(), targets=["out"])
    assert outcome.status_str == "error"
    assert outcome.error is not None and outcome.error.node_id == "sample"
    assert outcome.error.exception_type == "engine.errors.OutOfMemory"
    assert "--vram low" in outcome.error.message
    monkeypatch.setattr(UNetModel, "forward", forward)
    assert executor.execute(txt2img(lora=False), "p2", ListSink(), targets=["out"]).status_str == "success"


def test_free_unloads_models_and_clears_outputs_and_stats_report_them(model_root: Path, tmp_path: Path) -> None:
    manager = ModelManager("cpu", vram_budget=1 << 40)
    executor = make_executor(model_root, tmp_path, manager)
    run_latents(executor, txt2img(lora=False))
    assert {"system", "devices"} <= set(system_stats(Settings(data_dir=tmp_path)))
    queue = PromptQueue(tmp_path / "queue.sqlite3")
    try:
        worker = PromptWorker(queue, executor, lambda _client: ListSink())
        stats = worker.stats()  # what /system_stats reports under "loom"
        parts = {m["part"] for m in stats["models"]["models"]}
        assert parts == {"unet", "clip", "vae:first_stage_model."}
        assert all(m["device"] == "cpu" for m in stats["models"]["models"])
        assert stats["cache_entries"] == len(executor.cache) > 0
        worker.request_free(unload_models=True, free_memory=True)
        assert manager.loaded() == [] and len(executor.cache) == 0
        assert worker.stats()["models"]["loaded_bytes"] == 0
    finally:
        queue.close()


def test_streaming_hooks_survive_a_failed_forward(model_root: Path) -> None:
    manager = ModelManager("cpu", vram="none")
    unet = manager.unet(handle(model_root, 0))
    before = {name: p.data_ptr() for name, p in unet.named_parameters()}
    with pytest.raises(RuntimeError), torch.inference_mode():
        unet(torch.randn(1, 3, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 64))  # wrong channel count
    manager.offload_all()
    assert {name: p.data_ptr() for name, p in unet.named_parameters()} == before



def test_command_line_memory_flags_reach_the_model_manager() -> None:
    from main import build_model_manager, parse_args, settings_from

    settings = settings_from(parse_args(["--vram", "low", "--vram-budget", "1000", "--ram-budget", "2000",
                                         "--device", "cpu"]))
    manager = build_model_manager(settings)
    assert (manager.mode, manager.budget.simulated_bytes, manager.ram_budget) == (VramMode.LOW, 1000, 2000)
    assert manager.device == torch.device("cpu")
    default = build_model_manager(settings_from(parse_args(["run", "workflow.json"])))
    assert (default.mode, default.budget.simulated_bytes, default.ram_budget) == (VramMode.NORMAL, None, None)
    assert build_model_manager(Settings(vram_mode="cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("per_layer", [False, True])
def test_stream_units_hold_every_tensor_of_the_model_once(model_root: Path, per_layer: bool) -> None:
    """What the streamer moves covers the whole model, UNet or transformer: a block moves with all its layers, and
    the model's own tensors (an MMDiT's position table) have a unit of their own. (On a CPU a missed tensor is
    invisible, since moving it to the CPU is the tensor itself; on a GPU it is a device mismatch.)"""
    from engine.backend.flux import Flux, FluxConfig
    from engine.backend.mmdit import MMDiT, MMDiTConfig
    from engine.models.streaming import stream_units

    unet = ModelManager("cpu").unet(handle(model_root, 0))
    mmdit = MMDiT(MMDiTConfig(depth=2, hidden_size=64, num_heads=1, context_in_dim=32, pooled_dim=16,
                              pos_embed_max_size=4))
    flux = Flux(FluxConfig(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(4, 14, 14),
                           context_in_dim=32, vec_in_dim=16))
    for model in (unet, mmdit, flux):
        moved = [id(t) for unit in stream_units(model, per_layer) for t in unit.tensors()]
        every = [id(t) for t in (*model.parameters(), *model.buffers())]
        assert sorted(moved) == sorted(every), type(model).__name__
