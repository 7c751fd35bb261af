"""Reports: the papers' tables and figures regenerated from a grid's store.

``resablate.report.load(grid_dir)`` returns the grid's results as one tidy pandas DataFrame.
"""

from resablate.report.frame import load

__all__ = ["load"]
