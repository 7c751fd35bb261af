"""Building models and loading their weights: random init, official ImageNet, demo, or a local file.

Weights files are loaded without unpickling code: ``.safetensors`` with safetensors,
``.pth``/``.pt`` with ``torch.load(weights_only=True)``. ImageNet weights come through the upstream
caches: torchvision's ``$TORCH_HOME/hub/checkpoints/`` and the Hugging Face hub cache for timm tags
and the ``hf`` family's microsoft/resnet-N repositories.
Nothing reaches the network unless ImageNet weights are asked for and not cached.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resablate.atomic import write_bytes, write_with
from resablate.errors import ConfigError, WeightsError, WeightsUnavailableError
from resablate.families import Family, head_features, head_of, list_families
from resablate.model_spec import ModelSpec, parse_model
from resablate.paths import cache_dir

STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_HF_FILE = "model.safetensors"


@dataclass(frozen=True)
class WeightsInfo:
    """One set of official ImageNet weights and whether this machine has it.

    Attributes:
        arch: Architecture name.
        source: ``"torchvision"``, ``"timm"`` or ``"hf"``.
        tag: torchvision weights enum name, timm pretrained tag or Hugging Face repository.
        cached: The file is in the upstream cache (usable offline).
        path: Where the file is (or will be, once fetched).
    """

    arch: str
    source: str
    tag: str
    cached: bool
    path: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return asdict(self)


# --- files ---------------------------------------------------------------------------------------


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a weights file's bytes (for a run's environment fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_state_dict_file(state: Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Write a state dict atomically: safetensors for ``.safetensors``, ``torch.save`` otherwise.

    Raises:
        WeightsError: The suffix is not ``.safetensors``, ``.pth`` or ``.pt``.
    """
    target = Path(path)
    suffix = _checked_suffix(target)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save

        write_bytes(target, save(tensors))
    else:
        write_with(target, lambda fh: torch.save(tensors, fh))


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``/``.pth``/``.pt`` without executing any code.

    Accepts a bare state dict or the common wrappers ``{"state_dict": ...}`` / ``{"model": ...}``,
    and strips a ``module.`` prefix (DataParallel / DDP checkpoints). Tensors land on the CPU.

    Raises:
        WeightsError: Missing file, unknown suffix, unreadable file, or content that is not a
            mapping of names to tensors (a pickled object is refused, never executed).
    """
    source = Path(path)
    suffix = _checked_suffix(source)
    if not source.is_file():
        raise WeightsError(f"weights file not found: {source}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(source), device="cpu")
        else:
            raw = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoder failure means "not a weights file we can use"
        if holds_pickled_objects(exc):
            raise WeightsError(
                f"weights file {source} refused: it holds pickled Python objects, which could run "
                "code when loaded; if you trust the file, load it once with "
                "torch.load with weights_only=False and save its state dict with "
                "safetensors.torch.save_file(state_dict, 'weights.safetensors'), "
                "then pass that file"
            ) from None
        raise WeightsError(f"cannot read weights file {source}: {load_failure(exc)}") from None
    return _unwrap(raw, source)


def holds_pickled_objects(exc: BaseException) -> bool:
    """Whether ``torch.load(..., weights_only=True)`` refused a pickled class or function."""
    return isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc)


def load_failure(exc: BaseException) -> str:
    """Why a file did not load as tensors, in one short line (PyTorch's texts run to paragraphs).

    Args:
        exc: What ``torch.load(..., weights_only=True)`` or ``safetensors`` raised.
    """
    if holds_pickled_objects(exc):
        return "it holds pickled Python objects, which could run code (refused, never run)"
    if isinstance(exc, pickle.UnpicklingError):
        return "its pickle data is not plain tensors and containers"
    message = " ".join(str(exc).split())
    if len(message) > 160:
        message = message[:157] + "..."
    return message or type(exc).__name__


def _checked_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(
            f"weights file {path} must end in {', '.join(STATE_DICT_SUFFIXES)}, not {suffix!r}"
        )
    return suffix


def _unwrap(raw: Any, source: Path) -> dict[str, Tensor]:
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            inner = raw.get(key)
            if isinstance(inner, Mapping) and inner:
                raw = inner
                break
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(f"{source} does not hold a state dict (found {type(raw).__name__})")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(
            f"{source} is not a state dict: entry {bad[0]!r} is not a name -> tensor pair"
        )
    if all(k.startswith("module.") for k in raw):
        return {k[len("module.") :]: v for k, v in raw.items()}
    return dict(raw)


# --- building ------------------------------------------------------------------------------------


def demo_weights_path(arch: str, source: str = "torchvision") -> Path:
    """Where the demo-pretrained weights of ``arch`` live (built by ``resablate demo-weights``).

    ``arch`` is any model name :func:`resablate.model_spec.parse_model` reads; the file is
    ``<source>-<arch>.safetensors``, characters other than letters, digits, ``.``, ``-`` and
    ``_`` of the canonical name (a factory's ``:``, a directory's ``/``) written as ``_``.
    """
    model = parse_model(arch, source)
    name = re.sub(r"[^\w.-]+", "_", model.arch)
    return cache_dir("weights", "demo") / f"{model.source}-{name}.safetensors"


def head_path(arch: str, source: str = "torchvision") -> str:
    """Module path of the classifier head of ``arch`` (any name ``parse_model`` reads): the
    family's declaration, else :func:`resablate.families.head_of` of the model built on the
    meta device."""
    model = parse_model(arch, source)
    if model.family is not None:
        return model.family.head
    return head_of(model.build_on_meta())


def build_model(
    arch: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int = 2,
    source: str = "torchvision",
) -> nn.Module:
    """Build ``arch`` from ``source`` with the requested weights and a ``num_classes`` head.

    Args:
        arch: Any model name :func:`resablate.model_spec.parse_model` reads: a registered
            architecture (:func:`resablate.list_architectures`), a timm or torchvision model, a
            Hugging Face hub id or directory (``hf:...``), a ``package.module:callable`` factory.
            A model outside the registry gets its head from :func:`resablate.families.head_of`.
        weights: None or ``"none"``: random init (the caller seeds torch); ``"imagenet"``: the
            source's official ImageNet weights through the upstream cache (registered
            architectures only); ``"demo"``: the cached demo-pretrained file
            (:func:`demo_weights_path`); otherwise a path to a ``.pth``/``.pt``/``.safetensors``
            state dict.
        num_classes: Outputs of the classifier. The head is a fresh ``nn.Linear`` (initialised from
            the global torch RNG) unless the weights' head already has ``num_classes`` outputs.
        source: The source of a name without one: ``"torchvision"``, ``"timm"`` or ``"hf"``
            (Hugging Face ``transformers``, the ``resablate[hf]`` extra; the model returns the
            logits tensor).

    Returns:
        The model in training mode on the CPU.

    Raises:
        ConfigError: Unknown model/source, ``num_classes`` < 1, or a model without a head.
        WeightsError: A file that is not a state dict of this architecture (the message names the
            first mismatching keys and shapes).
        WeightsUnavailableError: ImageNet weights not cached and not downloadable (offline), or
            not declared (a model outside the registry), or demo weights not built yet.
    """
    spec = parse_model(arch, source)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, not {num_classes!r}")
    state = _resolve_state(spec, weights)
    model = spec.build()
    head = head_of(model) if spec.family is None else spec.family.head
    if state is not None:
        try:
            _load_body(model, head, f"{spec.arch} ({spec.source})", state)
        except WeightsError as exc:  # name the file that does not fit
            raise WeightsError(f"{_origin(spec, weights)}: {exc}") from None
    features = head_features(model.get_submodule(head))
    if features is None:
        raise ConfigError(f"head {head} of {spec.arch} is not a Linear or 1x1 conv layer")
    new_head = (
        nn.Linear(features, num_classes)
        if isinstance(model.get_submodule(head), nn.Linear)
        else nn.Conv2d(features, num_classes, 1)
    )
    head_weight = None if state is None else state.get(f"{head}.weight")
    head_bias = None if state is None else state.get(f"{head}.bias")
    if (
        head_weight is not None
        and head_bias is not None
        and tuple(head_weight.shape) == tuple(new_head.weight.shape)
        and new_head.bias is not None
        and tuple(head_bias.shape) == tuple(new_head.bias.shape)
    ):
        new_head.load_state_dict({"weight": head_weight, "bias": head_bias})
    _set_submodule(model, head, new_head)
    return model


def _origin(spec: ModelSpec, weights: str | os.PathLike[str] | None) -> str:
    """The file a weights choice loads from (for messages)."""
    key = str(weights).strip().lower()
    if key == "imagenet":
        return str(_cached_path(_registered(spec)))
    if key == "demo":
        return str(demo_weights_path(spec.arch, spec.source))
    return str(weights)


def _resolve_state(
    spec: ModelSpec, weights: str | os.PathLike[str] | None
) -> dict[str, Tensor] | None:
    if weights is None:
        return None
    if isinstance(weights, str) and weights.strip().lower() in ("none", "imagenet", "demo"):
        key = weights.strip().lower()
        if key == "none":
            return None
        if key == "imagenet":
            family = _registered(spec)
            return load_state_dict_file(fetch_weights(family.arch, family.source))
        path = demo_weights_path(spec.arch, spec.source)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"demo weights for {spec.arch} are not built yet: run "
                f"`resablate demo-weights {spec.name}` (expected {path})"
            )
        return load_state_dict_file(path)
    return load_state_dict_file(weights)


def _load_body(model: nn.Module, head: str, name: str, state: Mapping[str, Tensor]) -> None:
    """Load everything but the head; WeightsError naming the first mismatches."""
    head_keys = {f"{head}.weight", f"{head}.bias"}
    expected = {k: v for k, v in model.state_dict().items() if k not in head_keys}
    given = {k: v for k, v in state.items() if k not in head_keys}
    # BatchNorm batch counters are absent from some published checkpoints; they stay as built.
    missing = [k for k in expected if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        problems = []
        if wrong:
            k = wrong[0]
            problems.append(
                f"{len(wrong)} shape mismatch(es), first {k}: file {tuple(given[k].shape)} vs "
                f"model {tuple(expected[k].shape)}"
            )
        if missing:
            problems.append(f"{len(missing)} missing key(s), first {', '.join(missing[:3])}")
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected key(s), first {', '.join(unexpected[:3])}"
            )
        raise WeightsError(f"weights do not fit {name}: {'; '.join(problems)}")
    model.load_state_dict(given, strict=False)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


# --- official ImageNet weights -------------------------------------------------------------------


def _registered(spec: ModelSpec) -> Family:
    """The family of a model whose ImageNet weights are asked for (only families declare them).

    Raises:
        WeightsUnavailableError: A model outside the registry.
    """
    if spec.family is None:
        raise WeightsUnavailableError(
            f"ImageNet weights are declared for the registered architectures only; for "
            f"{spec.name} pass a weights file (a state dict of the model)"
        )
    return spec.family


def _imagenet_tag(family: Family) -> str:
    if family.imagenet is None:
        raise WeightsUnavailableError(f"{family.arch} ({family.source}) has no ImageNet weights")
    return family.imagenet


def _hf_repo(family: Family) -> str:
    """The Hugging Face repository of a timm tag (``timm/<tag>``) or an ``hf`` family (itself)."""
    tag = _imagenet_tag(family)
    return f"timm/{tag}" if family.source == "timm" else tag


def _hf_files(family: Family) -> tuple[str, ...]:
    # microsoft/resnet-N repositories hold model.safetensors; older ones only pytorch_model.bin
    # (a plain state dict, loaded with weights_only=True).
    return (_HF_FILE,) if family.source == "timm" else (_HF_FILE, "pytorch_model.bin")


def _cached_path(family: Family) -> Path:
    """Where the upstream cache keeps (or would keep) the ImageNet weights of ``family``."""
    tag = _imagenet_tag(family)
    if family.source == "torchvision":
        import torchvision.models as tvm

        url = tvm.get_weight(tag).url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    from huggingface_hub import constants, try_to_load_from_cache

    repo = _hf_repo(family)
    for name in _hf_files(family):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return Path(found)
    folder = "models--" + repo.replace("/", "--")
    return Path(constants.HF_HUB_CACHE) / folder / "snapshots" / "<revision>" / _HF_FILE


def _download(family: Family) -> None:
    tag = _imagenet_tag(family)
    if family.source == "torchvision":
        import torchvision.models as tvm

        tvm.get_weight(tag).get_state_dict(progress=False, check_hash=True)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    *first, last = _hf_files(family)
    for name in first:
        try:
            hf_hub_download(_hf_repo(family), name)
        except EntryNotFoundError:
            continue
        return
    hf_hub_download(_hf_repo(family), last)


def fetch_weights(arch: str, source: str = "torchvision") -> Path:
    """The cached file of ``arch``'s ImageNet weights, downloading it first when missing.

    Raises:
        ConfigError: Unknown model/source.
        WeightsUnavailableError: Not cached and the download failed (offline): the message names
            the expected file and how to obtain it; a model outside the registry (none declared).
    """
    family = _registered(parse_model(arch, source))
    path = _cached_path(family)
    if path.is_file():
        return path
    try:
        _download(family)
    except Exception as exc:  # no network, proxy, HTTP error: all mean "not available here"
        reason = " ".join(str(exc).split())[:160]
        src = "" if family.source == "torchvision" else f" (model source {family.source})"
        raise WeightsUnavailableError(
            f"ImageNet weights {family.imagenet} for {family.arch} are not cached at {path} and "
            f"could not be downloaded ({type(exc).__name__}: {reason}); run "
            f"`resablate weights fetch {family.arch}`{src} on a connected machine and copy the "
            "file there, or pass a weights file path"
        ) from None
    path = _cached_path(family)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"download of {family.imagenet} finished but {path} is missing"
        )
    return path


def list_weights() -> list[WeightsInfo]:
    """Every registered architecture's ImageNet weights and whether they are cached here."""
    infos = []
    for family in list_families():
        if family.imagenet is None:
            continue
        path = _cached_path(family)
        infos.append(
            WeightsInfo(family.arch, family.source, family.imagenet, path.is_file(), str(path))
        )
    return infos
