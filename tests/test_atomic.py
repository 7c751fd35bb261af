"""Atomic writes: all or nothing, ordinary permissions, stale temp files swept."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from resablate.atomic import TMP_MARKER, atomic_open, sweep_stale, write_text


def test_write_replaces_whole_file_with_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.csv"
    write_text(target, "old\n")
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["results.csv"]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_text(target, "complete\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_sweep_removes_only_stale_temp_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / f"{TMP_MARKER}store.sqlite.x1"
    stale.write_text("partial")
    keep = tmp_path / "a" / "store.sqlite"
    keep.write_text("data")
    assert sweep_stale(tmp_path) == [stale]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["store.sqlite"]


def test_atomic_open_refuses_append_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'wb' or 'w'"), atomic_open(tmp_path / "x", "a"):
        pass


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "history.jsonl"
    with pytest.raises(OSError) as info:
        write_text(target, "x" * 1000)
    assert str(info.value) == f"[Errno 28] No space left on device: '{target}'"
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
