"""The environment fingerprint recorded with every run (DESIGN.md §6b)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import torch


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """``"cpu"``, or the GPU's marketing name (e.g. ``"NVIDIA H100 80GB HBM3"``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


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
    )


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when visible, else CPU; otherwise the named device, checked.

    Raises:
        ConfigError: A CUDA device was asked for but none is visible, or the name is unknown.
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
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device
