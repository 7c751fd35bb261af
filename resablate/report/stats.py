"""Statistics for reports: a t-interval over seeds and McNemar's exact paired test.

Both are deliberately small and exact so that a reader can check them by hand:

* :func:`t_interval` — Student's t confidence interval of a mean over independent seeds
  (``mean ± t_{1-α/2, n-1} · s / √n`` with ``s`` the sample standard deviation, ``ddof=1``).
  With one value there is no interval (``half_width`` is ``None``), never a zero-width one.
* :func:`mcnemar_exact` — McNemar's exact test of two classifiers on the same test images:
  given ``b`` (the reference right, the other wrong) and ``c`` (the reference wrong, the other
  right), the two-sided p-value is ``min(1, 2 · P[Binomial(b + c, ½) ≤ min(b, c)])``, computed in
  exact integer arithmetic.
* :func:`paired_mcnemar` — the pooling rule used across seeds: the discordant counts of every
  seed are **summed** (pairs of cells with the same seed compared on the same test images), then
  one exact test is run on the totals. The per-seed counts are kept in the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from resablate.errors import ConfigError

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanInterval:
    """The mean of a metric over seeds with its Student-t confidence interval.

    Attributes:
        mean: Arithmetic mean of ``values``.
        half_width: ``t · s / √n``; ``None`` when ``n < 2`` (no interval can be given).
        n: Number of values (seeds).
        confidence: Two-sided confidence level, e.g. 0.95.
        values: The values themselves, in the order given.
    """

    mean: float
    half_width: float | None
    n: int
    confidence: float
    values: tuple[float, ...]

    @property
    def low(self) -> float | None:
        """Lower end of the interval (``None`` without an interval)."""
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        """Upper end of the interval (``None`` without an interval)."""
        return None if self.half_width is None else self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        """``"0.912 ± 0.013 (n=3)"``, or ``"0.912 (n=1, no interval)"`` for a single seed."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no interval)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (``low``/``high`` included)."""
        return {
            "mean": self.mean,
            "half_width": self.half_width,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "confidence": self.confidence,
            "values": list(self.values),
        }


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> MeanInterval:
    """Mean and two-sided Student-t confidence interval of independent values (e.g. seeds).

    Args:
        values: One value per seed; at least one, all finite.
        confidence: Two-sided level in (0, 1).

    Returns:
        The mean with ``half_width = t_{(1+confidence)/2, n-1} · s / √n`` (``s`` with ``ddof=1``),
        or no interval when there is one value.

    Raises:
        ConfigError: No values, a non-finite value, or a confidence outside (0, 1).
    """
    data = tuple(float(v) for v in values)
    if not data:
        raise ConfigError("a confidence interval needs at least one value")
    if not all(math.isfinite(v) for v in data):
        raise ConfigError(f"a confidence interval needs finite values, got {list(data)}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence {confidence} must be between 0 and 1 (exclusive)")
    n = len(data)
    mean = math.fsum(data) / n
    if n < 2:
        return MeanInterval(mean, None, n, confidence, data)
    from scipy.stats import t as student_t

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    quantile = float(student_t.ppf((1.0 + confidence) / 2.0, df=n - 1))
    return MeanInterval(mean, quantile * sd / math.sqrt(n), n, confidence, data)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of a cell against its reference cell on the same test images.

    Attributes:
        b: Images the reference got right and the compared cell got wrong (summed over seeds).
        c: Images the reference got wrong and the compared cell got right (summed over seeds).
        p_value: Two-sided exact p-value (1.0 when there is no discordant pair).
        n_pairs: Paired test images compared (summed over seeds).
        per_seed: ``(seed, b, c)`` for each seed that entered the pooled counts.
    """

    b: int
    c: int
    p_value: float
    n_pairs: int
    per_seed: tuple[tuple[int, int, int], ...] = ()

    @property
    def discordant(self) -> int:
        """``b + c``: the pairs on which the two cells disagree about correctness."""
        return self.b + self.c

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "b": self.b,
            "c": self.c,
            "p_value": self.p_value,
            "n_pairs": self.n_pairs,
            "per_seed": [{"seed": s, "b": b, "c": c} for s, b, c in self.per_seed],
        }


def mcnemar_p_value(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts ``b`` and ``c``.

    ``min(1, 2 · Σ_{k ≤ min(b,c)} C(b+c, k) / 2^(b+c))``, summed in integers so that it is exact
    up to the final division (which Python rounds correctly even for thousands of pairs).
    """
    if b < 0 or c < 0:
        raise ConfigError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def discordant_counts(
    labels: Sequence[int], reference_pred: Sequence[int], other_pred: Sequence[int]
) -> tuple[int, int]:
    """Count ``(b, c)`` from the predictions of two cells on the same test images (same order).

    Raises:
        ConfigError: The three sequences differ in length.
    """
    if not len(labels) == len(reference_pred) == len(other_pred):
        raise ConfigError(
            "paired predictions differ in length: "
            f"{len(labels)} labels, {len(reference_pred)} vs {len(other_pred)} predictions"
        )
    b = c = 0
    for y, r, o in zip(labels, reference_pred, other_pred, strict=True):
        ref_right, other_right = r == y, o == y
        if ref_right and not other_right:
            b += 1
        elif other_right and not ref_right:
            c += 1
    return b, c


def mcnemar_exact(b: int, c: int, n_pairs: int | None = None) -> McNemarResult:
    """McNemar's exact test from discordant counts (see :func:`mcnemar_p_value`)."""
    return McNemarResult(b, c, mcnemar_p_value(b, c), b + c if n_pairs is None else n_pairs)


def paired_mcnemar(
    pairs: Iterable[tuple[int, Sequence[int], Sequence[int], Sequence[int]]],
) -> McNemarResult:
    """Pooled McNemar test over seeds: discordant counts summed, one exact test on the totals.

    Args:
        pairs: ``(seed, labels, reference_pred, other_pred)`` per seed, each on the same test
            images in the same order.

    Returns:
        The pooled result, with the per-seed counts kept in ``per_seed``.
    """
    per_seed = []
    total_b = total_c = total_n = 0
    for seed, labels, ref, other in pairs:
        b, c = discordant_counts(labels, ref, other)
        per_seed.append((seed, b, c))
        total_b, total_c, total_n = total_b + b, total_c + c, total_n + len(labels)
    return McNemarResult(
        total_b, total_c, mcnemar_p_value(total_b, total_c), total_n, tuple(per_seed)
    )


@dataclass(frozen=True)
class SeedPairedTest:
    """Paired t-test over seeds: a cell's metric against its reference's, seed by seed.

    Attributes:
        differences: ``(seed, cell − reference)`` for each seed both finished, by seed.
        mean_difference: Mean of the differences.
        t: The t statistic ``mean / (s / √n)`` (``s`` with ``ddof=1``; infinite when every
            difference is the same non-zero value, 0 when all are zero).
        p_value: Two-sided p-value with ``n − 1`` degrees of freedom.
        p_holm: ``p_value`` after Holm's step-down correction over the tests of one table
            (``None`` until corrected).
    """

    differences: tuple[tuple[int, float], ...]
    mean_difference: float
    t: float
    p_value: float
    p_holm: float | None = None

    @property
    def n(self) -> int:
        """Seeds paired."""
        return len(self.differences)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "differences": [{"seed": s, "difference": d} for s, d in self.differences],
            "mean_difference": self.mean_difference,
            "t": self.t,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
        }


def seed_paired_t(differences: Iterable[tuple[int, float]]) -> SeedPairedTest | None:
    """Student's paired t-test of per-seed differences (``None`` with fewer than two seeds).

    ``t = mean(d) / (sd(d) / √n)``, two-sided ``p = 2 · P[T_{n-1} ≥ |t|]``; it equals
    ``scipy.stats.ttest_rel(cell, reference).pvalue``.
    """
    data = tuple(sorted((int(s), float(d)) for s, d in differences))
    n = len(data)
    if n < 2:
        return None
    values = [d for _, d in data]
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return SeedPairedTest(data, mean, t, 1.0 if mean == 0.0 else 0.0)
    from scipy.stats import t as student_t

    t = mean / (sd / math.sqrt(n))
    return SeedPairedTest(data, mean, t, float(2.0 * student_t.sf(abs(t), df=n - 1)))


def holm(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm's step-down adjusted p-values, in the order given.

    The k-th smallest of m p-values becomes ``max_{j ≤ k} min(1, (m − j + 1) · p_(j))``; reject
    where the adjusted value is below the level (family-wise error controlled at that level).
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return tuple(adjusted)
