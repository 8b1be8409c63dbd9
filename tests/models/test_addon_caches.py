"""POST /free's unload_all also empties the add-on caches kept outside the ModelManager's residency."""

from __future__ import annotations

from pathlib import Path

from engine.models.addon_caches import clear_addon_caches
from engine.models.handles import FileRef
from engine.models.hypernetwork import read_hypernetwork
from engine.models.manager import ModelManager
from tests.models.hypernetwork_files import Settings, hypernetwork_dict, make_mlps, write_pt


def test_unload_all_empties_the_addon_caches(tmp_path: Path) -> None:
    settings = Settings()
    path = write_pt(tmp_path / "hn.pt", hypernetwork_dict(make_mlps((16,), settings), settings, name="hn"))
    ref = FileRef.of(path)
    first = read_hypernetwork(ref)
    assert read_hypernetwork(ref) is first  # cached
    assert read_hypernetwork.cache_info().currsize >= 1
    ModelManager("cpu").unload_all()
    assert read_hypernetwork.cache_info().currsize == 0
    again = read_hypernetwork(ref)
    assert again is not first and again.dims == first.dims  # read anew from the file
    assert clear_addon_caches() >= 1 and clear_addon_caches() == 0
