"""Atomic replacement of a finished directory (a digits pipeline, a pulled artifact)."""

from rrf_ray.engine.atomic import replace_directory


def test_replace_directory_swaps_in_the_new_one_and_leaves_nothing_else(tmp_path):
    dest, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    replace_directory(tmp, dest)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or renamed-aside copy left
    fresh = tmp_path / ".fresh"
    fresh.mkdir()
    replace_directory(fresh, tmp_path / "absent")
    assert (tmp_path / "absent").is_dir() and not fresh.exists()
