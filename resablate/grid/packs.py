"""Which cells of a grid train together as packs (``--pack auto|off|N``).

Cells pack when they share :func:`resablate.grid.job.pack_key` (architecture, model source,
recipe with every override, freeze plan, BatchNorm policy, data) and their architecture packs
(torchvision ResNets: :mod:`resablate.packing`). Residual plans, initial weights and seeds may
differ. A pack is identified by the sorted ids of its cells, so a rerun that groups the same
unfinished cells finds its checkpoints in ``OUT/packs/<pack id>``, and one that groups them
differently (another ``--pack``) starts those packs over.

``auto`` packs where packing pays: up to :data:`AUTO_PACK_CUDA` cells on a GPU, fewer when the
estimated training memory of K cells (:func:`cell_memory_bytes`) would exceed half of the device's
free memory; none on a CPU (:data:`AUTO_PACK_CPU`), where a packed model measured slower than its
cells one at a time (``benchmarks/packing.py``, ``docs/performance.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from resablate.errors import ConfigError
from resablate.grid.cell import Cell
from resablate.grid.job import pack_key

PACKS_FOLDER = "packs"
AUTO_PACK_CPU = 1
"""K of ``--pack auto`` on a CPU: 1, every cell alone. On the 2-core development CPU (quiet, 2 torch
threads, the engine's fused AdamW) a packed ResNet-18 at 32×32 trained 1.04x, 0.97x and 0.61x as
fast per cell as its cells one at a time at K = 2, 4, 8, and the demo grid packed by 4 took 108 s
against 93 s alone: a CPU step is bound by per-model work (weights, gradients, optimiser state)
that packing does not share, and oneDNN's grouped convolutions are no faster per group than plain
ones (much slower at the stem and on 1×1 feature maps)."""
AUTO_PACK_CUDA = 16
"""K of ``--pack auto`` on a GPU (HFTA's regime: one small model leaves a GPU mostly idle, and K of
them fill it); not measured by this project yet (no GPU has been lent to it)."""
# Floats of activations kept for the backward pass per input value (pixel x channel) of a ResNet:
# a deliberately generous estimate for the memory bound of ``auto``, not a measurement.
_ACTIVATION_FLOATS_PER_INPUT = 200


def parse_pack(value: str | int) -> str | int:
    """``"auto"``, ``"off"`` or a pack size K >= 1 (``"1"`` is ``"off"``).

    Raises:
        ConfigError: Anything else.
    """
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    if text.isdigit() and int(text) >= 1:
        return "off" if int(text) == 1 else int(text)
    raise ConfigError(
        f"pack {value!r} is not valid; use auto, off or a number of cells (2, 4)", field="pack"
    )


def packable(cell: Cell) -> bool:
    """Whether the cell's architecture has a packed form (a torchvision ResNet)."""
    from resablate.families import get_family

    family = get_family(cell.arch, cell.source)
    return family.source == "torchvision" and family.kind == "resnet"


def cell_memory_bytes(cell: Cell) -> int:
    """Estimated training memory of one cell in bytes (fp32): weights, gradients and two
    optimiser moments (16 bytes per parameter of the family's model with its 1000-class head)
    plus the activations of one micro-batch."""
    from resablate.families import get_family

    recipe = cell.effective_recipe
    pixels = 3 * recipe.image_size**2 * recipe.batch_size
    params = get_family(cell.arch, cell.source).params
    return 16 * params + 4 * _ACTIVATION_FLOATS_PER_INPUT * pixels


def free_memory_bytes(device: str) -> int:
    """Free memory of the CUDA device ``device`` in bytes (``torch.cuda.mem_get_info``)."""
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def auto_pack_size(cell: Cell, device: str) -> int:
    """K of ``--pack auto`` for cells like ``cell`` on ``device`` (see the module docstring)."""
    if not device.startswith("cuda"):
        return AUTO_PACK_CPU
    fits = free_memory_bytes(device) // (2 * cell_memory_bytes(cell))
    return max(1, min(AUTO_PACK_CUDA, int(fits)))


def plan_packs(cells: Sequence[Cell], pack: str | int, *, device: str) -> list[tuple[Cell, ...]]:
    """Group ``cells`` into packs (in grid order; a group of one trains alone).

    Args:
        cells: The cells to run, in grid order.
        pack: ``"auto"``, ``"off"`` or K (see :func:`parse_pack`).
        device: The device the packs will train on (bounds ``auto``).

    Returns:
        The groups, in the order of their first cell.
    """
    pack = parse_pack(pack)
    if pack == "off":
        return [(cell,) for cell in cells]
    by_key: dict[tuple[object, ...], list[Cell]] = {}
    for cell in cells:
        key = pack_key(cell) if packable(cell) else ("alone", cell.cell_id)
        by_key.setdefault(key, []).append(cell)
    groups: list[tuple[Cell, ...]] = []
    for members in by_key.values():
        size = auto_pack_size(members[0], device) if pack == "auto" else int(pack)
        groups.extend(tuple(members[i : i + size]) for i in range(0, len(members), size))
    position = {cell.cell_id: i for i, cell in enumerate(cells)}
    return sorted(groups, key=lambda group: position[group[0].cell_id])


def packs_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The folder of a grid's packs: ``OUT/packs``."""
    return Path(out_dir) / PACKS_FOLDER
