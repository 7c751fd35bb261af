"""Grids of ablation cells: specification, execution, resumable results."""
