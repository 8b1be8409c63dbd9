"""The cluster front's file handling without Ray: inputs shipped to workers, outputs saved under free names."""

from __future__ import annotations

from pathlib import Path

from engine.cluster.actor import ShippedFile
from engine.cluster.needs import PromptNeeds
from engine.cluster.outputs import OutputStore, input_files
from engine.folders import Folders


def folders(tmp_path: Path) -> Folders:
    made = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp", (tmp_path / "models",))
    made.ensure()
    return made


def entry(name: str, subfolder: str = "", kind: str = "output") -> dict[str, str]:
    return {"filename": name, "subfolder": subfolder, "type": kind}


def test_two_workers_same_name_get_free_counters_and_events_are_renamed(tmp_path: Path) -> None:
    store = OutputStore(folders(tmp_path))
    store.save("w1", [ShippedFile("output", "", "pic_00001_.png", b"one")])
    store.save("w2", [ShippedFile("output", "", "pic_00001_.png", b"two")])
    assert (tmp_path / "output" / "pic_00001_.png").read_bytes() == b"one"
    assert (tmp_path / "output" / "pic_00002_.png").read_bytes() == b"two"
    output = {"images": [entry("pic_00001_.png")], "text": ["kept"]}
    assert store.rewrite("w2", output) == {"images": [entry("pic_00002_.png")], "text": ["kept"]}
    assert store.rewrite("w1", output)["images"] == [entry("pic_00001_.png")]
    history = store.rewrite_outputs("w2", {"9": output, "10": None})
    assert history == {"9": {"images": [entry("pic_00002_.png")], "text": ["kept"]}, "10": None}


def test_the_same_bytes_again_reuse_their_name_and_subfolders_and_kinds_are_kept(tmp_path: Path) -> None:
    store = OutputStore(folders(tmp_path))
    store.save("w1", [ShippedFile("temp", "previews", "p_00001_.png", b"x")])
    store.save("w2", [ShippedFile("temp", "previews", "p_00001_.png", b"x")])  # a cached re-run, elsewhere
    assert sorted(p.name for p in (tmp_path / "temp" / "previews").iterdir()) == ["p_00001_.png"]
    assert store.rewrite("w2", {"images": [entry("p_00001_.png", "previews", "temp")]}) == {
        "images": [entry("p_00001_.png", "previews", "temp")]}


def test_names_without_a_counter_get_a_suffix(tmp_path: Path) -> None:
    store = OutputStore(folders(tmp_path))
    for worker, data in (("w1", b"a"), ("w2", b"b"), ("w3", b"c")):
        store.save(worker, [ShippedFile("output", "", "latent.png", data)])
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["latent-1.png", "latent-2.png", "latent.png"]


def test_input_files_ships_what_the_prompt_names_and_skips_what_is_missing(tmp_path: Path) -> None:
    made = folders(tmp_path)
    (tmp_path / "input" / "day").mkdir()
    (tmp_path / "input" / "day" / "photo.png").write_bytes(b"photo")
    (tmp_path / "output" / "made.png").write_bytes(b"made")
    needs = PromptNeeds(files=frozenset({("input", "day/photo.png"), ("output", "made.png"),
                                         ("input", "missing.png"), ("input", "../escape.png")}))
    shipped = {(f.kind, f.filename): f.data for f in input_files(made, needs)}
    assert shipped == {("input", "day/photo.png"): b"photo", ("output", "made.png"): b"made"}
