"""A cell: one fully specified training run of an ablation study.

A cell is (architecture, residual plan, weights, freeze plan, recipe, seed, dataset). It is a small
frozen value; its id is a hash of its canonical form, so the same study asked for twice maps to the
same cells and a rerun finds its finished work. :mod:`resablate.grid.job` trains cells.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from resablate.choices import BN_POLICIES
from resablate.errors import ConfigError
from resablate.residual_plan import RESIDUAL_ON, ResidualPlan

CELL_ID_LENGTH = 12
#: The largest seed: the store keeps seeds as SQLite integers (signed 64-bit).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Cell:
    """One run of a study, in canonical form (construction validates and normalises).

    Attributes:
        arch: Registered architecture, e.g. ``"resnet50"`` (see ``resablate.list_architectures``).
        source: Model source, ``"torchvision"`` or ``"timm"``.
        residual: ``"on"``, ``"off"`` (every stage) or ``"off:layer3,layer4"``.
        residual_alpha: Scale of the shortcut in the altered stages: 0 removes it (the studies'
            ablation), 1 is the original network (then ``residual`` is normalised to ``"on"``).
        weights: ``"none"``, ``"imagenet"``, ``"demo"`` or a path to a state-dict file.
        freeze: Freeze plan: ``none``, ``conv1``, ``conv1-2``, ``conv1-3``, ``conv1-4``, ``all``.
        bn: BatchNorm policy of frozen stages: ``"frozen"`` (running stats kept) or ``"train"``.
        recipe: Recipe name (``resablate.recipes``).
        overrides: Recipe field overrides as sorted ``(name, value)`` pairs.
        seed: The seed all of the cell's randomness derives from.
        data: Dataset path, or ``"demo"`` for the embedded demo data.
    """

    arch: str
    source: str = "torchvision"
    residual: str = RESIDUAL_ON
    residual_alpha: float = 0.0
    weights: str = "none"
    freeze: str = "none"
    bn: str = "frozen"
    recipe: str = "cifake"
    overrides: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    seed: int = 0
    data: str = "demo"

    def __post_init__(self) -> None:
        plan = ResidualPlan.parse(self.residual, self.residual_alpha)
        object.__setattr__(self, "residual", plan.text)
        object.__setattr__(self, "residual_alpha", plan.alpha)
        object.__setattr__(self, "overrides", tuple(sorted(dict(self.overrides).items())))
        weights = self.weights if self.weights else "none"
        if weights.lower() in ("none", "imagenet", "demo"):
            weights = weights.lower()
        else:
            weights = str(Path(weights).expanduser().resolve())
        object.__setattr__(self, "weights", weights)
        data = self.data if self.data == "demo" else str(Path(self.data).expanduser().resolve())
        object.__setattr__(self, "data", data)
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

    @property
    def residual_plan(self) -> ResidualPlan:
        """The residual plan (``residual`` with its ``residual_alpha``)."""
        return ResidualPlan.parse(self.residual, self.residual_alpha)

    @property
    def label(self) -> str:
        """A short human label, e.g. ``resnet50 · residual off · weights demo · seed 0``."""
        parts = [self.arch if self.source == "torchvision" else f"{self.arch} ({self.source})"]
        if not self.residual_plan.is_on:
            parts.append(self.residual_plan.suffix)
        parts.append(f"weights {Path(self.weights).name if '/' in self.weights else self.weights}")
        if self.freeze != "none":
            parts.append(f"freeze {self.freeze}")
        parts.append(f"seed {self.seed}")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The canonical config as plain JSON-ready types (``overrides`` as a dict)."""
        data = asdict(self)
        data["overrides"] = dict(self.overrides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        """Rebuild a cell from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown cell field(s): {', '.join(unknown)}")
        values = dict(data)
        values["overrides"] = tuple(dict(values.get("overrides", {})).items())
        return cls(**values)
