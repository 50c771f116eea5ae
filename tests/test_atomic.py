"""trainer/atomic.py: whole or not at all, for files and folders, with and without renameat2."""

from __future__ import annotations

import pytest

from trainer import atomic


def _folder(path, text):
    path.mkdir()
    (path / "model.keras").write_text(text)
    return path


def _read(path):
    return (path / "model.keras").read_text()


@pytest.mark.parametrize("swaps", [True, False], ids=["renameat2", "rename-aside"])
def test_a_folder_replaced_keeps_the_one_before_it_and_drops_the_older(tmp_path, monkeypatch, swaps):
    if not swaps:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    current, previous = tmp_path / "models", tmp_path / "models.previous"
    for text in ("A", "B", "C"):
        with atomic.partial_folder(current, replace=True, keep_as=previous) as partial:
            (partial / "model.keras").write_text(text)
    assert _read(current) == "C" and _read(previous) == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "models.previous"]


@pytest.mark.parametrize("swaps", [True, False], ids=["renameat2", "rename-aside"])
def test_a_folder_replaced_without_keeping_leaves_only_the_new_one(tmp_path, monkeypatch, swaps):
    if not swaps:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = _folder(tmp_path / "data", "old")
    atomic.replace_folder(_folder(tmp_path / ".data.partial-1", "new"), target)
    assert _read(target) == "new" and [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_failed_block_leaves_the_target_and_no_partial_folder(tmp_path):
    current = _folder(tmp_path / "models", "good")
    with pytest.raises(RuntimeError), atomic.partial_folder(current, replace=True) as partial:
        (partial / "model.keras").write_text("half")
        raise RuntimeError("interrupted")
    assert _read(current) == "good" and [p.name for p in tmp_path.iterdir()] == ["models"]


def test_a_run_folder_is_never_overwritten(tmp_path):
    taken = _folder(tmp_path / "run", "earlier")
    with pytest.raises(OSError), atomic.partial_folder(taken) as partial:
        (partial / "model.keras").write_text("later")
    assert _read(taken) == "earlier" and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_file_is_written_whole_or_left_as_it_was(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_atomically(path, "{}\n")
    with pytest.raises(RuntimeError), atomic.replacing(path) as temporary:
        temporary.write_text('{"half":')
        raise RuntimeError("interrupted")
    assert path.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
