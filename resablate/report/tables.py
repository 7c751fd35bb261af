"""The papers' tables regenerated from a grid's cells, with seeds and significance.

Three tables, each returned as data (frozen dataclasses whose ``records()`` are plain dicts):

* the **ablation table** (CIFAKE's shape): rows the architecture (by depth), columns the
  residual × weights scenarios, values the chosen metric;
* the **freeze table** (Food-5K's shape): rows the freeze plan, columns the architecture, values
  accuracy;
* the **model table**: parameters, active parameters, GFLOPs, test loss and metrics, training time
  and throughput per architecture / scenario.

Seeds: the cells that differ only in their seed form one *group*. A group's metric is the mean over
its finished seeds with a Student-t 95 % interval (:func:`resablate.report.stats.t_interval`); one
seed gives no interval, and the table says so. Each ablated group is compared with its reference
group (the same architecture and weights with the residual connections on; for the freeze table
the same architecture fine-tuned without freezing) by McNemar's exact test on the per-sample
correctness of the same test images, pooled over seeds by summing the discordant counts of the
seeds both groups finished (:func:`resablate.report.stats.paired_mcnemar`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from resablate.choices import FREEZE_PLANS, METRICS_SHOWN, CellStatus
from resablate.grid.table import (
    TableColumn,
    arch_label,
    pivot,
    results_pivot,
    row_labels,
)
from resablate.report.stats import (
    McNemarResult,
    MeanInterval,
    SeedPairedTest,
    holm,
    paired_mcnemar,
    seed_paired_t,
    t_interval,
)
from resablate.residual_plan import PLAN_FIELDS, PLAN_ON
from resablate.weights_choice import WeightsKind

if TYPE_CHECKING:
    from rich.console import RenderableType

    from resablate.grid.results import ResultRow
    from resablate.grid.store import CellRow, PredictionRow
    from resablate.report.published import PublishedStudy, PublishedValue

METRICS = METRICS_SHOWN
EMPTY = "—"
# Cell fields that the tables lay out explicitly; any other field that varies between the cells of
# a table is appended to the row (or column) label so that different groups never share a slot.
_LAID_OUT = frozenset({"arch", *PLAN_FIELDS, "weights", "freeze", "seed"})

#: Each finished cell's per-sample test predictions, by cell id.
Predictions = Mapping[str, Sequence["PredictionRow"]]


@dataclass(frozen=True)
class Group:
    """The final results of one configuration's cells, which differ only in their seed."""

    key: str
    rows: tuple[ResultRow, ...]

    @property
    def first(self) -> ResultRow:
        """The cell with the lowest seed (any cell describes the group's configuration)."""
        return self.rows[0]

    @property
    def done(self) -> tuple[ResultRow, ...]:
        """The finished (``done``) cells, by seed."""
        return tuple(r for r in self.rows if r.done)

    def interval(self, metric: str) -> MeanInterval | None:
        """Mean and t-interval of ``metric`` over the finished seeds (``None`` if none)."""
        values = [v for r in self.done if (v := r.metric(metric)) is not None]
        return t_interval(values) if values else None

    def status_note(self) -> str:
        """``""`` when every seed finished, else e.g. ``"1 of 3 seeds missing (pending)"``."""
        missing = [r.cell_row for r in self.rows if not r.done]
        if not missing:
            return ""
        statuses = ", ".join(sorted({r.status for r in missing}))
        total = len(self.rows)
        if len(missing) == total:
            return statuses
        return f"{len(missing)} of {total} seeds missing ({statuses})"


def group_key(row: ResultRow) -> str:
    """The canonical config of a cell without its seed, as a sortable string."""
    config = row.cell.to_dict()
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)


def _seed(row: ResultRow) -> int:
    return row.cell.seed


def _sorted_group(key: str, rows: Iterable[ResultRow]) -> Group:
    return Group(key, tuple(sorted(rows, key=_seed)))


def group_cells(rows: Sequence[ResultRow]) -> list[Group]:
    """Group cells that differ only in their seed (groups in first-seen order, cells by seed):
    the pivot's rows by configuration."""
    layout = pivot(rows, group_key, lambda _: None)
    return [_sorted_group(key, layout.by_row[key]) for key in layout.rows]


def _extras(rows: Sequence[ResultRow]) -> list[str]:
    """Config fields (other than the laid-out ones) whose value differs between ``rows``."""
    configs = [r.cell.to_dict() for r in rows]
    names = sorted({k for config in configs for k in config} - _LAID_OUT)
    return [n for n in names if len({json.dumps(c.get(n), sort_keys=True) for c in configs}) > 1]


def _extra_label(row: CellRow, extras: Sequence[str]) -> str:
    parts = []
    for name in extras:
        value = row.cell.to_dict().get(name)
        text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
        parts.append(f"{name} {text}")
    return " · ".join(parts)


def row_label(row: CellRow, extras: Sequence[str] = ()) -> str:
    """The grid table's model label (``"ResNet-50"``) plus any varying extra fields."""
    extra = _extra_label(row, extras)
    return f"{arch_label(row)} · {extra}" if extra else arch_label(row)


def paired_test(group: Group, reference: Group, predictions: Predictions) -> McNemarResult | None:
    """McNemar's exact test of ``group`` against ``reference``, pooled over common seeds.

    Only seeds finished in both groups whose predictions cover the same test images (same
    indices and labels, in order) enter the test; ``None`` when no seed qualifies.
    """
    ref_by_seed = {r.cell.seed: r.cell_row for r in reference.done}
    pairs = []
    for row in (r.cell_row for r in group.done):
        ref = ref_by_seed.get(row.cell.seed)
        if ref is None:
            continue
        mine, theirs = predictions.get(row.cell_id, ()), predictions.get(ref.cell_id, ())
        if not mine or [(p.index, p.label) for p in mine] != [(p.index, p.label) for p in theirs]:
            continue
        labels = [p.label for p in mine]
        pairs.append((row.cell.seed, labels, [p.pred for p in theirs], [p.pred for p in mine]))
    return paired_mcnemar(pairs) if pairs else None


def seed_test(group: Group, reference: Group, metric: str) -> SeedPairedTest | None:
    """The paired t-test of ``metric`` over the seeds both groups finished (uncorrected)."""
    ref_by_seed = {r.cell.seed: r.metric(metric) for r in reference.done}
    differences = [
        (r.cell.seed, mine - theirs)
        for r in group.done
        if (mine := r.metric(metric)) is not None
        and (theirs := ref_by_seed.get(r.cell.seed)) is not None
    ]
    return seed_paired_t(differences)


def holm_corrected(entries: Sequence[Entry]) -> tuple[Entry, ...]:
    """``entries`` with their seed-level tests Holm-corrected together (one family per table)."""
    tested = [(i, e.seed_test) for i, e in enumerate(entries) if e.seed_test is not None]
    adjusted = holm([test.p_value for _, test in tested])
    fixed = list(entries)
    for (i, test), p_holm in zip(tested, adjusted, strict=True):
        fixed[i] = replace(entries[i], seed_test=replace(test, p_holm=p_holm))
    return tuple(fixed)


def format_p(p_value: float) -> str:
    """``"p = 0.031"``, ``"p < 0.001"``."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


@dataclass(frozen=True)
class Entry:
    """One slot of a pivot table: a group's value, its paired test, the published number.

    Attributes:
        row: Row label.
        column: Column label.
        value: Mean and interval over finished seeds; ``None`` when no seed finished.
        test: The paired test against the reference (``None`` for a reference or no pairs).
        seed_test: The seed-level paired t-test of the metric against the reference, Holm-
            corrected over the table (``None`` for a reference or fewer than two paired seeds).
        reference: Label of the reference the test compares with (``None`` for a reference).
        published: The published number for this slot (``None`` when not compared/reported).
        note: Missing seeds and their status, e.g. ``"pending"``; ``""`` when complete.
        cell_ids: The group's cell ids, by seed.
    """

    row: str
    column: str
    value: MeanInterval | None
    test: McNemarResult | None
    seed_test: SeedPairedTest | None
    reference: str | None
    published: PublishedValue | None
    note: str
    cell_ids: tuple[str, ...]

    def text(self, digits: int = 3) -> str:
        """The measured value as shown in a table (with interval, n, p-value and notes)."""
        lines = [self.value.format(digits) if self.value is not None else EMPTY]
        if self.test is not None:
            lines.append(f"{format_p(self.test.p_value)} vs {self.reference}")
        if self.seed_test is not None and self.seed_test.p_holm is not None:
            holm_p = format_p(self.seed_test.p_holm).replace("p", "Holm p", 1)
            lines.append(f"seeds: Δ {self.seed_test.mean_difference:+.{digits}f}, {holm_p}")
        if self.note:
            lines.append(f"({self.note})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready record."""
        value = self.value.to_dict() if self.value is not None else None
        return {
            "row": self.row,
            "column": self.column,
            "mean": None if value is None else value["mean"],
            "half_width": None if value is None else value["half_width"],
            "n": 0 if value is None else value["n"],
            "values": [] if value is None else value["values"],
            "p_value": None if self.test is None else self.test.p_value,
            "b": None if self.test is None else self.test.b,
            "c": None if self.test is None else self.test.c,
            "reference": self.reference,
            "published": None if self.published is None else self.published.value,
            "published_table": None if self.published is None else self.published.table,
            "note": self.note,
            "cell_ids": list(self.cell_ids),
            "seed_difference": None if self.seed_test is None else self.seed_test.mean_difference,
            "seed_p_value": None if self.seed_test is None else self.seed_test.p_value,
            "seed_p_holm": None if self.seed_test is None else self.seed_test.p_holm,
        }


class Tabular(Protocol):
    """What the renderers need from a table: a title, a header, display rows, notes, records."""

    @property
    def title(self) -> str: ...

    @property
    def notes(self) -> tuple[str, ...]: ...

    def header(self) -> list[str]: ...

    def display_rows(self) -> list[list[str]]: ...

    def records(self) -> list[dict[str, Any]]: ...


def rich_table(table: Tabular) -> RenderableType:
    """A rich renderable of any table: the grid of cells, then its notes (dimmed)."""
    from rich.console import Group as RichGroup
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=table.title, show_lines=True, title_justify="left")
    for index, name in enumerate(table.header()):
        grid.add_column(name, justify="left" if index == 0 else "right")
    for row in table.display_rows():
        grid.add_row(*row)
    return RichGroup(grid, *(Text(f"• {n}", style="dim") for n in table.notes))


@dataclass(frozen=True)
class PivotTable:
    """A table of groups laid out by two cell attributes (the ablation and freeze tables).

    Attributes:
        name: ``"ablation"`` or ``"freeze"``.
        title: Caption.
        metric: The metric shown.
        row_header: Header of the row-label column.
        rows: Row labels, in order.
        columns: Column labels, in order.
        entries: The filled slots (a slot with no group is absent: shown as empty).
        compare: The study whose published numbers are shown beside the measured ones.
        notes: Statistics used, pooling rule, sources.
        depths: Depth of each row (ablation table; ``None`` for non-ResNets).
    """

    name: str
    title: str
    metric: str
    row_header: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    entries: tuple[Entry, ...]
    compare: str | None = None
    notes: tuple[str, ...] = ()
    depths: tuple[int | None, ...] = ()

    def entry(self, row: str, column: str) -> Entry | None:
        """The slot at (row, column), ``None`` if the grid had no cell there."""
        for e in self.entries:
            if e.row == row and e.column == column:
                return e
        return None

    def header(self) -> list[str]:
        """Row header, then each column (followed by its published column when comparing)."""
        names = [self.row_header]
        for column in self.columns:
            names.append(column)
            if self.compare:
                names.append(f"{self.compare} published")
        return names

    def display_rows(self) -> list[list[str]]:
        """The table as text, an empty slot as ``—`` (never zero)."""
        lines = []
        for row in self.rows:
            line = [row]
            for column in self.columns:
                e = self.entry(row, column)
                line.append(EMPTY + "\n(not in grid)" if e is None else e.text())
                if self.compare:
                    pub = None if e is None else e.published
                    line.append(EMPTY if pub is None else f"{pub.value:.4g} ({pub.table})")
            lines.append(line)
        return lines

    def records(self) -> list[dict[str, Any]]:
        """One record per filled slot."""
        return [{"table": self.name, "metric": self.metric, **e.to_dict()} for e in self.entries]

    def __rich__(self) -> RenderableType:
        return rich_table(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "name": self.name,
            "title": self.title,
            "metric": self.metric,
            "rows": list(self.rows),
            "columns": list(self.columns),
            "entries": [e.to_dict() for e in self.entries],
            "compare": self.compare,
            "notes": list(self.notes),
        }


def _stat_notes(metric: str) -> tuple[str, ...]:
    return (
        f"{metric}: mean over seeds ± half-width of the 95 % Student-t interval "
        "(t_{0.975, n-1} · s / √n); n = number of finished seeds; n = 1 gives no interval.",
        "p: McNemar's exact test (two-sided binomial on the discordant pairs) against the "
        "reference on the same test images; discordant counts b, c summed over the seeds both "
        "cells finished (pooled), one test on the totals.",
        f"seeds: Δ = mean over the seeds both cells finished of {metric} minus the "
        "reference's; Holm p: Student's paired t-test of those differences (n − 1 degrees of "
        "freedom, two or more seeds), Holm-corrected over the table's tests.",
    )


def _published_notes(study: PublishedStudy | None) -> tuple[str, ...]:
    if study is None:
        return ()
    return (
        f"published: {study.source}; {study.runs}.",
        *study.notes,
    )


def _entry(
    row: str,
    column: str,
    group: Group,
    metric: str,
    reference: tuple[str, Group] | None,
    published: PublishedValue | None,
    predictions: Predictions,
) -> Entry:
    return Entry(
        row=row,
        column=column,
        value=group.interval(metric),
        test=None if reference is None else paired_test(group, reference[1], predictions),
        seed_test=None if reference is None else seed_test(group, reference[1], metric),
        reference=None if reference is None else reference[0],
        published=published,
        note=group.status_note(),
        cell_ids=tuple(r.cell_row.cell_id for r in group.rows),
    )


def _lookup(study: PublishedStudy | None, metric: str, row: CellRow) -> PublishedValue | None:
    plan = row.cell.residual
    # The studies kept or removed every shortcut: a partial plan or a scaled one was not reported.
    if study is None or not (plan.is_on or (plan.every_stage and plan.alpha == 0.0)):
        return None
    return study.lookup(
        metric,
        arch=row.cell.arch,
        residual=plan.text,
        pretrained=row.cell.weights.kind != WeightsKind.NONE,
        freeze=row.cell.freeze,
    )


def ablation_table(
    cells: Sequence[ResultRow],
    predictions: Predictions,
    *,
    metric: str = "f1",
    published: PublishedStudy | None = None,
) -> PivotTable | None:
    """CIFAKE's table: rows architecture (by depth), columns residual × weights, values ``metric``.

    The layout (rows, columns, which cells fill a slot) is the grid's own
    :func:`resablate.grid.table.results_pivot`; this adds the interval over seeds, the paired test
    of each ablated slot against the slot with the residual connections on and the same weights
    in the same row, and the published numbers.

    Args:
        cells: The cells' final (``test``) rows; those with a freeze plan other than ``none``
            are left out.
        predictions: Per-sample test predictions by cell id (for the paired tests).
        metric: One of :data:`METRICS`.
        published: The study whose numbers are placed beside the measured ones.

    Returns:
        The table, or ``None`` when no cell qualifies.
    """
    chosen = [c for c in cells if c.cell.freeze == "none"]
    if not chosen:
        return None
    layout = results_pivot(chosen)
    labels = row_labels(layout)
    entries = []
    for key, label in zip(layout.rows, labels, strict=True):
        slots = {
            column: _sorted_group(column.label, layout.slot(key, column))
            for column in layout.columns
            if layout.slot(key, column)
        }
        for column, group in slots.items():
            ref_column = TableColumn(PLAN_ON, column.weights)
            ref = slots.get(ref_column) if not column.residual.is_on else None
            entries.append(
                _entry(
                    label,
                    column.label,
                    group,
                    metric,
                    None if ref is None else (ref_column.label, ref),
                    _lookup(published, metric, group.first.cell_row),
                    predictions,
                )
            )
    return PivotTable(
        name="ablation",
        title=f"Ablation: {metric} by depth × residual × pretrained (CIFAKE Table 7 shape)",
        metric=metric,
        row_header="model",
        rows=labels,
        columns=tuple(c.label for c in layout.columns),
        entries=holm_corrected(entries),
        compare=None if published is None else published.study,
        notes=_stat_notes(metric) + _published_notes(published),
        depths=tuple(layout.by_row[key][0].cell_row.depth for key in layout.rows),
    )


def _plan_order(plan: str) -> tuple[int, str]:
    return (FREEZE_PLANS.index(plan) if plan in FREEZE_PLANS else len(FREEZE_PLANS), plan)


def freeze_table(
    cells: Sequence[ResultRow],
    predictions: Predictions,
    *,
    published: PublishedStudy | None = None,
) -> PivotTable | None:
    """Food-5K's table: rows freeze plan, columns architecture, values accuracy.

    Only cells with the residual connections on take part; the table exists when at least one
    of them has a freeze plan other than ``none``. Each plan is tested against fine-tuning
    everything (plan ``none``) of the same architecture and weights.

    Returns:
        The table, or ``None`` when the grid froze nothing.
    """
    chosen = [c for c in cells if c.cell.residual.is_on]
    if not any(c.cell.freeze != "none" for c in chosen):
        return None
    extras = sorted({*_extras(chosen), *(["weights"] if _varies(chosen, "weights") else [])})
    layout = pivot(
        chosen,
        lambda r: r.cell.freeze,
        lambda r: (r.cell_row.depth or 0, row_label(r.cell_row, extras)),
        row_order=_plan_order,
        column_order=lambda column: column,
    )
    entries = []
    for (plan, column), rows in layout.slots.items():
        ref = layout.slot("none", column) if plan != "none" else ()
        entries.append(
            _entry(
                plan,
                column[1],
                _sorted_group(column[1], rows),
                "accuracy",
                ("freeze none", _sorted_group(column[1], ref)) if ref else None,
                _lookup(published, "accuracy", rows[0].cell_row),
                predictions,
            )
        )
    return PivotTable(
        name="freeze",
        title="Freezing: accuracy by freeze plan × architecture (Food-5K Table 1 shape)",
        metric="accuracy",
        row_header="freeze plan",
        rows=layout.rows,
        columns=tuple(label for _, label in layout.columns),
        entries=holm_corrected(entries),
        compare=None if published is None else published.study,
        notes=_stat_notes("accuracy") + _published_notes(published),
    )


def _varies(rows: Sequence[ResultRow], name: str) -> bool:
    return len({r.cell.to_dict().get(name) for r in rows}) > 1


def _mean(values: Iterable[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass(frozen=True)
class ModelRecord:
    """One configuration (a group of seeds) in the model table.

    Attributes:
        model: Architecture label.
        scenario: Residual plan and weights label.
        freeze: Freeze plan.
        seeds: Finished seeds / all seeds, e.g. ``"3/3"``.
        params: Total parameters; ``active_params`` those the forward pass uses.
        gflops: fvcore FLOPs (one multiply-add = one flop) at batch 1, in units of 10⁹.
        metrics: Test ``loss``, ``f1``, ``precision``, ``recall``, ``accuracy`` over seeds.
        train_seconds: Mean wall-clock training time per seed, seconds.
        images_per_second: Mean training throughput, images per second.
        ran_on: What the finished seeds ran with (device, GPU count, autocast dtype, memory
            format, compile, TF32, cudnn.benchmark), e.g. ``"cpu · fp32"``; distinct settings
            joined by ``"; "``; ``None`` when nothing finished or it was not recorded.
        weights_used: The initial weights the finished seeds really loaded: the weights spec
            with the first 12 hex digits of the file's SHA-256 as recorded in the result's
            environment (``"demo · sha256 1a2b3c4d5e6f"``), ``"none · random init"``, or
            ``"… · not recorded"``; distinct ones joined by ``"; "``; ``None`` when nothing
            finished.
        published: Published numbers for this configuration, by metric (and ``params_m``, the
            published parameter count in millions).
        cell_ids: The group's cells, by seed.
    """

    model: str
    scenario: str
    freeze: str
    seeds: str
    params: int | None
    active_params: int | None
    gflops: float | None
    metrics: Mapping[str, MeanInterval | None]
    train_seconds: float | None
    images_per_second: float | None
    ran_on: str | None = None
    weights_used: str | None = None
    published: Mapping[str, PublishedValue] = field(default_factory=dict)
    cell_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready record (metric means and half-widths as ``f1``, ``f1_half_width``)."""
        record: dict[str, Any] = {
            "model": self.model,
            "scenario": self.scenario,
            "freeze": self.freeze,
            "seeds": self.seeds,
            "params": self.params,
            "active_params": self.active_params,
            "gflops": self.gflops,
        }
        for name in METRICS:
            value = self.metrics.get(name)
            record[name] = None if value is None else value.mean
            record[f"{name}_half_width"] = None if value is None else value.half_width
        record["train_seconds"] = self.train_seconds
        record["images_per_second"] = self.images_per_second
        record["ran_on"] = self.ran_on
        record["weights_used"] = self.weights_used
        for name, pub in self.published.items():
            record[f"published_{name}"] = pub.value
        record["cell_ids"] = list(self.cell_ids)
        return record


def _fmt_int(value: int | None) -> str:
    return EMPTY if value is None else f"{value:,}"


def _fmt_float(value: float | None, spec: str) -> str:
    return EMPTY if value is None else format(value, spec)


@dataclass(frozen=True)
class ModelTable:
    """Counts, metrics and speed per configuration (CIFAKE Tables 2/3/4/6 shape)."""

    title: str
    rows: tuple[ModelRecord, ...]
    compare: str | None = None
    notes: tuple[str, ...] = ()

    def header(self) -> list[str]:
        """Column names as displayed."""
        names = ["model", "scenario", "freeze", "seeds", "params", "active params", "GFLOPs"]
        names += ["loss", "F1", "precision", "recall", "accuracy", "train s", "images/s"]
        names += ["ran on", "weights used"]
        if self.compare:
            names.append(f"{self.compare} published")
        return names

    def display_rows(self) -> list[list[str]]:
        """The table as text; a metric as ``mean ± half-width`` when there are several seeds."""
        lines = []
        for rec in self.rows:

            def metric_text(name: str, rec: ModelRecord = rec) -> str:
                value = rec.metrics.get(name)
                if value is None:
                    return EMPTY
                if value.half_width is None:
                    return f"{value.mean:.4f}"
                return f"{value.mean:.4f} ± {value.half_width:.4f}"

            line = [rec.model, rec.scenario, rec.freeze, rec.seeds]
            line += [_fmt_int(rec.params), _fmt_int(rec.active_params)]
            line.append(_fmt_float(rec.gflops, ".3f"))
            line += [metric_text(n) for n in ("loss", "f1", "precision", "recall", "accuracy")]
            line += [_fmt_float(rec.train_seconds, ".1f"), _fmt_float(rec.images_per_second, ".0f")]
            line += [rec.ran_on or EMPTY, rec.weights_used or EMPTY]
            if self.compare:
                pub = ", ".join(f"{k} {v.value:.4g} ({v.table})" for k, v in rec.published.items())
                line.append(pub or EMPTY)
            lines.append(line)
        return lines

    def records(self) -> list[dict[str, Any]]:
        """One flat record per configuration."""
        return [{"table": "models", **r.to_dict()} for r in self.rows]

    def __rich__(self) -> RenderableType:
        # Sixteen columns do not fit a terminal: show size/cost/speed and metrics as two tables,
        # each keyed by the configuration in one column.
        from rich.console import Group as RichGroup
        from rich.table import Table
        from rich.text import Text

        header, rows = self.header(), self.display_rows()
        # seeds, params, active params, GFLOPs, train s, images/s, ran on, weights used
        cost = [3, 4, 5, 6, 12, 13, 14, 15]
        metrics = list(range(7, 12)) + ([16] if self.compare else [])
        parts: list[Any] = []
        for title, picked in (("size, cost, speed", cost), ("test metrics", metrics)):
            grid = Table(title=f"Models: {title}", show_lines=True, title_justify="left")
            grid.add_column("configuration")
            for k in picked:
                grid.add_column(header[k], justify="right")
            for row in rows:
                grid.add_row(f"{row[0]}\n{row[1]}\nfreeze {row[2]}", *(row[k] for k in picked))
            parts.append(grid)
        return RichGroup(*parts, *(Text(f"• {n}", style="dim") for n in self.notes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "title": self.title,
            "records": [r.to_dict() for r in self.rows],
            "compare": self.compare,
            "notes": list(self.notes),
        }


def _weights_used(rows: Sequence[ResultRow]) -> str | None:
    """What the finished ``rows`` loaded, from the weights hash each result recorded."""
    used = []
    for row in rows:
        sha = row.weights_sha256
        if sha is not None:
            used.append(f"{row.cell.weights.text} · sha256 {sha[:12]}")
        elif row.cell.weights.kind == WeightsKind.NONE:
            used.append("none · random init")
        else:
            used.append(f"{row.cell.weights.text} · not recorded")
    return "; ".join(dict.fromkeys(used)) or None


def _ran_on(rows: Sequence[ResultRow]) -> str | None:
    """The distinct execution summaries of ``rows`` (see :meth:`Execution.summary`)."""
    from resablate.engine.execution import Execution

    found = [r.cell_row.environment.get("execution") for r in rows]
    summaries = dict.fromkeys(Execution(**e).summary() for e in found if e)
    return "; ".join(summaries) or None


def model_table(
    cells: Sequence[ResultRow], *, published: PublishedStudy | None = None
) -> ModelTable:
    """Parameters, active parameters, GFLOPs, test metrics, time and throughput per group.

    Groups (cells differing only in seed) appear in grid order.
    """
    extras = _extras(cells)
    records = []
    for group in group_cells(cells):
        first, done = group.first.cell_row, [r.cell_row for r in group.done]
        found = {name: _lookup(published, name, first) for name in (*METRICS, "params_m")}
        pubs = {name: value for name, value in found.items() if value is not None}
        flops = _mean(r.cell_row.flops for r in group.rows)
        records.append(
            ModelRecord(
                model=row_label(first, extras),
                scenario=TableColumn.of(group.first).label,
                freeze=first.cell.freeze,
                seeds=f"{len(done)}/{len(group.rows)}",
                params=first.params,
                active_params=first.active_params,
                gflops=None if flops is None else flops / 1e9,
                metrics={name: group.interval(name) for name in METRICS},
                train_seconds=_mean(r.train_seconds for r in done),
                images_per_second=_mean(r.images_per_second for r in done),
                ran_on=_ran_on(group.done),
                weights_used=_weights_used(group.done),
                published=pubs,
                cell_ids=tuple(r.cell_row.cell_id for r in group.rows),
            )
        )
    notes = (
        "GFLOPs: fvcore's convention (one multiply-add = one flop), batch 1, the recipe's image "
        "size; active params: those the forward pass uses (dropped shortcuts' projections are "
        "inactive).",
        "loss, F1, precision, recall, accuracy: final test evaluation, mean ± 95 % t-interval "
        "half-width over finished seeds; train s and images/s: means over finished seeds; "
        "ran on: device (GPU index and count), autocast dtype and the flags that were on; "
        "weights used: the initial weights file the seeds loaded, by the SHA-256 their results "
        "recorded (first 12 hex digits).",
        *_published_notes(published),
    )
    return ModelTable(
        title="Models: size, cost, test metrics and speed (CIFAKE Tables 2/3/4/6 shape)",
        rows=tuple(records),
        compare=None if published is None else published.study,
        notes=notes,
    )


@dataclass(frozen=True)
class CellProblem:
    """A cell without a result: failed, diverged, skipped, or not run yet."""

    cell_id: str
    label: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready record."""
        return {
            "cell_id": self.cell_id,
            "label": self.label,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ProblemTable:
    """Cells that failed, diverged or were skipped (with reasons) and cells still missing."""

    title: str
    problems: tuple[CellProblem, ...]
    notes: tuple[str, ...] = ()

    def header(self) -> list[str]:
        """Column names as displayed."""
        return ["cell", "configuration", "status", "reason"]

    def display_rows(self) -> list[list[str]]:
        """One line per cell."""
        return [[p.cell_id, p.label, p.status, p.reason] for p in self.problems]

    def records(self) -> list[dict[str, Any]]:
        """One record per cell."""
        return [{"table": "cells", **p.to_dict()} for p in self.problems]

    def __rich__(self) -> RenderableType:
        return rich_table(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {"title": self.title, "problems": self.records(), "notes": list(self.notes)}


_MISSING_REASON = {
    CellStatus.PENDING: "not run yet (grid not finished)",
    CellStatus.RUNNING: "running, or interrupted while running (rerun the grid to resume)",
}


def problem_table(cells: Sequence[ResultRow]) -> ProblemTable:
    """Every cell whose status is not ``done``, with its reason (or why it is missing)."""
    problems = tuple(
        CellProblem(
            cell_id=row.cell_id,
            label=row.cell.label,
            status=row.status,
            reason=row.reason or _MISSING_REASON.get(row.status, "no reason recorded"),
        )
        for row in (r.cell_row for r in cells)
        if row.status != CellStatus.DONE
    )
    return ProblemTable(
        title="Cells without a result (failed, diverged, skipped, missing)",
        problems=problems,
        notes=() if problems else ("every cell of the grid finished",),
    )
