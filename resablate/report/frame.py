"""The tidy table of a grid's results as a pandas DataFrame (pandas: the optional extra)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from resablate.errors import ConfigError

if TYPE_CHECKING:
    import pandas

PANDAS_HINT = "loading results as a DataFrame needs pandas: pip install 'resablate[pandas]'"


def load(store_or_grid_dir: str | os.PathLike[str]) -> pandas.DataFrame:
    """A grid's results as one tidy DataFrame: one row per cell × split, in grid order.

    Columns (:meth:`resablate.grid.results.ResultRow.to_record`): ``cell_id``, ``position``,
    every field of the cell's configuration (``arch``, ``source``, ``residual``,
    ``residual_alpha``, ``weights``, ``freeze``, ``bn``, ``recipe``, ``overrides`` as JSON text,
    ``seed``, ``data``), ``depth``, ``split`` (``test``: the final evaluation; ``train``/``val``:
    the last evaluation of that split), ``step``, the metrics (``accuracy``, ``precision``,
    ``recall``, ``f1`` as fractions, ``loss`` in nats), ``status``, ``reason``, ``params``,
    ``active_params``, ``flops`` (fvcore multiply-adds), ``steps``, ``train_seconds``,
    ``images_per_second``, ``device``, ``run_dir``, ``dataset_fingerprint`` and
    ``weights_sha256``.

    Args:
        store_or_grid_dir: A grid's run directory or its ``store.sqlite``.

    Raises:
        ConfigError: pandas is not installed.
        StoreError: No store there, not a store, or a store from a newer format.
    """
    try:
        import pandas
    except ImportError:
        raise ConfigError(PANDAS_HINT) from None
    from resablate.grid.results import read_results
    from resablate.report.build import open_store

    with open_store(store_or_grid_dir) as store:
        results = read_results(store)
    return pandas.DataFrame.from_records(results.records())
