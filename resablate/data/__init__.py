"""Datasets: layout detection, decode-once cache, batched device augmentation, demo data."""
