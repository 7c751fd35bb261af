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

import functools
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
    """Whether the cell's architecture has a packed form (a registered torchvision ResNet; any
    other model trains alone)."""
    from resablate.families import get_family

    try:
        family = get_family(cell.arch, cell.source)
    except ConfigError:  # a model outside the registry (timm, Hugging Face, a user factory)
        return False
    return family.source == "torchvision" and family.kind == "resnet"


def cell_memory_bytes(cell: Cell) -> int:
    """Estimated training memory of one cell on a GPU in bytes: weights, gradients and two
    optimiser moments (16 bytes per parameter of the family's model with its 1000-class head;
    2 more under 16-bit autocast, its copies of the weights) plus the activations one micro-batch
    keeps for its backward pass (:func:`activation_bytes_per_image`, in the precision the
    recipe's ``amp`` gives on CUDA)."""
    from resablate.families import get_family

    recipe = cell.effective_recipe
    half = recipe.amp != "none"  # "auto" is bf16 on CUDA; fp16 keeps as many bytes
    params = get_family(cell.arch, cell.source).params
    dtype = "bfloat16" if half else "float32"
    per_image = activation_bytes_per_image(cell.arch, cell.source, recipe.image_size, dtype)
    return (18 if half else 16) * params + per_image * recipe.batch_size


@functools.lru_cache(maxsize=64)
def activation_bytes_per_image(arch: str, source: str, image_size: int, dtype: str) -> int:
    """Bytes of the tensors a training forward pass keeps for backward, per image (measured).

    The model (unaltered, 2-class head, train mode, weights and inputs in ``dtype``) runs one
    forward pass of 2 images of ``image_size`` px on the meta device, so nothing is computed or
    allocated, under :func:`torch.autograd.graph.saved_tensors_hooks`; the bytes of the distinct
    tensors saved for backward, parameters and buffers left out (they are counted per parameter),
    are halved. Cached per (architecture, source, image size, dtype).

    Args:
        arch: A registered architecture.
        source: Its model source (``"torchvision"``, ``"timm"``, ``"hf"``).
        image_size: Side of the (square) input in pixels.
        dtype: A torch dtype's name, e.g. ``"float32"`` or ``"bfloat16"``.
    """
    import torch

    from resablate.weights import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes=2, source=source)
    torch_dtype = getattr(torch, dtype)
    model = model.to(dtype=torch_dtype).train()
    states = {id(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in states:
            saved[id(tensor)] = tensor  # held, so that no other tensor reuses its id
        return tensor

    # Two images: BatchNorm in train mode refuses one value per channel (1 x 1 maps).
    images = torch.zeros(2, 3, image_size, image_size, device="meta", dtype=torch_dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return sum(t.numel() * t.element_size() for t in saved.values()) // 2


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
        if len(members) == 1:
            groups.append((members[0],))
            continue
        size = auto_pack_size(members[0], device) if pack == "auto" else int(pack)
        groups.extend(tuple(members[i : i + size]) for i in range(0, len(members), size))
    position = {cell.cell_id: i for i, cell in enumerate(cells)}
    return sorted(groups, key=lambda group: position[group[0].cell_id])


def packs_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The folder of a grid's packs: ``OUT/packs``."""
    return Path(out_dir) / PACKS_FOLDER
