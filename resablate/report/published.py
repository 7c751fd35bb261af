"""The two reference studies' published numbers, kept as data files beside this module.

``published/cifake.json`` (CIFAKE Tables 2/6, 3, 4, 5, 7) and ``published/food5k.json`` (Food-5K
Table 1) hold the numbers as the papers print them, each file naming its source. Both studies
report single runs: no seeds, no intervals. A scenario a paper did not report has no entry, so a
comparison shows it as empty, never as zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from resablate.errors import ConfigError

STUDIES = ("cifake", "food5k")


@dataclass(frozen=True)
class PublishedStudy:
    """One study's published tables.

    Attributes:
        study: ``"cifake"`` or ``"food5k"``.
        title: The paper's title as the study names it.
        source: Where the numbers come from (paper and tables).
        data: The dataset and its splits.
        recipe: The training recipe the paper states.
        runs: How the numbers were obtained (single runs, seeds).
        notes: Caveats printed with a comparison (e.g. two tables that disagree).
        lookup_order: Table ids searched, in order, when one value is looked up.
        tables: ``table id -> (caption, rows)``; each row a dict of plain values.
    """

    study: str
    title: str
    source: str
    data: str
    recipe: str
    runs: str
    notes: tuple[str, ...]
    lookup_order: tuple[str, ...]
    tables: dict[str, tuple[str, tuple[dict[str, Any], ...]]]

    def lookup(
        self, metric: str, *, arch: str, residual: str, pretrained: bool, freeze: str = "none"
    ) -> PublishedValue | None:
        """The published value of ``metric`` for one scenario, or ``None`` if not reported.

        Args:
            metric: ``"f1"``, ``"accuracy"``, ``"loss"``, ``"precision"`` or ``"recall"``.
            arch: Architecture name as registered (``"resnet50"``).
            residual: ``"on"`` or ``"off"`` (partial plans were never published).
            pretrained: Whether the cell started from pretrained weights.
            freeze: Freeze plan (Food-5K rows; CIFAKE rows are all ``"none"``).
        """
        for table_id in self.lookup_order:
            caption, rows = self.tables[table_id]
            for row in rows:
                if (
                    row.get("arch") == arch
                    and row.get("residual") in (residual, None)
                    and row.get("pretrained") == pretrained
                    and row.get("freeze", "none") == freeze
                    and row.get(metric) is not None
                ):
                    return PublishedValue(float(row[metric]), self.study, table_id, caption)
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "study": self.study,
            "title": self.title,
            "source": self.source,
            "data": self.data,
            "recipe": self.recipe,
            "runs": self.runs,
            "notes": list(self.notes),
            "tables": {
                key: {"caption": caption, "rows": [dict(r) for r in rows]}
                for key, (caption, rows) in self.tables.items()
            },
        }


@dataclass(frozen=True)
class PublishedValue:
    """One published number and where it was printed."""

    value: float
    study: str
    table: str
    caption: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {"value": self.value, "study": self.study, "table": self.table}


@cache
def published(study: str) -> PublishedStudy:
    """Load one study's published tables.

    Raises:
        ConfigError: An unknown study name (the legal ones are listed).
    """
    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; published studies: {', '.join(STUDIES)}")
    text = resources.files("resablate.report").joinpath("published", f"{study}.json").read_text()
    raw = json.loads(text)
    tables = {t["id"]: (t["caption"], tuple(t["rows"])) for t in raw["tables"]}
    return PublishedStudy(
        study=raw["study"],
        title=raw["title"],
        source=raw["source"],
        data=raw["data"],
        recipe=raw["recipe"],
        runs=raw["runs"],
        notes=tuple(raw["notes"]),
        lookup_order=tuple(raw["lookup_order"]),
        tables=tables,
    )
