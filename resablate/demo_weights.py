"""Demo pretrained weights: each architecture pre-trained once on the demo proxy task, offline.

The pretrained axis of a study (``weights="demo"``) must run with no download. The proxy "source"
task (:func:`resablate.data.demo_proxy_data`: other photographs and textures shipped with
scikit-image) stands in for ImageNet: the architecture is trained on it for a few epochs at
32 × 32 with a fixed recipe and seed, and the weights are cached at
:func:`resablate.weights.demo_weights_path`. From then on ``weights="demo"`` loads that file like
any local weights file (the head is replaced for the target task's classes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from resablate.recipes import Recipe, get_recipe

DEMO_WEIGHTS_SEED = 0
"""Seed of the pre-training run (fixed: the demo weights of an architecture are one file)."""

PRETRAIN_RECIPE: Recipe = get_recipe(
    "demo", epochs=1, eval_every=None, checkpoint_every=None, lr=2e-3
)
"""The fixed pre-training recipe: the demo recipe at 32 × 32 for one epoch of the proxy task (11
steps; ResNet-50: 16 s on 2 CPU cores), no intermediate checkpoints."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created), held for the block; blocks until free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_demo_weights(
    arch: str,
    source: str = "torchvision",
    *,
    callback: Callable[[object], None] | None = None,
) -> Path:
    """The demo-pretrained weights file of ``arch``, pre-training it first when missing.

    Pre-training runs on the CPU (the result must not depend on the machine's GPU) with
    :data:`PRETRAIN_RECIPE` and seed :data:`DEMO_WEIGHTS_SEED`; the file is written atomically. A
    file lock next to it makes a second process wait for the first one's file instead of training
    again.

    Args:
        arch: A registered architecture.
        source: ``"torchvision"`` or ``"timm"``.
        callback: Receives the engine's progress events while pre-training.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        ConfigError: Unknown architecture or source.
    """
    from resablate.weights import demo_weights_path

    path = demo_weights_path(arch, source)
    if path.is_file():
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if not path.is_file():
            _pretrain(arch, source, path, callback)
    return path


def _pretrain(
    arch: str, source: str, path: Path, callback: Callable[[object], None] | None
) -> None:
    import torch

    from resablate.data import decode_split, demo_proxy_data, scan
    from resablate.engine import stream_seed, train
    from resablate.weights import build_model, save_state_dict_file

    dataset = scan(demo_proxy_data())
    recipe = PRETRAIN_RECIPE
    splits = {
        name: decode_split(dataset, name, storage_size=recipe.storage_size)
        for name in ("train", "test")
    }
    torch.manual_seed(stream_seed(DEMO_WEIGHTS_SEED, "init"))
    model = build_model(arch, weights=None, num_classes=len(dataset.classes), source=source)
    with tempfile.TemporaryDirectory(prefix="demo-pretrain-", dir=path.parent) as run_dir:
        train(
            model,
            splits["train"],
            splits["test"],
            recipe,
            run_dir=run_dir,
            seed=DEMO_WEIGHTS_SEED,
            device="cpu",
            resume=False,
            callback=callback,
        )
    save_state_dict_file(model.state_dict(), path)
