"""Helpers of the grid tests: tiny generated data, offline ImageNet stand-ins, one CPU thread,
private namespaces for Ray."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, like the subprocesses (OMP_NUM_THREADS=1): the same float
    reductions, so in-process and subprocess runs give bit-identical metrics, and no
    oversubscription of the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# Private network, PID and proc namespaces: Ray 2.x binds its ports on every interface (it rewrites
# 127.0.0.1 to the host's address), so a test that starts Ray runs it here, where the only
# interface is loopback and every process ends with the namespace's first one.
RAY_NAMESPACES = ("unshare", "-rn", "--pid", "--fork", "--mount-proc")


def ray_isolation_reason() -> str | None:
    """Why Ray cannot be isolated in :data:`RAY_NAMESPACES` here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare(1) is missing"
    done = subprocess.run([*RAY_NAMESPACES, "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare failed: {done.stderr.strip()}"


def write_tiny_dataset(root: Path, per_class: int = 8, size: int = 16) -> Path:
    """A CIFAKE-style tree: REAL = flat colour patches, FAKE = the same with pixel noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name in ("REAL", "FAKE"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.broadcast_to(rng.integers(40, 215, (1, 1, 3)), (size, size, 3))
                if name == "FAKE":
                    pixels = pixels + rng.normal(0, 40, (size, size, 3))
                image = np.clip(pixels, 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def tiny_grid_args(data: Path, out: Path, max_steps: int = 3) -> list[str]:
    """``resablate grid`` arguments of the tiny two-cell grid: ResNet-18 residual on/off, random
    init, the demo recipe at 16 px, batch 4, ``max_steps`` steps, on the CPU."""
    return [
        "grid",
        *("--depths", "18", "--residual", "on", "off", "--weights", "none"),
        *("--data", str(data), "--recipe", "demo", "--max-steps", str(max_steps)),
        *("--image-size", "16", "--batch-size", "4", "--device", "cpu", "--out", str(out)),
    ]


def imagenet_standins(archs: tuple[str, ...]) -> None:
    """Write seeded stand-ins for the ImageNet weights into the (test) torch hub cache, so that
    ``--weights imagenet`` runs offline through the real loading path."""
    import torchvision

    from resablate.families import get_family

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        url = torchvision.models.get_weight(str(get_family(arch).imagenet)).url
        target = folder / os.path.basename(url)
        if not target.exists():
            torch.manual_seed(1)
            torch.save(getattr(torchvision.models, arch)().state_dict(), target)


def demo_weight_standins(archs: tuple[str, ...], source: str) -> None:
    """Write seeded stand-ins for the demo-pretrained weights into the (test) cache, so that a
    grid on demo data loads them instead of pre-training each architecture first."""
    from resablate.weights import build_model, demo_weights_path, save_state_dict_file

    for arch in archs:
        torch.manual_seed(1)
        model = build_model(arch, num_classes=2, source=source)
        save_state_dict_file(model.state_dict(), demo_weights_path(arch, source))
