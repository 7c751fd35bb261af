"""Residual surgery: drop, scale, lesion and restore the residual connections of a ResNet, in place.

Semantics (DESIGN.md §3): dropping the residual connection of a block makes its output
``act(main_path(x))``; the identity or projection shortcut and the addition are gone, the final
activation stays. The projection shortcut (``downsample``) is then never called: it computes no
FLOPs and its parameters are *inactive*, yet they stay in the state_dict so any checkpoint loads
before and after surgery.

How: each block's class is swapped for a module-level subclass of the same upstream block
(:mod:`resablate._rewired`) whose ``forward`` reads ``residual_alpha`` and ``lesioned``; restoring
swaps the upstream class back and removes those attributes, which gives exactly the untouched model.

Works on any torchvision or timm ResNet instance (ResNeXt and Wide-ResNet included), built by
:func:`resablate.weights.build_model` or not. Every function validates all its arguments and the
whole model before changing anything.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from resablate.counting import Counts, count
from resablate.errors import ConfigError, UnsupportedBlockError
from resablate.families import (
    RESNET_STAGES,
    block_adapter,
    canonical_stage,
    family_of,
    get_family,
    is_resnet_like,
    paper_stage,
    residual_architectures,
    residual_stage_names,
    supported_block_types,
    type_name,
)


@dataclass(frozen=True)
class BlockState:
    """The residual wiring of one block.

    Attributes:
        alpha: Weight of the shortcut in ``act(main(x) + alpha * shortcut(x))``; 1.0 is untouched,
            0.0 is dropped (shortcut not run).
        lesioned: The main path is removed: output = ``act(shortcut(x))``.
    """

    alpha: float = 1.0
    lesioned: bool = False

    @property
    def untouched(self) -> bool:
        """True for the upstream wiring."""
        return self.alpha == 1.0 and not self.lesioned


@dataclass(frozen=True)
class StageSurgery:
    """One residual stage in a :class:`SurgeryReport`.

    Attributes:
        stage: Paper stage name (``"conv4_x"``).
        blocks: Residual blocks in the stage.
        blocks_rewired: Blocks of the stage that this call set (selected ones, changed or not).
        inactive_params: Parameters of the stage that the forward pass no longer uses.
    """

    stage: str
    blocks: int
    blocks_rewired: int
    inactive_params: int


@dataclass(frozen=True)
class SurgeryReport:
    """What one surgery call changed.

    Attributes:
        operation: ``"drop"``, ``"scale"``, ``"lesion"``, ``"restore"`` or ``"apply"``.
        alpha: The shortcut weight set by ``drop``/``scale`` (None for the others).
        blocks_total: Residual blocks in the model.
        blocks_rewired: Names (``"layer3.2"``) of the blocks this call set, in forward order.
        inactive_params: Parameters the forward pass no longer uses after the call (the idle
            ``downsample`` projections of dropped blocks, the main paths of lesioned ones).
        params: All parameters of the model.
        active_params_before: Parameters the forward pass used before the call.
        active_params_after: Parameters the forward pass uses after the call.
        stages: Per residual stage, in forward order.
    """

    operation: str
    alpha: float | None
    blocks_total: int
    blocks_rewired: tuple[str, ...]
    inactive_params: int
    params: int
    active_params_before: int
    active_params_after: int
    stages: tuple[StageSurgery, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        data = asdict(self)
        data["blocks_rewired"] = list(self.blocks_rewired)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    def __rich__(self) -> Any:
        from rich.table import Table

        title = f"residual surgery: {self.operation}"
        if self.alpha is not None:
            title += f" (alpha = {self.alpha:g})"
        table = Table(title=title)
        for column in ("stage", "blocks", "rewired", "inactive params"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for s in self.stages:
            table.add_row(s.stage, str(s.blocks), str(s.blocks_rewired), f"{s.inactive_params:,}")
        table.add_row(
            "total",
            str(self.blocks_total),
            str(len(self.blocks_rewired)),
            f"{self.inactive_params:,}",
            style="bold",
        )
        table.caption = (
            f"params {self.params:,}; active params "
            f"{self.active_params_before:,} -> {self.active_params_after:,}"
        )
        return table


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of ``model`` in forward order, named like ``"layer3.2"``.

    Returns an empty list for a model without ``layer1``..``layer4`` (AlexNet, VGG, EfficientNet).

    Raises:
        UnsupportedBlockError: A child of ``layer1``..``layer4`` is of a block type the registry
            does not declare (never skipped silently).
    """
    if not is_resnet_like(model):
        return []
    blocks = []
    for stage in RESNET_STAGES:
        for name, block in getattr(model, stage).named_children():
            if block_adapter(block) is None:
                raise UnsupportedBlockError(
                    f"unsupported block type {type_name(type(block))} at {stage}.{name}; "
                    f"residual surgery supports: {', '.join(supported_block_types())}"
                )
            blocks.append((f"{stage}.{name}", block))
    return blocks


def residual_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every residual block's wiring: name -> ``{"alpha": float, "lesioned": bool}``.

    Feed it back to :func:`apply_residual_state` to restore a previous (possibly mixed) state.
    """
    return {name: asdict(_state_of(block)) for name, block in _checked_blocks(model)}


def drop_residual(
    model: nn.Module,
    stages: Iterable[str] | str | None = None,
    blocks: Iterable[str] | str | None = None,
) -> SurgeryReport:
    """Remove the residual connections of the selected blocks, in place: output = ``act(main(x))``.

    Args:
        model: A torchvision or timm ResNet (ResNeXt, Wide-ResNet included).
        stages: Stages to rewire (``conv2_x``..``conv5_x`` or ``layer1``..``layer4``,
            case-insensitive); None with ``blocks`` None means every stage.
        blocks: Single blocks (``"layer3.2"`` or ``"conv4_x.2"``); the union with ``stages`` is
            rewired.

    Returns:
        The report of what changed.

    Raises:
        ConfigError: Unknown stage or block, or a model without residual connections.
        UnsupportedBlockError: The model holds a block type the registry does not declare.
    """
    return scale_residual(model, 0.0, stages=stages, blocks=blocks, _operation="drop")


def scale_residual(
    model: nn.Module,
    alpha: float,
    stages: Iterable[str] | str | None = None,
    blocks: Iterable[str] | str | None = None,
    *,
    _operation: str = "scale",
) -> SurgeryReport:
    """Weight the shortcut of the selected blocks by ``alpha``, in place.

    Output = ``act(main(x) + alpha * shortcut(x))``. ``alpha == 1`` swaps the upstream class
    back (exactly the untouched block); ``alpha == 0`` is :func:`drop_residual` (the shortcut is
    not run).
    A lesion on a selected block is lifted.

    Args:
        model: A torchvision or timm ResNet.
        alpha: Finite weight of the shortcut.
        stages: As in :func:`drop_residual`.
        blocks: As in :func:`drop_residual`.

    Raises:
        ConfigError: Non-finite alpha, unknown stage/block, or a model without residual connections.
        UnsupportedBlockError: The model holds a block type the registry does not declare.
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ConfigError(f"residual alpha must be a finite number, not {alpha}")
    all_blocks = _checked_blocks(model)
    selected = _select(all_blocks, stages, blocks)
    target = BlockState(alpha=alpha)
    return _apply(model, all_blocks, {name: target for name in selected}, _operation, alpha)


def lesion_blocks(model: nn.Module, blocks: Iterable[str] | str) -> SurgeryReport:
    """Remove the main path of the named blocks, in place: output = ``act(shortcut(x))``.

    The lesion study of Veit et al. (2016): the block's residual branch no longer contributes.
    Undo with :func:`restore_residual` (or :func:`apply_residual_state`).

    Raises:
        ConfigError: No block named, unknown block, or a model without residual connections.
        UnsupportedBlockError: The model holds a block type the registry does not declare.
    """
    all_blocks = _checked_blocks(model)
    if isinstance(blocks, str):
        blocks = [blocks]
    blocks = list(blocks)
    if not blocks:
        raise ConfigError("lesion_blocks needs at least one block name such as 'layer3.2'")
    selected = _select(all_blocks, None, blocks)
    current = {name: _state_of(block) for name, block in all_blocks}
    changes = {name: BlockState(current[name].alpha, lesioned=True) for name in selected}
    return _apply(model, all_blocks, changes, "lesion", None)


def restore_residual(model: nn.Module, blocks: Iterable[str] | str | None = None) -> SurgeryReport:
    """Give the named blocks (None: all) back their upstream class and wiring, in place.

    The result is exactly the untouched model: same classes, no extra attributes, same outputs.

    Raises:
        ConfigError: Unknown block, or a model without residual connections.
        UnsupportedBlockError: The model holds a block type the registry does not declare.
    """
    all_blocks = _checked_blocks(model)
    names = [n for n, _ in all_blocks] if blocks is None else _select(all_blocks, None, blocks)
    return _apply(model, all_blocks, dict.fromkeys(names, BlockState()), "restore", None)


def apply_residual_state(model: nn.Module, state: Mapping[str, Mapping[str, Any]]) -> SurgeryReport:
    """Set the wiring of the blocks named in ``state`` (as returned by :func:`residual_state`).

    Blocks not named keep their current wiring.

    Raises:
        ConfigError: Unknown block name, malformed entry, or a model without residual connections.
        UnsupportedBlockError: The model holds a block type the registry does not declare.
    """
    all_blocks = _checked_blocks(model)
    known = {name for name, _ in all_blocks}
    changes: dict[str, BlockState] = {}
    for name, entry in state.items():
        if name not in known:
            raise ConfigError(
                f"unknown block {name!r} in residual state; {_legal_blocks(all_blocks)}"
            )
        extra = set(entry) - {"alpha", "lesioned"}
        if extra:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(extra))} for block {name}; keys: alpha, lesioned"
            )
        alpha = float(entry.get("alpha", 1.0))
        if not math.isfinite(alpha):
            raise ConfigError(f"residual alpha of block {name} must be finite, not {alpha}")
        changes[name] = BlockState(alpha, bool(entry.get("lesioned", False)))
    return _apply(model, all_blocks, changes, "apply", None)


# --- internals -----------------------------------------------------------------------------------


def _checked_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    blocks = residual_blocks(model)
    if not blocks:
        family = family_of(model)
        name = family.arch if family is not None else type(model).__name__.lower()
        raise ConfigError(
            f"{name} has no residual connections; residual surgery applies to: "
            f"{', '.join(residual_architectures())}"
        )
    return blocks


def _legal_blocks(all_blocks: list[tuple[str, nn.Module]]) -> str:
    ranges = []
    for stage in RESNET_STAGES:
        names = [n for n, _ in all_blocks if n.startswith(stage + ".")]
        if names:
            ranges.append(f"{names[0]}..{names[-1]}")
    return "blocks: " + ", ".join(ranges)


def _canonical_block(name: str) -> str:
    stage, _, index = name.strip().partition(".")
    return f"{canonical_stage(stage)}.{index}" if index else name


def _select(
    all_blocks: list[tuple[str, nn.Module]],
    stages: Iterable[str] | str | None,
    blocks: Iterable[str] | str | None,
) -> list[str]:
    """Names of the selected blocks in forward order; everything when both are None."""
    names = [n for n, _ in all_blocks]
    if stages is None and blocks is None:
        return names
    chosen: set[str] = set()
    if stages is not None:
        for stage in residual_stage_names(stages):
            chosen.update(n for n in names if n.startswith(stage + "."))
    if blocks is not None:
        for block in [blocks] if isinstance(blocks, str) else blocks:
            canonical = _canonical_block(block)
            if canonical not in names:
                raise ConfigError(f"unknown block {block!r}; {_legal_blocks(all_blocks)}")
            chosen.add(canonical)
    return [n for n in names if n in chosen]


def _state_of(block: nn.Module) -> BlockState:
    return BlockState(
        float(getattr(block, "residual_alpha", 1.0)), bool(getattr(block, "lesioned", False))
    )


def _rewired_class(block: nn.Module) -> type[nn.Module]:
    adapter = block_adapter(block)
    assert adapter is not None  # residual_blocks checked every block
    module, _, name = adapter.rewired.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _set_state(block: nn.Module, state: BlockState) -> None:
    rewired = _rewired_class(block)
    if state.untouched:
        block.__class__ = rewired.upstream_block  # type: ignore[attr-defined]
        block.__dict__.pop("residual_alpha", None)
        block.__dict__.pop("lesioned", None)
    else:
        block.__class__ = rewired
        block.__dict__["residual_alpha"] = state.alpha
        block.__dict__["lesioned"] = state.lesioned


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _inactive_params(block: nn.Module, state: BlockState) -> int:
    """Parameters of ``block`` that its forward does not use in ``state``."""
    downsample = _count(getattr(block, "downsample", None))
    if state.lesioned:
        return _count(block) - downsample
    return downsample if state.alpha == 0.0 else 0


def _apply(
    model: nn.Module,
    all_blocks: list[tuple[str, nn.Module]],
    changes: Mapping[str, BlockState],
    operation: str,
    alpha: float | None,
) -> SurgeryReport:
    before = {name: _state_of(block) for name, block in all_blocks}
    after = {**before, **changes}
    for name, block in all_blocks:
        if name in changes:
            _set_state(block, changes[name])
    params = sum(p.numel() for p in model.parameters())
    inactive_before = sum(_inactive_params(b, before[n]) for n, b in all_blocks)
    per_stage = []
    for stage in RESNET_STAGES:
        members = [(n, b) for n, b in all_blocks if n.startswith(stage + ".")]
        if members:
            per_stage.append(
                StageSurgery(
                    stage=paper_stage(stage),
                    blocks=len(members),
                    blocks_rewired=sum(1 for n, _ in members if n in changes),
                    inactive_params=sum(_inactive_params(b, after[n]) for n, b in members),
                )
            )
    inactive_after = sum(s.inactive_params for s in per_stage)
    return SurgeryReport(
        operation=operation,
        alpha=alpha,
        blocks_total=len(all_blocks),
        blocks_rewired=tuple(n for n, _ in all_blocks if n in changes),
        inactive_params=inactive_after,
        params=params,
        active_params_before=params - inactive_before,
        active_params_after=params - inactive_after,
        stages=tuple(per_stage),
    )


# --- surgery on a named architecture, with counts (what ``resablate surgery`` shows) ------------


@dataclass(frozen=True)
class SurgeryCounts:
    """Counts of one architecture before and after residual surgery (1000-class head).

    Attributes:
        arch: Architecture name.
        source: ``"torchvision"`` or ``"timm"``.
        alpha: Shortcut weight applied (0.0 = residual connections dropped).
        stages: Paper names of the stages operated on.
        report: The surgery report.
        before: Counts of the untouched model.
        after: Counts after surgery.
    """

    arch: str
    source: str
    alpha: float
    stages: tuple[str, ...]
    report: SurgeryReport
    before: Counts
    after: Counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the headline numbers flat, then per stage and the full counts."""
        rewired = {s.stage: s.blocks_rewired for s in self.report.stages}
        return {
            "arch": self.arch,
            "source": self.source,
            "alpha": self.alpha,
            "stages": list(self.stages),
            "input_size": list(self.before.input_size),
            "blocks_total": self.report.blocks_total,
            "blocks_rewired": len(self.report.blocks_rewired),
            "rewired": list(self.report.blocks_rewired),
            "params": self.after.params,
            "active_params_before": self.before.active_params,
            "active_params": self.after.active_params,
            "inactive_params": self.report.inactive_params,
            "flops_before": self.before.flops,
            "flops_after": self.after.flops,
            "per_stage": [
                {
                    "stage": b.stage,
                    "blocks_rewired": rewired.get(b.stage, 0),
                    "params": b.params,
                    "active_params_before": b.active_params,
                    "active_params_after": a.active_params,
                    "flops_before": b.flops,
                    "flops_after": a.flops,
                }
                for b, a in zip(self.before.stages, self.after.stages, strict=True)
            ],
        }

    def __rich__(self) -> Any:
        from rich.table import Table

        data = self.to_dict()
        what = "dropped" if self.alpha == 0.0 else f"scaled by {self.alpha:g}"
        size = "×".join(str(s) for s in self.before.input_size)
        table = Table(
            title=f"{self.arch} ({self.source}): residual connections {what} in "
            f"{', '.join(self.stages)}; input {size}, batch 1, 1000-class head"
        )
        table.add_column("stage")
        for column in ("blocks rewired", "params", "active params", "GFLOPs"):
            table.add_column(column, justify="right")

        def arrow(before: str, after: str) -> str:
            return before if before == after else f"{before} -> {after}"

        def params(before: int, after: int) -> str:
            return arrow(f"{before:,}", f"{after:,}")

        def gflops(before: int, after: int) -> str:
            return arrow(f"{before / 1e9:.3f}", f"{after / 1e9:.3f}")

        for row in data["per_stage"]:
            table.add_row(
                row["stage"],
                str(row["blocks_rewired"]),
                f"{row['params']:,}",
                params(row["active_params_before"], row["active_params_after"]),
                gflops(row["flops_before"], row["flops_after"]),
            )
        table.add_row(
            "total",
            f"{data['blocks_rewired']} / {data['blocks_total']}",
            f"{data['params']:,}",
            params(data["active_params_before"], data["active_params"]),
            gflops(data["flops_before"], data["flops_after"]),
            style="bold",
        )
        return table


def surgery_counts(
    arch: str,
    *,
    alpha: float = 0.0,
    stages: Iterable[str] | str | None = None,
    blocks: Iterable[str] | str | None = None,
    source: str = "torchvision",
    input_size: Sequence[int] = (3, 224, 224),
) -> SurgeryCounts:
    """Build ``arch`` (1000-class head, on the meta device: shapes only), count, rewire, count.

    Args:
        arch: A registered architecture with residual blocks.
        alpha: Shortcut weight (0.0 drops the residual connections, as :func:`drop_residual`).
        stages: As in :func:`drop_residual`.
        blocks: As in :func:`drop_residual`.
        source: ``"torchvision"`` or ``"timm"``.
        input_size: ``(C, H, W)`` of the counted input, in pixels.

    Raises:
        ConfigError: Unknown architecture, stage or block, or an architecture without residual
            connections.
    """
    family = get_family(arch, source)
    if not family.residual:
        raise ConfigError(
            f"{family.arch} has no residual connections; residual surgery applies to: "
            f"{', '.join(residual_architectures())}"
        )
    if stages is not None and not isinstance(stages, str):
        stages = tuple(stages)  # read twice below
    selected = residual_stage_names(stages)
    with torch.device("meta"):
        model = family.builder()
    before = count(model, input_size)
    report = scale_residual(model, alpha, stages=stages, blocks=blocks)
    after = count(model, input_size)
    stage_names = tuple(s.stage for s in report.stages if s.blocks_rewired)
    if blocks is None:
        stage_names = tuple(paper_stage(s) for s in selected)
    return SurgeryCounts(
        arch=family.arch,
        source=family.source,
        alpha=float(alpha),
        stages=stage_names,
        report=report,
        before=before,
        after=after,
    )
