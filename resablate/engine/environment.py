"""The environment fingerprint recorded with every run, and what the grid driver records.

See ``docs/architecture.md``, "Reproducibility and paired arms".
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from resablate.engine.execution import device_name

__all__ = [
    "Environment",
    "capture_environment",
    "device_name",
    "driver_environment",
    "git_revision",
    "resolve_device",
]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Environment:
    """What a result depends on besides its config.

    Attributes:
        torch: torch version.
        torchvision: torchvision version.
        timm: timm version (``None`` if not installed).
        cuda: CUDA version torch was built with (``None`` for CPU builds).
        cudnn: cuDNN version (``None`` without cuDNN).
        device: Device name the run trained on.
        deterministic: ``torch.are_deterministic_algorithms_enabled()`` during the run.
        dataset_fingerprint: The dataset scan's fingerprint (file list, sizes, mtimes).
        weights_sha256: SHA-256 of the initial weights file (``None`` for random init).
        execution: What the run executed with (:meth:`Execution.to_dict`: device, GPU name and
            count, autocast dtype, channels_last, compile, TF32, cudnn.benchmark,
            deterministic); ``None`` until the run has trained.
        pack: For a cell trained in a pack (``resablate.packing``): ``{"id": pack id, "size": K,
            "group": its group}``; ``None`` for a cell trained alone.
        cpu_threads: torch's intra-op CPU threads (``torch.get_num_threads()``): the CPU kernels
            add in an order that depends on it, so a short run's figures do too.
    """

    torch: str
    torchvision: str | None
    timm: str | None
    cuda: str | None
    cudnn: int | None
    device: str
    deterministic: bool
    dataset_fingerprint: str | None
    weights_sha256: str | None
    execution: dict[str, Any] | None = None
    pack: dict[str, Any] | None = None
    cpu_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return asdict(self)


def capture_environment(
    device: torch.device,
    *,
    dataset_fingerprint: str | None = None,
    weights_sha256: str | None = None,
) -> Environment:
    """The current process's :class:`Environment` for a run on ``device``."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Environment(
        torch=torch.__version__,
        torchvision=_version("torchvision"),
        timm=_version("timm"),
        cuda=torch.version.cuda,
        cudnn=cudnn,
        device=device_name(device),
        deterministic=torch.are_deterministic_algorithms_enabled(),
        dataset_fingerprint=dataset_fingerprint,
        weights_sha256=weights_sha256,
        cpu_threads=torch.get_num_threads(),
    )


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when visible, else CPU; otherwise the named device, checked.

    Raises:
        ConfigError: A CUDA device was asked for but none is visible (or ``cuda:N`` with N
            beyond the visible count), or the name is unknown.
    """
    from resablate.errors import ConfigError

    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is visible; use cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device {name!r} asked for, but {count} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def git_revision() -> str | None:
    """The git revision of the resablate source tree, or ``None`` outside a git checkout."""
    folder = Path(__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def driver_environment() -> dict[str, Any]:
    """What the driver knows of the environment: versions, host, git revision."""
    import torch
    import torchvision

    from resablate._version import __version__

    return {
        "resablate": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "host": platform.node(),
        "git_revision": git_revision(),
    }
