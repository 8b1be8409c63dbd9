"""ComfyUI's module interface on Loom (folder_paths, comfy.utils, comfy.model_management, comfy.samplers),
exercised against real folders and files through the names packs import."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image

from engine.backend import names
from engine.context import RunContext
from engine.custom_nodes import compat, runtime
from engine.custom_nodes.runtime import CompatRuntime, running
from engine.errors import Interrupted, PathOutsideRoot
from engine.events import ListSink, PreviewImage, Progress
from engine.folders import Folders
from engine.models.loaders import UnsupportedModel
from engine.registry import NodeRegistry


@dataclass
class Comfy:
    """The installed modules under ComfyUI's names, and the folders behind them."""

    root: Path
    folders: Folders
    runtime: CompatRuntime
    folder_paths: Any
    utils: Any
    mm: Any
    samplers: Any


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[Comfy]:
    """Install the compatibility modules over temp folders; restore sys.modules (Loom's own ``nodes``!) after."""
    saved = {name: sys.modules.get(name) for name in compat.MODULES}
    saved_active = list(runtime._ACTIVE)
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", (tmp_path / "models",))
    folders.ensure()
    rt = CompatRuntime(folders=folders, registry=NodeRegistry())
    compat.install(rt)
    try:
        yield Comfy(tmp_path, folders, rt, importlib.import_module("folder_paths"),
                    importlib.import_module("comfy.utils"), importlib.import_module("comfy.model_management"),
                    importlib.import_module("comfy.samplers"))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        runtime._ACTIVE[:] = saved_active


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_ctx(sink: ListSink, *, previews: bool = False) -> RunContext:
    folders = Folders(Path("in"), Path("out"), Path("tmp"))
    return RunContext(node_id="7", prompt_id="p1", folders=folders, sink=sink, interrupt=threading.Event(),
                      previews=previews)


# --- install -------------------------------------------------------------------------------------------------


def test_install_puts_comfy_names_into_sys_modules(comfy: Comfy) -> None:
    import comfy.utils as utils_by_name  # type: ignore[import-not-found]

    assert utils_by_name is comfy.utils
    assert sys.modules["folder_paths"].__name__ == "engine.custom_nodes.compat.folder_paths"
    assert set(compat.installed_names()) == set(compat.MODULES)


# --- folder_paths: model folders -----------------------------------------------------------------------------


def test_filename_list_is_relative_sorted_and_filtered(comfy: Comfy) -> None:
    models = comfy.root / "models"
    touch(models / "checkpoints" / "b.safetensors")
    touch(models / "checkpoints" / "sub" / "a.ckpt")
    touch(models / "checkpoints" / "readme.txt")
    touch(models / "Lora" / "style.safetensors")  # AUTOMATIC1111's spelling of loras
    touch(models / "clip" / "t5.sft")
    touch(models / "configs" / "v1.yaml")
    fp = comfy.folder_paths

    assert fp.get_filename_list("checkpoints") == ["b.safetensors", "sub/a.ckpt"]
    assert fp.get_filename_list("loras") == ["style.safetensors"]
    assert fp.get_filename_list("clip") == fp.get_filename_list("text_encoders") == ["t5.sft"]
    assert fp.get_filename_list("configs") == ["v1.yaml"]
    assert fp.get_filename_list("vae") == []
    with pytest.raises(KeyError):
        fp.get_filename_list("ultralytics")


def test_full_path_finds_files_and_refuses_escapes(comfy: Comfy) -> None:
    model = touch(comfy.root / "models" / "checkpoints" / "sub" / "m.safetensors")
    touch(comfy.root / "models" / "secret.safetensors")
    fp = comfy.folder_paths

    assert fp.get_full_path("checkpoints", "sub/m.safetensors") == str(model)
    assert fp.get_full_path("checkpoints", "missing.safetensors") is None
    assert fp.get_full_path("checkpoints", "../secret.safetensors") is None
    assert fp.get_full_path("checkpoints", str(model)) is None  # absolute
    assert fp.get_full_path("no_such_kind", "m.safetensors") is None
    with pytest.raises(FileNotFoundError, match="'checkpoints'.*'missing.safetensors'"):
        fp.get_full_path_or_raise("checkpoints", "missing.safetensors")


def test_folder_paths_always_name_a_folder(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    assert fp.get_folder_paths("upscale_models") == [str(comfy.root / "models" / "upscale_models")]
    (comfy.root / "models" / "ESRGAN").mkdir(parents=True)
    assert fp.get_folder_paths("upscale_models") == [str(comfy.root / "models" / "ESRGAN")]
    paths = fp.get_folder_paths("upscale_models")
    paths.append("/elsewhere")  # a copy: the pack's change does not stick
    assert fp.get_folder_paths("upscale_models") == [str(comfy.root / "models" / "ESRGAN")]
    with pytest.raises(KeyError):
        fp.get_folder_paths("ultralytics")


def test_add_model_folder_path_extends_listing_and_registers_kinds(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    touch(comfy.root / "models" / "loras" / "own.safetensors")
    extra = comfy.root / "shared_loras"
    touch(extra / "shared.safetensors")
    first = comfy.root / "first_loras"
    fp.add_model_folder_path("loras", str(extra))
    fp.add_model_folder_path("loras", str(first), is_default=True)
    fp.add_model_folder_path("loras", str(extra))  # twice: listed once

    assert fp.get_filename_list("loras") == ["own.safetensors", "shared.safetensors"]
    assert fp.get_folder_paths("loras") == [str(comfy.root / "models" / "loras"), str(first), str(extra)]
    assert fp.get_full_path("loras", "shared.safetensors") == str(extra / "shared.safetensors")

    detectors = comfy.root / "ultra"
    touch(detectors / "bbox" / "face.pt")
    touch(detectors / "notes.md")
    fp.add_model_folder_path("ultralytics", str(detectors))
    assert fp.get_filename_list("ultralytics") == ["bbox/face.pt", "notes.md"]  # a new kind lists every file
    assert comfy.runtime.extra_model_dirs["ultralytics"] == [detectors]


def test_folder_names_and_paths_reads_and_writes_register(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    table = fp.folder_names_and_paths
    assert "checkpoints" in table and "clip" in table and "ultralytics" not in table
    dirs, exts = table["checkpoints"]
    assert dirs == [str(comfy.root / "models" / "checkpoints")] and ".safetensors" in exts

    bbox = comfy.root / "ultralytics" / "bbox"
    touch(bbox / "face_yolov8m.pt")
    touch(bbox / "face.onnx")
    table["ultralytics_bbox"] = ([str(bbox)], {".pt"})
    assert "ultralytics_bbox" in table and "ultralytics_bbox" in list(table)
    assert fp.get_filename_list("ultralytics_bbox") == ["face_yolov8m.pt"]
    assert fp.get_full_path("ultralytics_bbox", "face_yolov8m.pt") == str(bbox / "face_yolov8m.pt")

    table["ultralytics_bbox"][1].add(".onnx")  # in-place changes register too
    assert fp.get_filename_list("ultralytics_bbox") == ["face.onnx", "face_yolov8m.pt"]
    more = comfy.root / "more_ckpts"
    touch(more / "extra.safetensors")
    table["checkpoints"][0].append(str(more))
    assert fp.get_filename_list("checkpoints") == ["extra.safetensors"]

    del table["ultralytics_bbox"]
    assert "ultralytics_bbox" not in table
    with pytest.raises(TypeError, match="ultralytics"):
        table["ultralytics"] = "not a pair"


def test_gguf_style_kind_over_an_existing_folder(comfy: Comfy) -> None:
    """ComfyUI-GGUF registers "unet_gguf" with the diffusion_models folders and only the .gguf ending."""
    unet = comfy.root / "models" / "unet"
    touch(unet / "flux-q4.gguf")
    touch(unet / "flux.safetensors")
    table = comfy.folder_paths.folder_names_and_paths
    base, _ = table.get("unet_gguf", ([], set()))
    orig, _ = table.get("diffusion_models", ([], set()))
    table["unet_gguf"] = (orig or base, {".gguf"})

    assert comfy.folder_paths.get_filename_list("unet_gguf") == ["flux-q4.gguf"]
    assert comfy.folder_paths.get_filename_list("unet") == ["flux.safetensors"]


def test_module_attributes_follow_the_active_runtime(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    assert fp.models_dir == str(comfy.root / "models")
    assert fp.output_directory == fp.get_output_directory() == str(comfy.root / "output")
    assert fp.input_directory == fp.get_input_directory() == str(comfy.root / "input")
    assert fp.temp_directory == fp.get_temp_directory() == str(comfy.root / "temp")
    assert Path(fp.base_path, "engine", "custom_nodes").is_dir()
    assert {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"} <= fp.supported_pt_extensions
    from folder_paths import models_dir  # type: ignore[import-not-found]  # PEP 562 at import time

    assert models_dir == str(comfy.root / "models")
    with pytest.raises(AttributeError, match="no_such_thing"):
        fp.no_such_thing  # noqa: B018 - the attribute access is the test


def test_directory_by_type_and_filtering(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    assert fp.get_directory_by_type("output") == str(comfy.root / "output")
    assert fp.get_directory_by_type("temp") == str(comfy.root / "temp")
    assert fp.get_directory_by_type("models") is None
    assert fp.filter_files_extensions(["b.PNG", "a.jpg", "c.txt"], {".png", ".jpg"}) == ["a.jpg", "b.PNG"]
    assert fp.filter_files_extensions(["b", "a"], []) == ["a", "b"]
    assert fp.map_legacy("unet") == "diffusion_models"


# --- folder_paths: annotated names and save paths ------------------------------------------------------------


def test_annotated_filepaths(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    touch(comfy.root / "output" / "done.png")
    assert fp.get_annotated_filepath("done.png [output]") == str((comfy.root / "output" / "done.png").resolve())
    assert fp.get_annotated_filepath("pic.png") == str((comfy.root / "input" / "pic.png").resolve())
    assert fp.get_annotated_filepath("pic.png", str(comfy.root / "masks")) == str(comfy.root / "masks" / "pic.png")
    assert fp.exists_annotated_filepath("done.png [output]")
    assert not fp.exists_annotated_filepath("done.png")  # plain names are in input
    assert not fp.exists_annotated_filepath("../output/done.png")
    with pytest.raises(PathOutsideRoot):
        fp.get_annotated_filepath("../../etc/passwd [temp]")


def test_save_image_path_counts_and_substitutes(comfy: Comfy) -> None:
    fp = comfy.folder_paths
    out = fp.get_output_directory()
    assert fp.get_save_image_path("Loom", out) == (out, "Loom", 1, "", "Loom")
    for name in ("Loom_00001_.png", "Loom_00004_.png", "loomish_00009_.png", "Other_00010_.png"):
        touch(Path(out, name))
    assert fp.get_save_image_path("Loom", out)[2] == 5

    folder, filename, counter, subfolder, _ = fp.get_save_image_path("shots/day1/img", out)
    assert (folder, filename, counter, subfolder) == (os.path.join(out, "shots/day1"), "img", 1, "shots/day1")
    assert Path(folder).is_dir()

    result = fp.get_save_image_path("%width%x%height%/%year%-%month%", out, 640, 480)
    year = time.localtime().tm_year
    assert result[3] == "640x480" and result[1].startswith(f"{year}-") and len(result[1]) == 7
    assert result[4] == result[3] + "/" + result[1]


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/abs", "..\\win"])
def test_save_image_path_refuses_prefixes_leaving_output(comfy: Comfy, prefix: str) -> None:
    with pytest.raises(PathOutsideRoot, match="outside the output folder"):
        comfy.folder_paths.get_save_image_path(prefix, comfy.folder_paths.get_output_directory())
    assert not (comfy.root / "escape").exists()


# --- comfy.utils: files ----------------------------------------------------------------------------------------


def test_safetensors_round_trip_with_metadata(comfy: Comfy, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"arch": "x"})
    sd, meta = comfy.utils.load_torch_file(str(path), return_metadata=True)
    assert torch.equal(sd["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"arch": "x"}

    saved = tmp_path / "saved.safetensors"
    comfy.utils.save_torch_file({"t": torch.ones(4, 2).t()}, str(saved), metadata={"k": "v"})  # non-contiguous
    again, meta = comfy.utils.load_torch_file(saved, safe_load=True, return_metadata=True)
    assert torch.equal(again["t"], torch.ones(2, 4)) and meta == {"k": "v"}
    assert comfy.utils.load_torch_file(str(saved)).keys() == {"t"}


def test_pickles_load_weights_only_and_unwrap(comfy: Comfy, tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "global_step": 10}, str(wrapped))
    assert set(comfy.utils.load_torch_file(str(wrapped))) == {"a"}
    esrgan = tmp_path / "esrgan.pth"
    torch.save({"params_ema": {"conv.weight": torch.zeros(2)}}, str(esrgan))
    assert set(comfy.utils.load_torch_file(str(esrgan), safe_load=True)) == {"conv.weight"}
    legacy = tmp_path / "legacy.pt"
    torch.save({"b": torch.ones(2)}, str(legacy), _use_new_zipfile_serialization=False)
    assert torch.equal(comfy.utils.load_torch_file(str(legacy))["b"], torch.ones(2))


class _Payload:
    """Unpickling this (unsafely) would create a folder: the marker that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.marker,)


def test_pickle_needing_code_is_refused_without_running_it(comfy: Comfy, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(1), "x": _Payload(str(marker))}, str(evil))
    with pytest.raises(UnsupportedModel, match="evil.ckpt.*weights_only=True") as info:
        comfy.utils.load_torch_file(str(evil), safe_load=False)
    assert not marker.exists()
    assert "weights_only=False" not in str(info.value)


# --- comfy.utils: progress -------------------------------------------------------------------------------------


def test_progress_bar_reports_to_the_running_node(comfy: Comfy) -> None:
    sink = ListSink()
    with running(make_ctx(sink)):
        bar = comfy.utils.ProgressBar(3)
        bar.update(1)
        bar.update(1)
        bar.update_absolute(10)  # capped at the total
        comfy.utils.ProgressBar(2, node_id="12").update_absolute(1)
    progress = [e for e in sink.events if isinstance(e, Progress)]
    assert [(e.value, e.max, e.node, e.prompt_id) for e in progress] == [
        (1, 3, "7", "p1"), (2, 3, "7", "p1"), (3, 3, "7", "p1"), (1, 2, "12", "p1")]


def test_progress_bar_reaches_its_node_from_another_thread(comfy: Comfy) -> None:
    sink = ListSink()
    with running(make_ctx(sink)):
        bar = comfy.utils.ProgressBar(4)
    worker = threading.Thread(target=bar.update, args=(2,))
    worker.start()
    worker.join()
    assert [(e.value, e.max) for e in sink.events if isinstance(e, Progress)] == [(2, 4)]


def test_progress_bar_outside_a_node_only_counts(comfy: Comfy) -> None:
    bar = comfy.utils.ProgressBar(5)
    bar.update(2)
    assert bar.current == 2


def test_progress_bar_honours_interrupts_and_sends_previews(comfy: Comfy) -> None:
    sink = ListSink()
    ctx = make_ctx(sink, previews=True)
    with running(ctx):
        bar = comfy.utils.ProgressBar(10)
        bar.update_absolute(1, preview=("JPEG", Image.new("RGB", (64, 32), "red"), 16))
        ctx.interrupt.set()
        with pytest.raises(comfy.mm.InterruptProcessingException):
            bar.update(1)
    previews = [e for e in sink.events if isinstance(e, PreviewImage)]
    assert len(previews) == 1 and previews[0].image_format == "JPEG" and previews[0].data[:2] == b"\xff\xd8"


# --- comfy.utils: tensors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos", "bislerp"])
def test_common_upscale_methods(comfy: Comfy, method: str) -> None:
    samples = torch.rand(2, 4, 8, 12)
    out = comfy.utils.common_upscale(samples, 24, 16, method, "disabled")
    assert out.shape == (2, 4, 16, 24)
    cropped = comfy.utils.common_upscale(samples, 8, 8, method, "center")
    assert cropped.shape == (2, 4, 8, 8)


def test_common_upscale_center_crop_and_video(comfy: Comfy) -> None:
    samples = torch.arange(12.0).reshape(1, 1, 1, 12).expand(1, 1, 4, 12)
    cropped = comfy.utils.common_upscale(samples, 4, 4, "nearest-exact", "center")
    assert torch.equal(cropped[0, 0, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))  # the middle columns
    video = torch.rand(1, 3, 5, 8, 8)
    out = comfy.utils.common_upscale(video, 16, 4, "bilinear", "disabled")
    assert out.shape == (1, 3, 5, 4, 16)
    frame = comfy.utils.common_upscale(video[:, :, 2], 16, 4, "bilinear", "disabled")
    assert torch.allclose(out[:, :, 2], frame)
    assert comfy.utils.lanczos(torch.rand(1, 3, 4, 4), 8, 8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="upscale method"):
        comfy.utils.common_upscale(samples, 4, 4, "sharpest", "disabled")


def test_repeat_to_batch_size_and_prefix_replace(comfy: Comfy) -> None:
    t = torch.arange(3.0).reshape(3, 1)
    assert comfy.utils.repeat_to_batch_size(t, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert comfy.utils.repeat_to_batch_size(t, 2)[:, 0].tolist() == [0, 1]
    sd = {"model.a": 1, "model.b": 2, "other": 3}
    assert comfy.utils.state_dict_prefix_replace(dict(sd), {"model.": "m."}, filter_keys=True) == {"m.a": 1, "m.b": 2}
    assert comfy.utils.state_dict_prefix_replace(dict(sd), {"model.": ""}) == {"other": 3, "a": 1, "b": 2}


def test_attr_helpers(comfy: Comfy) -> None:
    layer = torch.nn.Sequential(torch.nn.Linear(2, 2))
    previous = comfy.utils.set_attr_param(layer, "0.bias", torch.zeros(2))
    assert previous.shape == (2,) and torch.equal(comfy.utils.get_attr(layer, "0.bias"), torch.zeros(2))
    assert not comfy.utils.get_attr(layer, "0.bias").requires_grad


def test_tiled_scale_matches_a_whole_image_upscale(comfy: Comfy) -> None:
    image = torch.rand(2, 3, 40, 56)
    calls = []

    def upscale(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape))
        return F.interpolate(tile, scale_factor=2, mode="nearest")

    class Bar:
        steps = 0

        def update(self, n: int) -> None:
            Bar.steps += n

    out = comfy.utils.tiled_scale(image, upscale, tile_x=24, tile_y=16, overlap=4, upscale_amount=2,
                                  out_channels=3, pbar=Bar())
    assert out.shape == (2, 3, 80, 112)
    assert torch.allclose(out, F.interpolate(image, scale_factor=2, mode="nearest"), atol=1e-5)
    assert all(h <= 16 and w <= 24 for _, _, h, w in calls) and Bar.steps == len(calls)
    assert comfy.utils.get_tiled_scale_steps(56, 40, 24, 16, 4) >= len(calls) // 2


# --- comfy.model_management ------------------------------------------------------------------------------------


def test_devices_and_dtypes(comfy: Comfy) -> None:
    mm = comfy.mm
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert mm.get_torch_device().type == expected
    assert mm.intermediate_device() == mm.unet_offload_device() == torch.device("cpu")
    assert mm.vae_device().type == mm.text_encoder_device().type == expected
    assert not mm.should_use_fp16(torch.device("cpu")) and not mm.xformers_enabled()
    assert mm.is_device_mps(torch.device("mps")) and not mm.is_device_mps("cpu")
    assert mm.unet_dtype(torch.device("cpu")) == torch.float32
    assert isinstance(mm.vram_state, mm.VRAMState)
    assert mm.cpu_mode() == (not torch.cuda.is_available())


def test_memory_queries_and_no_op_loading(comfy: Comfy) -> None:
    mm = comfy.mm
    free = mm.get_free_memory(torch.device("cpu"))
    total_free, torch_free = mm.get_free_memory("cpu", torch_free_too=True)
    assert free > 0 and total_free > 0 and torch_free >= 0
    assert mm.get_total_memory("cpu") >= free
    assert mm.load_models_gpu([object(), object()]) is None
    mm.soft_empty_cache(force=True)
    mm.unload_all_models()


def test_interrupts_are_the_running_prompts(comfy: Comfy) -> None:
    mm = comfy.mm
    assert mm.InterruptProcessingException is Interrupted
    assert not mm.processing_interrupted()
    mm.throw_exception_if_processing_interrupted()  # outside a node: nothing to interrupt
    mm.interrupt_current_processing()  # outside a node: ignored, logged
    ctx = make_ctx(ListSink())
    with running(ctx):
        mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing()
        assert mm.processing_interrupted() and ctx.interrupt.is_set()
        with pytest.raises(mm.InterruptProcessingException):
            mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing(False)
        assert not mm.processing_interrupted()


# --- comfy.samplers --------------------------------------------------------------------------------------------


def test_sampler_and_scheduler_names(comfy: Comfy) -> None:
    samplers = comfy.samplers
    assert samplers.KSampler.SAMPLERS == samplers.SAMPLER_NAMES == list(names.SAMPLER_NAMES)
    assert samplers.KSampler.SCHEDULERS == samplers.SCHEDULER_NAMES == list(names.SCHEDULER_NAMES)
    assert {"euler", "dpmpp_2m", "ddim"} <= set(samplers.SAMPLER_NAMES) and "karras" in samplers.SCHEDULER_NAMES
    assert "ddim" not in samplers.KSAMPLER_NAMES and "euler" in samplers.KSAMPLER_NAMES
    samplers.KSampler.SAMPLERS.append("pack_sampler")
    try:
        assert "pack_sampler" not in names.SAMPLER_NAMES
    finally:
        samplers.KSampler.SAMPLERS.remove("pack_sampler")
    with pytest.raises(NotImplementedError, match="KSampler"):
        samplers.KSampler(None, 20, "cpu")


def test_modules_need_loaded_custom_nodes(comfy: Comfy) -> None:
    """Before install (no active runtime) the folder functions say what to do."""
    runtime._ACTIVE.clear()
    fp: ModuleType = comfy.folder_paths
    with pytest.raises(runtime.NotLoaded, match="custom nodes"):
        fp.get_output_directory()
