"""Shared test set-up: offline, deterministic, caches in a temporary folder."""

from __future__ import annotations

import os

import pytest
import torch

# Before any test module imports huggingface_hub (transformers does), which reads it at import.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep every cache (decoded datasets, weights, demo weights) inside the test session.
    os.environ["RESABLATE_CACHE"] = str(tmp_path_factory.mktemp("resablate-cache"))
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs CUDA; none is visible")
        for item in items:
            # The marker, not ``item.keywords``: keywords also hold the folder names of the
            # test's path (a checkout in a folder named "gpu" would skip everything).
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip_gpu)
