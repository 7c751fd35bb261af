"""The fault suite (``slow``): kills at random moments and inside writes, hostile images, fuzzed
weights files and racing store creators. The figures these tests measure are the ones
``docs/reliability.md`` quotes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from grid_helpers import tiny_grid_args, write_tiny_dataset
from PIL import Image
from safetensors.torch import save_file
from test_data_images import _bomb_png, _incompressible, _png_chunk, _with_chunk

from resablate.atomic import TMP_MARKER
from resablate.data import decode_split, scan
from resablate.errors import StoreError, WeightsError
from resablate.grid.store import ResultStore
from resablate.weights import load_state_dict_file

pytestmark = pytest.mark.slow

# ---------------------------------------------------------------- a grid killed again and again


@pytest.fixture(scope="module")
def forkserver() -> Any:
    """Processes forked from one that imported torch and the CLI once: a run starts in a
    fraction of a second instead of paying the imports each time."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "resablate_cli.app", "fault_grid"])
    return context


def _grid(context: Any, out: Path, data: Path, when: str | None) -> int:
    """Run the tiny grid in a fresh process killed as ``when`` says; its exit code."""
    import fault_grid

    args = [*tiny_grid_args(data, out, max_steps=6), "--set", "checkpoint_every=2"]
    process = context.Process(target=fault_grid.run, args=(when, args))
    process.start()
    process.join(timeout=300)
    return process.exitcode


def _finished(out: Path) -> dict[str, tuple[bytes, int]]:
    """Cell id -> (result.json bytes, attempts) of every cell the store has as done."""
    if not (out / "store.sqlite").exists():
        return {}
    with ResultStore.open(out) as store:
        rows = [r for r in store.cells() if r.status == "done"]
    return {r.cell_id: ((Path(r.run_dir) / "result.json").read_bytes(), r.attempts) for r in rows}


def test_a_grid_killed_at_random_moments_and_inside_writes_loses_and_retrains_nothing(
    tmp_path: Path, forkserver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_tiny_dataset(tmp_path / "data")
    assert _grid(forkserver, tmp_path / "reference", data, None) == 0

    rng = np.random.default_rng(14)
    at_random = [f"after:{t:.2f}" for t in rng.uniform(0.2, 3.0, 10)]
    inside_writes = [
        "write:step-*.pt:1",
        "write:history.jsonl:1",
        "write:step-*.pt:2",
        "write:predictions.csv:1",
        "write:result.json:1",
        "write:results.csv:2",
    ]
    # The extra random kills first, then the rest interleaved with the kills inside writes; the
    # last kill is always reached (the mirrors are written at start).
    extra = len(at_random) - len(inside_writes)
    schedule = at_random[:extra]
    schedule += [m for pair in zip(at_random[extra:], inside_writes, strict=True) for m in pair]
    schedule += ["write:results.csv:1"]
    out = tmp_path / "killed"
    kills, first_done = [], {}
    for when in schedule:
        code = _grid(forkserver, out, data, when)
        assert code in (0, -signal.SIGKILL), when
        if code == -signal.SIGKILL:
            kills.append(when)
        for cell_id, state in _finished(out).items():
            first_done.setdefault(cell_id, state)
    assert _grid(forkserver, out, data, None) == 0

    assert len(kills) >= 10, kills
    assert any(k.startswith("write:step-") for k in kills)
    assert any(k.startswith("write:results.csv") for k in kills)
    with ResultStore.open(out) as store, ResultStore.open(tmp_path / "reference") as reference:
        assert store.integrity_check() == "ok"
        rows, expected = store.cells(), reference.cells()
    assert [r.status for r in rows] == ["done", "done"]  # 0 cells lost
    final = _finished(out)
    for cell_id, state in first_done.items():  # 0 cells retrained once done
        assert final[cell_id] == state
    metrics = ("cell_id", "accuracy", "precision", "recall", "f1", "loss", "steps")
    assert [[getattr(r, m) for m in metrics] for r in rows] == [
        [getattr(r, m) for m in metrics] for r in expected
    ]
    for row, ref in zip(rows, expected, strict=True):  # results identical, byte for byte
        for name in ("predictions.csv", "model.safetensors", "history.jsonl"):
            assert (Path(row.run_dir) / name).read_bytes() == (
                Path(ref.run_dir) / name
            ).read_bytes()
    assert (out / "results.csv").read_text().splitlines()[1:] != []
    assert sorted(p.name for p in out.rglob(f"{TMP_MARKER}*")) == []  # 0 temporary files left


# ------------------------------------------------------------------------ odd and hostile images


def _save(image: Image.Image, **kwargs: Any):
    return lambda path: image.save(path, **kwargs)


def _pattern(height: int = 12, width: int = 10, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _truncated(fmt: str):
    def write(path: Path) -> None:
        _pattern(64, 64).save(path, format=fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return write


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    _pattern(8, 14).save(path, format="JPEG", exif=exif.tobytes())


def _broken_exif(path: Path) -> None:
    _pattern().save(path, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")


def _png_with(chunk: bytes, after_data: bool = False):
    def write(path: Path) -> None:
        _pattern().save(path, format="PNG")
        _with_chunk(path, chunk, after_data=after_data)

    return write


def _bad_idat_crc(path: Path) -> None:
    _pattern().save(path, format="PNG")
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 8
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _palette_transparent(path: Path) -> None:
    image = Image.new("P", (6, 4))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path, format="PNG", transparency=0)


def _special(kind: str):
    def write(path: Path) -> None:
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        elif kind == "loop":
            os.symlink(path.name, path)
        elif kind == "dangling":
            os.symlink("nowhere.png", path)
        else:
            os.symlink(path.parent.parent / "REAL" / "000.png", path)

    return write


ODD_IMAGES: dict[str, tuple[Any, str]] = {
    # name: (writer, "ok" or the start of the reason it is refused with)
    "rgb.png": (_save(_pattern()), "ok"),
    "rgba.png": (_save(_pattern().convert("RGBA")), "ok"),
    "la.png": (_save(_pattern().convert("LA")), "ok"),
    "gray.jpg": (_save(_pattern().convert("L"), format="JPEG"), "ok"),
    "cmyk.jpg": (_save(_pattern().convert("CMYK"), format="JPEG"), "ok"),
    "gray16.png": (lambda p: Image.fromarray(np.full((5, 7), 40000, np.uint16)).save(p), "ok"),
    "palette.png": (_save(_pattern().convert("P")), "ok"),
    "palette-trns.png": (_palette_transparent, "ok"),
    "one-bit.png": (_save(_pattern().convert("1")), "ok"),
    "interlaced.png": (_save(_pattern(), format="PNG", interlace=1), "ok"),
    "progressive.jpg": (_save(_pattern(), format="JPEG", progressive=True), "ok"),
    "exif-rotated.jpg": (_exif_rotated, "ok"),
    "broken-exif.jpg": (_broken_exif, "ok"),
    "lossless.webp": (_save(_pattern(), format="WEBP", lossless=True), "ok"),
    "png-named.jpg": (_save(_pattern(), format="PNG"), "ok"),
    "one-pixel.png": (_save(_pattern(1, 1)), "ok"),
    "wide.png": (_save(_pattern(1, 3000)), "ok"),
    "trailing-junk.jpg": (
        lambda p: (_save(_pattern(), format="JPEG")(p), p.write_bytes(p.read_bytes() + b"junk")),
        "ok",
    ),
    "icc-2MB.png": (
        _png_with(_png_chunk(b"iCCP", b"p\0\0" + zlib.compress(_incompressible(2_000_000)))),
        "ok",
    ),
    "ztxt-5MB.png": (
        _png_with(_png_chunk(b"zTXt", b"c\0\0" + zlib.compress(b"x" * 5_000_000))),
        "ok",
    ),
    "itxt-5MB-after-data.png": (
        _png_with(_png_chunk(b"iTXt", b"c\0\1\0\0\0" + zlib.compress(b"y" * 5_000_000)), True),
        "ok",
    ),
    "link-to-good.png": (_special("link"), "ok"),
    "truncated.png": (_truncated("PNG"), "cannot decode: "),
    "truncated.jpg": (_truncated("JPEG"), "cannot decode: "),
    "truncated.webp": (_truncated("WEBP"), "cannot open: could not create decoder object"),
    "bad-crc.png": (_bad_idat_crc, "cannot decode: "),
    "empty.png": (lambda p: p.write_bytes(b""), "not a JPEG, PNG or WebP image"),
    "text.jpg": (
        lambda p: p.write_text("hello, I am a text file"),
        "not a JPEG, PNG or WebP image",
    ),
    "html.png": (lambda p: p.write_text("<html></html>"), "not a JPEG, PNG or WebP image"),
    "signature-only.png": (
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40)),
        "not a JPEG, PNG or WebP image",
    ),
    "anim.gif": (_save(_pattern(), format="GIF"), "not a JPEG, PNG or WebP image"),
    "image.tiff": (_save(_pattern(), format="TIFF"), "not a JPEG, PNG or WebP image"),
    "image.bmp": (_save(_pattern(), format="BMP"), "not a JPEG, PNG or WebP image"),
    "icon.ico": (_save(_pattern(16, 16), format="ICO"), "not a JPEG, PNG or WebP image"),
    "bomb.png": (_bomb_png, "decompression bomb refused: "),
    "pipe.png": (_special("fifo"), "not a regular file (a FIFO)"),
    "folder.jpg": (_special("folder"), "a folder, not an image file"),
    "loop.png": (_special("loop"), "symbolic link loop"),
    "dangling.png": (_special("dangling"), "broken symbolic link: nowhere.png does not exist"),
}


def test_every_odd_or_hostile_image_is_accepted_or_listed_with_its_reason(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", per_class=4, size=12)
    for name, (write, _) in ODD_IMAGES.items():
        write(root / "train" / "FAKE" / name)
    assert len(ODD_IMAGES) >= 30
    for verify in (False, True):
        found = scan(root, verify=verify)
        names = {Path(s.path).name for s in found.samples("train")}
        reasons = {Path(b.path).name: b.reason for b in found.bad_files}
        for name, (_, expected) in ODD_IMAGES.items():
            if expected == "ok":
                assert name in names, (name, reasons.get(name))
            elif verify or not expected.startswith("cannot decode"):
                assert reasons[name].startswith(expected), (name, reasons[name])
                assert "\n" not in reasons[name]
    decoded = decode_split(found, "train", storage_size=8)
    accepted = sum(1 for _, expected in ODD_IMAGES.values() if expected == "ok")
    assert len(decoded.labels) == 8 + accepted
    assert tuple(decoded.images.shape[1:]) == (3, 8, 8)


# -------------------------------------------------------------------------- fuzzed safetensors


def test_500_fuzzed_safetensors_files_give_only_one_line_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    good = tmp_path / "good.safetensors"
    save_file({"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(2)}, str(good))
    original = good.read_bytes()
    header_len = struct.unpack("<Q", original[:8])[0]
    rng = np.random.default_rng(500)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(500):
        data = bytearray(original)
        kind = i % 5
        if kind == 0:  # flip bytes anywhere
            for at in rng.integers(0, len(data), rng.integers(1, 8)):
                data[at] = int(rng.integers(0, 256))
        elif kind == 1:  # flip bytes inside the JSON header
            for at in rng.integers(8, 8 + header_len, rng.integers(1, 4)):
                data[at] = int(rng.integers(32, 127))
        elif kind == 2:  # cut anywhere
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 3:  # a wrong header length
            data[:8] = struct.pack("<Q", int(rng.integers(0, 2**63)) >> int(rng.integers(0, 63)))
        else:  # junk appended or inserted
            at = int(rng.integers(0, len(data)))
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        path = tmp_path / f"fuzz{i:03d}.safetensors"
        path.write_bytes(bytes(data))
        try:
            load_state_dict_file(path)
            outcomes["loaded"] += 1
        except WeightsError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            assert len(str(exc)) < 400, str(exc)
            outcomes["refused"] += 1
        path.unlink()
    assert sum(outcomes.values()) == 500
    assert outcomes["refused"] >= 250  # most mutations break the file; none escaped as a crash


# ------------------------------------------------------------------------- racing store creators


def _create(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        ResultStore(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def _poll(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    seen = []
    for _ in range(400):
        try:
            with ResultStore.open(path) as store:
                store.status_counts()
            seen.append("ok")
        except StoreError as exc:
            message = str(exc)
            if "no results store" in message or "holds no results yet" in message:
                seen.append("not yet")
            else:
                seen.append(message)
    results.put(seen)


def test_eight_processes_creating_one_store_while_a_reader_polls(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    failures, polls = [], 0
    for attempt in range(10):
        path = str(tmp_path / f"race{attempt}" / "store.sqlite")
        barrier, results, reads = context.Barrier(9), context.Queue(), context.Queue()
        creators = [
            context.Process(target=_create, args=(path, barrier, results)) for _ in range(8)
        ]
        reader = context.Process(target=_poll, args=(path, barrier, reads))
        for process in (*creators, reader):
            process.start()
        outcomes = [results.get(timeout=120) for _ in creators]
        seen = reads.get(timeout=120)
        for process in (*creators, reader):
            process.join(timeout=60)
        failures += [o for o in outcomes if o != "ok"]
        failures += [s for s in seen if s not in ("ok", "not yet")]
        polls += len(seen)
    assert failures == []
    assert polls == 4000


# ------------------------------------------------------------------------------------ a full disk

_FULL_DISK = """
import json, sys
from typer.testing import CliRunner
from resablate_cli.app import app
from resablate.grid.store import ResultStore
result = CliRunner().invoke(app, json.loads(sys.argv[1]))
with ResultStore.open(sys.argv[2]) as store:
    rows = [(r.status, r.reason) for r in store.cells()]
print(json.dumps([result.exit_code, result.stderr, rows]))
"""


def test_a_full_disk_fails_the_cell_naming_the_file(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a real full disk needs a private tmpfs: root and unshare(1)")
    data = write_tiny_dataset(tmp_path / "data")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "grid"
    args = [
        *tiny_grid_args(data, out, max_steps=4),
        "--residual",
        "on",
        "--set",
        "checkpoint_every=2",
    ]
    mount = f'mount -t tmpfs -o size=2m tmpfs {shlex.quote(str(disk))} && exec "$@"'
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            mount,
            "sh",
            sys.executable,
            "-c",
            _FULL_DISK,
            json.dumps(args),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    code, stderr, rows = json.loads(done.stdout.splitlines()[-1])
    assert code == 3, stderr  # the grid ran to its end; its cells are not done
    assert [status for status, _ in rows] == ["failed", "failed"], rows
    for _, reason in rows:  # one line naming the file that did not fit
        assert reason.startswith(f"OSError: [Errno 28] No space left on device: '{out}/cells/")
        assert reason.endswith("/checkpoints/step-00000002.pt'")
