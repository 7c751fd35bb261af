"""A grid spec: the axes of an ablation study, validated, expanded into cells.

A spec is a small frozen value. Construction validates every axis value against the registries
(architectures, stages, freeze plans, recipes) and the file system (weights files, dataset), so a
bad value fails in one line before anything trains. :meth:`GridSpec.cells` expands the axes into
:class:`~resablate.grid.cell.Cell` values in a stable order.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resablate.data_location import DataLocation
from resablate.errors import ConfigError, DataNotFoundError
from resablate.grid.cell import DEMO_DATA, Cell
from resablate.residual_plan import PLAN_ON, ResidualPlan
from resablate.weights_choice import NAMED_WEIGHTS, WeightsChoice, WeightsKind

if TYPE_CHECKING:
    from resablate.model_spec import ModelSpec

#: Spec keys of earlier releases -> their names now.
_RENAMED = {"arch": "family", "pretrained": "weights"}
#: The axes that hold several values (tuples), in the order cells expand them.
AXES = ("depths", "archs", "residual", "weights", "freeze", "seeds", "baselines")


def _unique(values: Any) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


@functools.lru_cache(maxsize=128)
def _has_residual_blocks(arch: str, source: str) -> bool:
    """Whether surgery finds residual blocks in a model outside the registry (built on the meta
    device once per process)."""
    from resablate.model_spec import parse_model
    from resablate.surgery import residual_blocks

    return bool(residual_blocks(parse_model(arch, source).build_on_meta()))


def takes_residual_axis(model: ModelSpec) -> bool:
    """Whether the residual axis applies to ``model``: a family's declaration, else whether
    surgery finds residual blocks in it (as ``resablate surgery`` does)."""
    if model.family is not None:
        return model.family.residual
    return _has_residual_blocks(model.arch, model.source)


def _baseline_model(name: str, source: str) -> ModelSpec:
    """A baseline: the registered architecture of ``source``, else torchvision's registered one
    (the studies' VGG16 and EfficientNet baselines beside a timm grid), else any model name."""
    from resablate.model_spec import parse_model

    model = parse_model(name, source)
    if model.family is not None or ":" in name or source == "torchvision":
        return model
    try:
        fallback = parse_model(name, "torchvision")
    except ConfigError:
        return model
    return fallback if fallback.family is not None else model


@dataclass(frozen=True)
class GridSpec:
    """The axes of a study; the grid is their product (plus the baselines).

    Defaults reproduce the CIFAKE study: ResNet-18/50/101/152 × residual on/off × pretrained
    (ImageNet) or not, one seed.

    Attributes:
        family: The residual family, ``"resnet"`` or ``"cifar_resnet"``; each depth names the
            architecture ``f"{family}{depth}"`` (a cell's ``arch``, e.g. ``"resnet50"``).
        source: ``"torchvision"`` or ``"timm"``.
        depths: Depths of the family (18, 34, 50, 101, 152 for ResNets; 20, 32, 44, 56 for the
            CIFAR ResNets); may be empty when
            ``archs`` or ``baselines`` name the architectures.
        archs: Models named in full, after the depths': any name
            :func:`resablate.model_spec.parse_model` reads (``"resnet50"``, ``"vgg16"``,
            ``"timm:resnetv2_50"``, ``"hf:microsoft/resnet-50"``, ``"hf:DIR"``,
            ``"mypkg.models:cifar_resnet56"``). Those in which surgery finds residual blocks take
            the residual axis; the others run as built (a note says so), as the baselines do.
        residual: Residual plans: ``"on"``, ``"off"`` or a stage set ``"off:conv4_x,conv5_x"``.
        residual_alpha: Shortcut scales for the plans that alter stages (1 = residual on,
            0 = off); ``None`` = the plans' own meaning (off = alpha 0).
        weights: The pretrained axis: weights specs ``"imagenet"``, ``"demo"``, ``"none"`` or a
            state-dict path (a cell's ``weights``). With ``data="demo"``, ``"imagenet"`` becomes
            ``"demo"`` (the offline stand-in).
        freeze: Freeze plans (``resablate.freezing.FREEZE_PLANS``).
        seeds: Seeds; every other axis is crossed with each.
        baselines: Further models (e.g. ``"vgg16"``, ``"efficientnet_b3"``, any name ``archs``
            takes) crossed with weights × freeze × seeds but not with the residual axis.
        recipe: Recipe name; ``None`` = ``"demo"`` on the demo data, else ``"cifake"``.
        data: Dataset folder, parquet file or Hugging Face datasets folder, optionally with
            column options (``PATH::image=img,label=y``), or ``"demo"`` for the demo data.
        overrides: Recipe field overrides as ``(name, value)`` pairs (e.g. ``("max_steps", 10)``).
        bn: BatchNorm policy of frozen stages, ``"frozen"`` or ``"train"``.
    """

    family: str = "resnet"
    source: str = "torchvision"
    depths: tuple[int, ...] = (18, 50, 101, 152)
    archs: tuple[str, ...] = ()
    residual: tuple[str, ...] = ("on", "off")
    residual_alpha: tuple[float, ...] | None = None
    weights: tuple[str, ...] = ("imagenet", "none")
    freeze: tuple[str, ...] = ("none",)
    seeds: tuple[int, ...] = (0,)
    baselines: tuple[str, ...] = ()
    recipe: str | None = None
    data: str = DEMO_DATA
    overrides: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    bn: str = "frozen"

    def __post_init__(self) -> None:
        values: dict[str, Any] = {"family": self.family.strip().lower()}
        for name in AXES:
            values[name] = _unique(getattr(self, name))
        if self.residual_alpha is not None:
            values["residual_alpha"] = _unique(float(a) for a in self.residual_alpha)
        values["overrides"] = tuple(sorted(dict(self.overrides).items()))
        if not self.data.strip():
            raise DataNotFoundError(
                "the dataset folder is an empty path; name a folder", field="data"
            )
        if self.data != DEMO_DATA:
            values["data"] = DataLocation.parse(self.data).require_exists().text
        if self.recipe is None:
            values["recipe"] = "demo" if values.get("data", self.data) == DEMO_DATA else "cifake"
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._validate()

    # ----------------------------------------------------------------------------- validation

    def _validate(self) -> None:
        from resablate.freezing import FREEZE_PLANS
        from resablate.recipes import get_recipe

        if not (self.depths or self.archs or self.baselines):
            raise ConfigError("the grid names no architecture; give depths or architectures")
        for name in ("residual", "weights", "freeze", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"grid axis {name} is empty; give at least one value")
        if self.residual_alpha is not None:
            if not self.residual_alpha:
                raise ConfigError("grid axis residual_alpha is empty; give at least one value")
            bad = [a for a in self.residual_alpha if not 0.0 <= a <= 1.0]
            if bad:
                raise ConfigError(
                    f"residual alpha {bad[0]:g} is outside [0, 1]", field="residual_alpha"
                )
        for plan in self.freeze:
            if plan not in FREEZE_PLANS:
                raise ConfigError(
                    f"unknown freeze plan {plan!r}; plans: {', '.join(FREEZE_PLANS)}",
                    field="freeze",
                )
        for weights in self.weights:
            path = WeightsChoice.parse(weights).path
            if path is not None and not path.is_file():
                raise ConfigError(
                    f"weights file {weights} does not exist; use "
                    f"{', '.join(NAMED_WEIGHTS)} or a path to a .pth/.pt/.safetensors file",
                    field="weights",
                )
        for depth in self.depths:
            if isinstance(depth, bool) or not isinstance(depth, int):
                raise ConfigError(f"depth {depth!r} is not an integer", field="depths")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ConfigError(f"seed {seed!r} is not a non-negative integer", field="seeds")
        get_recipe(str(self.recipe), **dict(self.overrides))
        self.cells()  # builds every cell: validates architectures, stages and seeds

    # ----------------------------------------------------------------------------- expansion

    def architectures(self) -> tuple[tuple[str, str, bool], ...]:
        """``(arch, source, residual_axis_applies)`` for the depths, the models named in full,
        then the baselines (``arch`` and ``source`` canonical: a cell's model spec)."""
        from resablate.families import get_family

        archs: list[tuple[str, str, bool]] = []
        for depth in self.depths:
            try:
                family = get_family(f"{self.family}{depth}", self.source)
            except ConfigError as exc:
                raise ConfigError(f"depth {depth}: {exc}", field="depths") from None
            archs.append((family.arch, family.source, family.residual))
        for model in self._models():
            archs.append((model.arch, model.source, takes_residual_axis(model)))
        for name in self.baselines:
            try:
                model = _baseline_model(name, self.source)
            except ConfigError as exc:
                raise ConfigError(f"baseline {name}: {exc}", field="baselines") from None
            archs.append((model.arch, model.source, False))
        return tuple(archs)

    def _models(self) -> list[ModelSpec]:
        """The models of ``archs``, parsed."""
        from resablate.model_spec import parse_model

        try:
            return [parse_model(name, self.source) for name in self.archs]
        except ConfigError as exc:
            raise ConfigError(str(exc), field="archs") from None

    def residual_plans(self) -> tuple[ResidualPlan, ...]:
        """The residual axis as plans (each alpha replaces the plans' 0 when given)."""
        plans: list[ResidualPlan] = []
        for text in self.residual:
            try:
                plan = ResidualPlan.parse(text)
            except ConfigError as exc:
                raise ConfigError(str(exc), field="residual") from None
            if plan.is_on or self.residual_alpha is None:
                plans.append(plan)
            else:
                plans.extend(ResidualPlan.parse(text, alpha) for alpha in self.residual_alpha)
        return tuple(plans)

    def weights_for_cells(self) -> tuple[WeightsChoice, ...]:
        """The pretrained axis as the cells see it (``imagenet`` → ``demo`` on demo data)."""
        choices = [WeightsChoice.parse(w) for w in self.weights]
        if self.data == DEMO_DATA:
            demo = WeightsChoice(WeightsKind.DEMO)
            choices = [demo if c.kind == WeightsKind.IMAGENET else c for c in choices]
        return _unique(choices)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the spec changed from what was asked, in sentences for the user."""
        notes = []
        if self.data == DEMO_DATA and any(w.lower() == "imagenet" for w in self.weights):
            notes.append(
                "demo data: the pretrained axis uses the demo weights instead of ImageNet's, so "
                "the whole grid runs offline"
            )
        if self.residual != ("on",):
            plain = [model.name for model in self._models() if not takes_residual_axis(model)]
            if plain:
                notes.append(
                    f"the residual axis skips {', '.join(plain)} (no residual blocks): "
                    "trained as built"
                )
        return tuple(notes)

    def cells(self) -> list[Cell]:
        """Every cell, in a stable order: architecture, residual, weights, freeze, seed.

        Duplicates (e.g. residual ``off`` with alpha 1, which is residual ``on``) appear once.
        """
        overrides = self.overrides
        cells: dict[str, Cell] = {}
        for arch, source, residual_axis in self.architectures():
            plans = self.residual_plans() if residual_axis else (PLAN_ON,)
            for plan in plans:
                for weights in self.weights_for_cells():
                    for plan_name in self.freeze:
                        for seed in self.seeds:
                            cell = Cell(
                                arch=arch,
                                source=source,
                                residual=plan,
                                weights=weights,
                                freeze=plan_name,
                                bn=self.bn,
                                recipe=str(self.recipe),
                                overrides=overrides,
                                seed=seed,
                                data=self.data,
                            )
                            cells.setdefault(cell.cell_id, cell)
        return list(cells.values())

    # ----------------------------------------------------------------------------- (de)serialising

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready plain types (``overrides`` as a dict)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = list(value)
        data["overrides"] = dict(self.overrides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys raise ``ConfigError``.

        Specs written before the rename (``arch`` for the family, ``pretrained`` for the weights
        axis) are read too.
        """
        data = {_RENAMED.get(name, name): value for name, value in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown grid spec key(s): {', '.join(unknown)}; keys: {', '.join(sorted(known))}"
            )
        values = dict(data)
        for name in AXES:
            if name in values:
                values[name] = tuple(values[name])
        if values.get("residual_alpha") is not None:
            values["residual_alpha"] = tuple(values["residual_alpha"])
        values["overrides"] = tuple(dict(values.get("overrides", {})).items())
        return cls(**values)
