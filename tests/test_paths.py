"""The cache root: $RESABLATE_CACHE, else the platform's user cache folder (no platformdirs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from resablate import paths


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("RESABLATE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    return tmp_path


def test_resablate_cache_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESABLATE_CACHE", str(tmp_path / "here"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "here"


def test_linux_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, no_override: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert paths.cache_root() == Path("/somewhere/cache/resablate")
    for unset in ("", "   "):  # blank counts as unset (XDG Base Directory specification)
        monkeypatch.setenv("XDG_CACHE_HOME", unset)
        assert paths.cache_root() == no_override / ".cache" / "resablate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.cache_root() == no_override / ".cache" / "resablate"


def test_macos_and_windows(monkeypatch: pytest.MonkeyPatch, no_override: Path) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert paths.cache_root() == no_override / "Library" / "Caches" / "resablate"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", "/c/Users/me/AppData/Local")
    assert paths.cache_root() == Path("/c/Users/me/AppData/Local/resablate/Cache")


@pytest.mark.parametrize("xdg", [None, "/somewhere/cache", " "])
def test_the_same_folder_as_platformdirs(
    monkeypatch: pytest.MonkeyPatch, no_override: Path, xdg: str | None
) -> None:
    platformdirs = pytest.importorskip("platformdirs", reason="platformdirs is not installed")
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    expected = platformdirs.user_cache_dir("resablate", appauthor=False)
    assert paths.cache_root() == Path(expected)
