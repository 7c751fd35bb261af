"""Residual surgery: drop, scale, lesion and restore the residual connections of a model, in place.

Semantics (docs/surgery.md): dropping the residual connection of a block makes its output
``act(main_path(x))``; the identity or projection shortcut and the addition are gone, whatever
follows the addition stays. A projection shortcut is then never called: it computes no FLOPs and
its parameters are *inactive* (not reached by the rewired forward), yet they stay in the
state_dict so any checkpoint loads before and after surgery.

Where: every module of the model tree whose own ``forward`` adds a shortcut to its input (found by
tracing it with ``torch.fx``, :mod:`resablate._trace`) or whose class is declared with
:func:`resablate.blocks.register_block`; wrappers (a user module, ``nn.Sequential``,
``DataParallel``) are looked through. Blocks group into the stages of the model's stage map
(:func:`resablate.families.stage_map`) where it has one, else by their parent module.

How: each block's class is swapped for a subclass of its own class (:mod:`resablate._rewired`);
restoring swaps the upstream class back and removes the wiring attributes, which gives exactly the
untouched model. Every function validates all its arguments and the whole model before changing
anything. The model is changed in place; the functions return a report, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from resablate._rewired import (
    BlockView,
    Untraceable,
    inactive_params,
    set_wiring,
    upstream_of,
    view,
    wiring,
)
from resablate.blocks import block_adapter
from resablate.counting import Counts, count
from resablate.errors import ConfigError, UnsupportedBlockError
from resablate.families import (
    Family,
    family_of,
    paper_stage,
    residual_architectures,
    stage_layout,
    type_name,
)
from resablate.model_spec import parse_model


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_IN_PLACE.format(what="called"))

    def __getattr__(self, name: str) -> Any:
        # Only reached for names a report lacks, e.g. `model = drop_residual(model); model.eval()`.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"SurgeryReport has no attribute {name!r}; " + _IN_PLACE.format(what="used")
        )


_IN_PLACE = (
    "a SurgeryReport was {what} like a model: surgery changes the model in place and returns "
    "this report, so write `report = drop_residual(model)` and keep using `model`"
)


@dataclass(frozen=True)
class _Site:
    """One residual site: ``name`` (``"layer3.2"``, ``"blocks.3.attn"``), its block and stage."""

    name: str
    path: str
    block: nn.Module
    seen: BlockView
    index: int
    stage: str


@dataclass(frozen=True)
class _Layout:
    """The residual sites of a model and its stages (paper stage name -> module paths)."""

    sites: tuple[_Site, ...]
    family: Family | None
    stages: Mapping[str, tuple[str, ...]] | None


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual sites of ``model`` in forward order, each with the block that holds it.

    A block with one residual addition (a ResNet block) is named by its module path
    (``"layer3.2"``, ``"module.layer3.2"`` inside ``DataParallel``); a block with several (a ViT
    block: attention, then MLP) gives one name per site: ``"blocks.3.attn"``, ``"blocks.3.mlp"``.
    Returns an empty list for a model without residual connections (AlexNet, VGG).

    Raises:
        UnsupportedBlockError: A module that may be a residual block cannot be traced and is not
            declared with :func:`resablate.register_block`.
    """
    return [(site.name, site.block) for site in _layout(model).sites]


def residual_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every residual site's wiring: name -> ``{"alpha": float, "lesioned": bool}``.

    Feed it back to :func:`apply_residual_state` to restore a previous (possibly mixed) state.
    """
    return {site.name: asdict(_state_of(site)) for site in _checked(model).sites}


def drop_residual(
    model: nn.Module,
    stages: Iterable[str] | str | None = None,
    blocks: Iterable[str] | str | None = None,
) -> SurgeryReport:
    """Remove the residual connections of the selected blocks, in place: output = ``act(main(x))``.

    The model is changed in place and the report of what changed is returned: keep using
    ``model`` (``report = drop_residual(model)``). The report refuses to be called like a model.

    Args:
        model: Any model with residual blocks (see ``docs/surgery.md``), also inside wrappers
            such as ``nn.Sequential`` or ``DataParallel``.
        stages: Stages to rewire: the model's stage names (``conv2_x``..``conv5_x`` or
            ``layer1``..``layer4`` for ResNets, case-insensitive) or module paths; None with
            ``blocks`` None means every stage.
        blocks: Single blocks or sites (``"layer3.2"``, ``"conv4_x.2"``, ``"blocks.3.attn"``);
            the union with ``stages`` is rewired.

    Returns:
        The report of what changed.

    Raises:
        ConfigError: Unknown stage or block, or a model without residual connections.
        UnsupportedBlockError: A module that may be a residual block cannot be traced.
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
    not run). A lesion on a selected block is lifted.

    Args:
        model: As in :func:`drop_residual`.
        alpha: Finite weight of the shortcut.
        stages: As in :func:`drop_residual`.
        blocks: As in :func:`drop_residual`.

    Raises:
        ConfigError: Non-finite alpha, unknown stage/block, or a model without residual connections.
        UnsupportedBlockError: A module that may be a residual block cannot be traced.
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ConfigError(f"residual alpha must be a finite number, not {alpha}")
    layout = _checked(model)
    selected = _select(model, layout, stages, blocks)
    target = BlockState(alpha=alpha)
    return _apply(model, layout, {name: target for name in selected}, _operation, alpha)


def lesion_blocks(model: nn.Module, blocks: Iterable[str] | str) -> SurgeryReport:
    """Remove the main path of the named blocks, in place: output = ``act(shortcut(x))``.

    The lesion study of Veit et al. (2016): the block's residual branch no longer contributes.
    Undo with :func:`restore_residual` (or :func:`apply_residual_state`).

    Raises:
        ConfigError: No block named, unknown block, or a model without residual connections.
        UnsupportedBlockError: A module that may be a residual block cannot be traced.
    """
    layout = _checked(model)
    if isinstance(blocks, str):
        blocks = [blocks]
    blocks = list(blocks)
    if not blocks:
        raise ConfigError("lesion_blocks needs at least one block name such as 'layer3.2'")
    selected = _select(model, layout, None, blocks)
    current = {site.name: _state_of(site) for site in layout.sites}
    changes = {name: BlockState(current[name].alpha, lesioned=True) for name in selected}
    return _apply(model, layout, changes, "lesion", None)


def restore_residual(model: nn.Module, blocks: Iterable[str] | str | None = None) -> SurgeryReport:
    """Give the named blocks (None: all) back their upstream class and wiring, in place.

    The result is exactly the untouched model: same classes, no extra attributes, same outputs.

    Raises:
        ConfigError: Unknown block, or a model without residual connections.
        UnsupportedBlockError: A module that may be a residual block cannot be traced.
    """
    layout = _checked(model)
    if blocks is None:
        names = [site.name for site in layout.sites]
    else:
        names = _select(model, layout, None, blocks)
    return _apply(model, layout, dict.fromkeys(names, BlockState()), "restore", None)


def apply_residual_state(model: nn.Module, state: Mapping[str, Mapping[str, Any]]) -> SurgeryReport:
    """Set the wiring of the sites named in ``state`` (as returned by :func:`residual_state`).

    Sites not named keep their current wiring.

    Raises:
        ConfigError: Unknown block name, malformed entry, or a model without residual connections.
        UnsupportedBlockError: A module that may be a residual block cannot be traced.
    """
    layout = _checked(model)
    known = {site.name for site in layout.sites}
    changes: dict[str, BlockState] = {}
    for name, entry in state.items():
        if name not in known:
            raise ConfigError(f"unknown block {name!r} in residual state; {_legal_blocks(layout)}")
        extra = set(entry) - {"alpha", "lesioned"}
        if extra:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(extra))} for block {name}; keys: alpha, lesioned"
            )
        alpha = float(entry.get("alpha", 1.0))
        if not math.isfinite(alpha):
            raise ConfigError(f"residual alpha of block {name} must be finite, not {alpha}")
        changes[name] = BlockState(alpha, bool(entry.get("lesioned", False)))
    return _apply(model, layout, changes, "apply", None)


# --- internals -----------------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + ".")


def _find(
    module: nn.Module, path: str, found: list[tuple[str, nn.Module, BlockView]], doubtful: list[str]
) -> int:
    """Collect the residual blocks at or below ``module`` in forward order; count them."""
    upstream = upstream_of(module)
    traceable = next(
        iter(module.children()), None
    ) is not None and not upstream.__module__.startswith("torch.nn.")
    seen = view(module) if traceable or block_adapter(upstream) is not None else None
    if isinstance(seen, BlockView):
        found.append((path, module, seen))
        return 1
    below = sum(
        _find(child, _join(path, n), found, doubtful) for n, child in module.named_children()
    )
    if isinstance(seen, Untraceable) and seen.maybe_residual and not below:
        doubtful.append(
            f"cannot tell whether {type_name(upstream)} at {path or 'the model'} is a residual "
            f"block: torch.fx cannot trace its forward ({seen.reason}); if it is one, declare it "
            f"with resablate.register_block({upstream.__name__}, main=..., shortcut=..., act=...) "
            "(docs/surgery.md)"
        )
    return below


def _layout(model: nn.Module) -> _Layout:
    found: list[tuple[str, nn.Module, BlockView]] = []
    doubtful: list[str] = []
    _find(model, "", found, doubtful)
    if doubtful:
        raise UnsupportedBlockError(doubtful[0])
    family, stages = (stage_layout(model) if found else None) or (None, None)
    sites = []
    for path, block, seen in found:
        stage = _stage_of(path, stages)
        for index, suffix in enumerate(seen.sites):
            name = _join(path, suffix) or type(block).__name__
            sites.append(_Site(name, path, block, seen, index, stage))
    return _Layout(tuple(sites), family, stages)


def _stage_of(path: str, stages: Mapping[str, tuple[str, ...]] | None) -> str:
    for stage, paths in (stages or {}).items():
        if any(_under(path, p) for p in paths):
            return stage
    return path.rpartition(".")[0] or "model"


def _checked(model: nn.Module) -> _Layout:
    layout = _layout(model)
    if not layout.sites:
        family = family_of(model)
        name = family.arch if family is not None else type(model).__name__.lower()
        raise ConfigError(
            f"{name} has no residual connections; residual surgery applies to: "
            f"{', '.join(residual_architectures())}, and any model whose blocks add a shortcut "
            "to their input (docs/surgery.md)"
        )
    return layout


def _legal_blocks(layout: _Layout) -> str:
    ranges = []
    for stage in dict.fromkeys(site.stage for site in layout.sites):
        names = [site.name for site in layout.sites if site.stage == stage]
        ranges.append(names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}")
    return "blocks: " + ", ".join(ranges)


def _stage_key(layout: _Layout, name: str) -> str | None:
    """The stage map's key for a stage name in any accepted spelling, or None."""
    if layout.stages is None:
        return None
    family = layout.family if layout.family is not None and layout.family.kind != "resnet" else None
    try:
        key = paper_stage(name, family)
    except ConfigError:
        return None
    return key if key in layout.stages else None


def _stage_paths(model: nn.Module, layout: _Layout, stage: str) -> tuple[str, ...]:
    key = _stage_key(layout, stage)
    if key is not None:
        assert layout.stages is not None
        return layout.stages[key]
    path = stage.strip()
    try:
        model.get_submodule(path)
    except AttributeError:
        names = ", ".join(layout.stages) if layout.stages else "none"
        raise ConfigError(
            f"unknown stage {stage!r}; stages: {names}, or a module path of the model"
        ) from None
    return (path,)


def _canonical_block(model: nn.Module, layout: _Layout, name: str) -> str:
    """``"conv4_x.2"`` -> the path of the stage's third block (forward order); else ``name``."""
    head, _, rest = name.strip().partition(".")
    if not rest.isdigit() or _stage_key(layout, head) is None:
        return name.strip()
    paths = _stage_paths(model, layout, head)
    members = [s.path for s in layout.sites if any(_under(s.path, p) for p in paths)]
    blocks = list(dict.fromkeys(members))
    return blocks[int(rest)] if int(rest) < len(blocks) else name.strip()


def _select(
    model: nn.Module,
    layout: _Layout,
    stages: Iterable[str] | str | None,
    blocks: Iterable[str] | str | None,
) -> list[str]:
    """Names of the selected sites in forward order; everything when both are None."""
    names = [site.name for site in layout.sites]
    if stages is None and blocks is None:
        return names
    chosen: set[str] = set()
    for stage in [stages] if isinstance(stages, str) else stages or ():
        paths = _stage_paths(model, layout, stage)
        members = {s.name for s in layout.sites if any(_under(s.path, p) for p in paths)}
        if not members:
            legal = ", ".join(dict.fromkeys(s.stage for s in layout.sites))
            raise ConfigError(f"stage {stage!r} has no residual blocks; residual stages: {legal}")
        chosen |= members
    for block in [blocks] if isinstance(blocks, str) else blocks or ():
        canonical = _canonical_block(model, layout, block)
        members = {s.name for s in layout.sites if s.name == canonical or s.path == canonical}
        if not members:
            raise ConfigError(f"unknown block {block!r}; {_legal_blocks(layout)}")
        chosen |= members
    return [n for n in names if n in chosen]


def _state_of(site: _Site) -> BlockState:
    alpha, lesioned = wiring(site.block, len(site.seen.sites))[site.index]
    return BlockState(alpha, lesioned)


def _apply(
    model: nn.Module,
    layout: _Layout,
    changes: Mapping[str, BlockState],
    operation: str,
    alpha: float | None,
) -> SurgeryReport:
    before = {site.name: _state_of(site) for site in layout.sites}
    after = {**before, **changes}
    blocks: dict[str, list[_Site]] = {}
    for site in layout.sites:
        blocks.setdefault(site.path, []).append(site)

    def inactive(members: list[_Site], states: Mapping[str, BlockState]) -> int:
        wired = tuple((states[s.name].alpha, states[s.name].lesioned) for s in members)
        return inactive_params(members[0].block, members[0].seen, wired)

    inactive_before = {path: inactive(m, before) for path, m in blocks.items()}
    for members in blocks.values():
        if any(s.name in changes for s in members):
            wired = tuple((after[s.name].alpha, after[s.name].lesioned) for s in members)
            set_wiring(members[0].block, members[0].seen, wired)
    inactive_after = {path: inactive(m, after) for path, m in blocks.items()}
    params = sum(p.numel() for p in model.parameters())
    per_stage = []
    for stage in dict.fromkeys(site.stage for site in layout.sites):
        members = [s for s in layout.sites if s.stage == stage]
        paths = dict.fromkeys(s.path for s in members)
        per_stage.append(
            StageSurgery(
                stage=stage,
                blocks=len(members),
                blocks_rewired=sum(1 for s in members if s.name in changes),
                inactive_params=sum(inactive_after[p] for p in paths),
            )
        )
    total_after = sum(inactive_after.values())
    total_before = sum(inactive_before.values())
    return SurgeryReport(
        operation=operation,
        alpha=alpha,
        blocks_total=len(layout.sites),
        blocks_rewired=tuple(s.name for s in layout.sites if s.name in changes),
        inactive_params=total_after,
        params=params,
        active_params_before=params - total_before,
        active_params_after=params - total_after,
        stages=tuple(per_stage),
    )


# --- surgery on a named architecture, with counts (what ``resablate surgery`` shows) ------------


@dataclass(frozen=True)
class SurgeryCounts:
    """Counts of one architecture before and after residual surgery (1000-class head).

    Attributes:
        arch: Architecture name.
        source: ``"torchvision"``, ``"timm"`` or ``"hf"``.
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
        arch: A model name (:func:`resablate.model_spec.parse_model`): a registered architecture
            with residual blocks, any torchvision or timm model (``timm:convnext_tiny``) or a
            factory (``package.module:callable``) whose blocks surgery finds.
        alpha: Shortcut weight (0.0 drops the residual connections, as :func:`drop_residual`).
        stages: As in :func:`drop_residual`.
        blocks: As in :func:`drop_residual`.
        source: The source of a name without one (``"torchvision"``, ``"timm"``, ...).
        input_size: ``(C, H, W)`` of the counted input, in pixels.

    Raises:
        ConfigError: Unknown architecture, stage or block, or a model without residual
            connections.
    """
    spec = parse_model(arch, source)
    if spec.family is not None and not spec.family.residual:
        raise ConfigError(
            f"{spec.arch} has no residual connections; residual surgery applies to: "
            f"{', '.join(residual_architectures())}"
        )
    model = spec.build_on_meta()
    before = count(model, input_size)
    report = scale_residual(model, alpha, stages=stages, blocks=blocks)
    after = count(model, input_size)
    stage_names = tuple(s.stage for s in report.stages if s.blocks_rewired)
    return SurgeryCounts(
        arch=spec.arch,
        source=spec.source,
        alpha=float(alpha),
        stages=stage_names,
        report=report,
        before=before,
        after=after,
    )
