"""Reports: the papers' tables and figures regenerated from a grid's store."""
