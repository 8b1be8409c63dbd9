"""engine.files.FileStore: free names, same bytes reused, atomic writes, no temporary files left behind."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from engine import files
from engine.errors import PathOutsideRoot
from engine.files import FileStore, NoFreeName, counted_names
from engine.folders import Folders


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    folders = Folders(tmp_path / "input", tmp_path / "output", tmp_path / "temp")
    folders.ensure()
    return FileStore(folders)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_free_names_and_the_same_bytes_reused(store: FileStore, tmp_path: Path) -> None:
    assert store.save("input", "cat.png", b"one") == "cat.png"
    assert store.save("input", "cat.png", b"one") == "cat.png"  # the same bytes: no second file
    assert store.save("input", "cat.png", b"two") == "cat (1).png"
    assert store.save("input", "cat.png", b"two") == "cat (1).png"
    assert store.save("input", "cat.png", b"three") == "cat (2).png"
    assert names(tmp_path / "input") == ["cat (1).png", "cat (2).png", "cat.png"]  # no .part files left
    assert (tmp_path / "input" / "cat (1).png").read_bytes() == b"two"


def test_counted_names_and_always_new_files(store: FileStore, tmp_path: Path) -> None:
    assert store.save("output", "Loom_00001_.png", b"a", names=counted_names) == "Loom_00001_.png"
    assert store.save("output", "Loom_00001_.png", b"a", names=counted_names, reuse_same=False) == "Loom_00002_.png"
    assert store.save("output", "notes.txt", b"x", names=counted_names) == "notes.txt"
    assert store.save("output", "notes.txt", b"y", names=counted_names) == "notes-1.txt"
    assert store.save("output", "x/deep.png", b"d", subfolder="sub") == "x/deep.png"
    assert (tmp_path / "output" / "sub" / "x" / "deep.png").read_bytes() == b"d"


def test_overwrite_and_put_keep_an_unchanged_file_untouched(store: FileStore, tmp_path: Path) -> None:
    path = tmp_path / "input" / "a.png"
    assert store.put("input", "a.png", b"old") is True
    os.utime(path, (1, 1))
    assert store.put("input", "a.png", b"old") is False
    assert path.stat().st_mtime == 1
    assert store.save("input", "a.png", b"new", overwrite=True) == "a.png"
    assert path.read_bytes() == b"new" and names(tmp_path / "input") == ["a.png"]


def test_names_outside_the_folder_are_refused(store: FileStore) -> None:
    for name, subfolder in (("../x.png", ""), ("x.png", "../.."), ("/etc/x.png", "")):
        with pytest.raises(PathOutsideRoot):
            store.save("input", name, b"x", subfolder=subfolder)


def test_concurrent_writers_never_share_a_name(store: FileStore, tmp_path: Path) -> None:
    saved: list[str] = []
    lock = threading.Lock()

    def write(index: int) -> None:
        name = store.save("temp", "same.png", f"data {index}".encode() * 1000)
        with lock:
            saved.append(name)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(saved)) == 16
    contents = {(tmp_path / "temp" / name).read_bytes() for name in saved}
    assert contents == {f"data {i}".encode() * 1000 for i in range(16)}


def test_without_hard_links_it_creates_exclusively(store: FileStore, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(files.os, "link", no_link)
    assert store.save("input", "b.png", b"1") == "b.png"
    assert store.save("input", "b.png", b"2") == "b (1).png"
    assert names(tmp_path / "input") == ["b (1).png", "b.png"]


def test_no_free_name_says_so(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_CANDIDATES", 2)
    store.save("input", "c.png", b"1")
    store.save("input", "c.png", b"2")
    with pytest.raises(NoFreeName, match="c.png"):
        store.save("input", "c.png", b"3")
