"""Symlinked model files and folders load as listed (issue 24), on a real server with tiny checkpoint files,
while names from requests stay confined and links out of the input and output folders stay refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import PathOutsideRoot
from engine.folders import Folders
from tests.api.conftest import LiveServer
from tests.api.test_txt2img import txt2img_prompt
from tests.fixtures.tiny_checkpoints import build_checkpoint


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """Another tool's models folder, outside Loom's: checkpoints/tiny.safetensors and a LoRA-free tree."""
    folder = tmp_path / "other-tool" / "models" / "checkpoints"
    folder.mkdir(parents=True)
    build_checkpoint(folder / "tiny.safetensors", "sd1")
    return folder.parent


def ckpt_choices(live: LiveServer) -> list[str]:
    listed = live.get("/object_info/CheckpointLoaderSimple").json()
    return list(listed["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0])


def runs(live: LiveServer, ckpt: str) -> bool:
    entry = live.wait_history(live.queue_prompt(txt2img_prompt(ckpt, steps=1)), timeout=120)
    return bool(entry["status"]["status_str"] == "success")


def test_linked_files_and_folders_inside_a_model_folder_load(make_server: Callable[..., LiveServer],
                                                             shared: Path, tmp_path: Path) -> None:
    models = tmp_path / "loom-models"
    checkpoints = models / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "linked.safetensors").symlink_to(shared / "checkpoints" / "tiny.safetensors")
    (checkpoints / "other").symlink_to(shared / "checkpoints", target_is_directory=True)
    (checkpoints / "loop").symlink_to(checkpoints, target_is_directory=True)  # a loop ends the walk, not Loom
    live = make_server(models_dirs=(models,))
    assert ckpt_choices(live) == ["linked.safetensors", "other/tiny.safetensors"]
    assert runs(live, "linked.safetensors")
    assert runs(live, "other/tiny.safetensors")


def test_a_models_root_that_is_itself_a_link_loads(make_server: Callable[..., LiveServer], shared: Path,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "models-link"
    root.symlink_to(shared, target_is_directory=True)
    live = make_server(models_dirs=(root,))
    assert ckpt_choices(live) == ["tiny.safetensors"]
    assert runs(live, "tiny.safetensors")


@pytest.mark.parametrize("name", ["../other-tool/models/checkpoints/tiny.safetensors", "/etc/passwd",
                                  "sub/../../tiny.safetensors", "C:/x.safetensors", "a\x00.safetensors"])
def test_names_from_requests_stay_inside_the_model_folder(shared: Path, tmp_path: Path, name: str) -> None:
    models = tmp_path / "m"
    (models / "checkpoints").mkdir(parents=True)
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (models,))
    with pytest.raises(PathOutsideRoot):
        folders.model_path("checkpoints", name)


def test_a_bad_name_is_a_validation_error_naming_the_input(make_server: Callable[..., LiveServer],
                                                           shared: Path) -> None:
    live = make_server(models_dirs=(shared.parent,))
    reply = live.post("/prompt", {"prompt": txt2img_prompt("../models/checkpoints/tiny.safetensors")})
    assert reply.status == 400
    assert "ckpt_name" in reply.body.decode()


def test_links_out_of_output_and_input_are_still_refused(make_server: Callable[..., LiveServer],
                                                         tmp_path: Path) -> None:
    live = make_server()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    (live.settings.output_dir / "planted.png").symlink_to(secret)
    (live.settings.input_dir / "planted.png").symlink_to(secret)
    for kind in ("output", "input"):
        reply = live.get(f"/view?filename=planted.png&type={kind}")
        assert reply.status in (403, 404) and b"secret" not in reply.body, kind
