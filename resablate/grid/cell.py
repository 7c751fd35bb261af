"""A cell: one fully specified training run of an ablation study.

A cell is (architecture, residual plan, weights, freeze plan, recipe, seed, dataset). It is a small
frozen value with typed parts (a :class:`~resablate.residual_plan.ResidualPlan`, a
:class:`~resablate.weights_choice.WeightsChoice`), parsed once where it enters: a grid spec, the
command line, a store row or ``cell.json`` (:meth:`Cell.from_dict`); everything below takes the
cell. Its id is a hash of its canonical form (:meth:`Cell.to_dict`), so the same study asked for
twice maps to the same cells and a rerun finds its finished work. :mod:`resablate.grid.job` trains
cells.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

from resablate.choices import BN_POLICIES
from resablate.data_location import DataLocation
from resablate.errors import ConfigError
from resablate.residual_plan import PLAN_FIELDS, PLAN_ON, RESIDUAL_ON, ResidualPlan
from resablate.weights_choice import NO_WEIGHTS, WeightsChoice

if TYPE_CHECKING:
    from resablate.recipes import Recipe

CELL_ID_LENGTH = 12
DEMO_DATA = "demo"
#: The largest seed: the store keeps seeds as SQLite integers (signed 64-bit).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Cell:
    """One run of a study, in canonical form (construction validates and normalises).

    Attributes:
        arch: The model's canonical name (:mod:`resablate.model_spec`): a registered
            architecture (``"resnet50"``), a timm or torchvision model name, a Hugging Face hub
            id or absolute directory, or a factory ``"package.module:callable"``.
        source: Model source: ``"torchvision"``, ``"timm"``, ``"hf"`` or ``"factory"``;
            ``parse_model(arch, source)`` is the cell's model.
        residual: The residual plan: which stages' shortcuts are altered, and their scale
            (0 removes them, the studies' ablation).
        weights: The initial weights: none (random init), ImageNet's, the demo weights or a file.
        freeze: Freeze plan: ``none``, ``conv1``, ``conv1-2``, ``conv1-3``, ``conv1-4``, ``all``.
        bn: BatchNorm policy of frozen stages: ``"frozen"`` (running stats kept) or ``"train"``.
        recipe: Recipe name (``resablate.recipes``).
        overrides: Recipe field overrides as sorted ``(name, value)`` pairs.
        seed: The seed all of the cell's randomness derives from.
        data: Dataset location (its path made absolute, column options sorted: see
            :mod:`resablate.data_location`), or ``"demo"`` for the embedded demo data.
    """

    arch: str
    source: str = "torchvision"
    residual: ResidualPlan = PLAN_ON
    weights: WeightsChoice = NO_WEIGHTS
    freeze: str = "none"
    bn: str = "frozen"
    recipe: str = "cifake"
    overrides: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    seed: int = 0
    data: str = DEMO_DATA

    def __post_init__(self) -> None:
        if not isinstance(self.residual, ResidualPlan):
            raise ConfigError(
                f"residual {self.residual!r} is not a ResidualPlan (ResidualPlan.parse reads text)"
            )
        if not isinstance(self.weights, WeightsChoice):
            raise ConfigError(
                f"weights {self.weights!r} is not a WeightsChoice (WeightsChoice.parse reads text)"
            )
        object.__setattr__(self, "overrides", tuple(sorted(dict(self.overrides).items())))
        if self.data != DEMO_DATA:
            object.__setattr__(self, "data", DataLocation.parse(self.data).text)
        if self.bn not in BN_POLICIES:
            legal = " or ".join(map(repr, BN_POLICIES))
            raise ConfigError(f"BatchNorm policy {self.bn!r} is not valid; use {legal}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} must be a non-negative integer", field="seed")
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed {self.seed} is larger than {MAX_SEED}", field="seed")

    @property
    def cell_id(self) -> str:
        """Hash of the canonical config (hex, 12 characters)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:CELL_ID_LENGTH]

    @cached_property
    def effective_recipe(self) -> Recipe:
        """The recipe the cell trains with: ``recipe`` with its ``overrides`` (computed once).

        Raises:
            ConfigError: Unknown recipe, or an override that is not a valid recipe field.
        """
        from resablate.recipes import get_recipe

        return get_recipe(self.recipe, **dict(self.overrides))

    @property
    def label(self) -> str:
        """A short human label, e.g. ``resnet50 · residual off · weights demo · seed 0``."""
        parts = [self.arch if self.source == "torchvision" else f"{self.arch} ({self.source})"]
        if not self.residual.is_on:
            parts.append(self.residual.suffix)
        parts.append(f"weights {self.weights.label}")
        if self.freeze != "none":
            parts.append(f"freeze {self.freeze}")
        parts.append(f"seed {self.seed}")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The canonical config as plain JSON-ready types, the form a cell's id hashes.

        The plan is written as its two keys (``residual`` text, ``residual_alpha``), the weights
        as their text and ``overrides`` as a dict; the keys and their order are those of every
        release, so the ids of stored cells never change.
        """
        return {
            "arch": self.arch,
            "source": self.source,
            **self.residual.to_dict(),
            "weights": self.weights.text,
            "freeze": self.freeze,
            "bn": self.bn,
            "recipe": self.recipe,
            "overrides": dict(self.overrides),
            "seed": self.seed,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """Parse a cell from :meth:`to_dict`'s form (texts for the plan and the weights; missing
        keys take their defaults, a missing ``residual_alpha`` is 0).

        Raises:
            ConfigError: An unknown key, or an invalid value (the message names the legal ones).
        """
        known = {f.name for f in fields(cls)} | set(PLAN_FIELDS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown cell field(s): {', '.join(unknown)}")
        values = dict(data)
        values["residual"] = ResidualPlan.parse(
            values.get("residual", RESIDUAL_ON), values.pop("residual_alpha", 0.0)
        )
        values["weights"] = WeightsChoice.parse(values.get("weights", NO_WEIGHTS.text))
        values["overrides"] = tuple(dict(values.get("overrides", {})).items())
        return cls(**values)
