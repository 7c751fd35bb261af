"""Read an offline W&B run file (``run-<id>.wandb``) back, as ``wandb sync`` does.

W&B (0.31) ships no Python reader of its transaction log any more. The format: a 7-byte header
(``:W&B``, magic 0xBEE1, version 1), then LevelDB-log records in 32 KiB blocks, each a 7-byte
header (CRC32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a
serialised ``wandb.proto.wandb_internal_pb2.Record``; a block's tail shorter than a header is
padding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, LAST = 1, 4


def records(path: Path) -> list[Any]:
    """The ``Record`` messages of a run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pieces, found = HEADER, b"", []
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        pieces += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            found.append(record)
            pieces = b""
    return found


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What an offline run logged: its run record, config, history by key, summary, exit code."""

    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_run(path: Path) -> OfflineRun:
    """The run logged in ``path``: history as ``key -> [(step, value)]``."""
    found = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.run = record.run
            found.config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            for key, value in row.items():
                if not key.startswith("_"):
                    found.history.setdefault(key, []).append((row["_step"], value))
        elif kind == "summary":
            found.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            found.exit_code = record.exit.exit_code
    return found
