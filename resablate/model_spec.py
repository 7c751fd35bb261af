"""Model names as users type them: the one owner of that mini-language (``surgery``, ``count``,
``train``, ``grid``, the baselines and the diagnostics all parse names here).

A model is named in one of four ways:

- ``resnet50``: a registered architecture of the chosen source (``--source``, default
  torchvision), or else any classification model of that source's library (torchvision's
  ``torchvision.models.list_models()``, timm's ``timm.list_models()``), e.g. ``vit_b_16``;
- ``timm:convnext_tiny``, ``torchvision:vit_b_16``, ``hf:resnet50``: the same with the source
  spelled in the name (it overrides ``--source``);
- ``hf:owner/name`` or ``hf:DIR``: a Hugging Face ``transformers`` image classifier (extra
  ``resablate[hf]``) by hub id or local directory with ``config.json`` (``save_pretrained``'s),
  built from its config with random weights; the id of a registered ``hf`` architecture
  (``hf:microsoft/resnet-50``) is that architecture;
- ``package.module:callable``: a user factory, called without arguments, returning an
  ``nn.Module`` (``mypackage.nets:cifar_resnet20``; ``callable`` may be dotted, e.g.
  ``Net.build``). The module is imported from ``sys.path``, with the working directory added
  last, so a module next to where the command runs needs no ``PYTHONPATH``.

A parsed name is canonical: :attr:`ModelSpec.arch` with :attr:`ModelSpec.source` parses back to
the same model (``parse_model(spec.arch, spec.source)``), which is how a grid cell carries it.

Registered architectures come with their stage map and head; other models are counted as they
are (per-stage rows only where :func:`resablate.families.stage_map` recognises the layout).
Parsing validates everything that can be checked without building (the source, that the name
exists, that the factory imports and is callable); building happens later, on the meta device
where the builder allows it (:meth:`ModelSpec.build_on_meta`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from resablate.errors import ConfigError
from resablate.families import SOURCES, Family, get_family, list_families

#: ``ModelSpec.source`` of a user factory.
FACTORY = "factory"
#: Sources whose library catalogue is offered beyond the registered architectures.
CATALOGUE_SOURCES = ("torchvision", "timm")
#: A Hugging Face hub id: ``owner/name``.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HF_INSTALL = "Hugging Face models need transformers: pip install 'resablate[hf]'"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: what it is and how to build it (with a 1000-class head).

    Attributes:
        arch: The architecture or library model name (``"convnext_tiny"``), a Hugging Face hub
            id or absolute directory (source ``hf``), or ``"module:callable"`` for a factory.
        source: ``"torchvision"``, ``"timm"``, ``"hf"``, or ``"factory"``.
        family: The registered family, or None for any other model.
        builder: Builds the model with random initialisation.
    """

    arch: str
    source: str
    family: Family | None
    builder: Callable[[], nn.Module] = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        """The name as users type it, read back the same whatever the default source:
        ``resnet50`` (torchvision), ``timm:resnet10t``, ``hf:/abs/dir``, ``pkg.mod:make``."""
        if self.source in (FACTORY, "torchvision"):
            return self.arch
        return f"{self.source}:{self.arch}"

    def build(self) -> nn.Module:
        """Build the model (random initialisation, on the CPU).

        Raises:
            ConfigError: A factory failed (the message names it and the exception; ``--debug``
                shows the traceback) or returned something that is not an ``nn.Module``.
        """
        if self.source != FACTORY:
            return self.builder()
        try:
            model = self.builder()
        except (Exception, SystemExit) as exc:  # the user's code: say which factory failed
            raise ConfigError(f"model factory {self.arch} failed: {_failure(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model factory {self.arch} returned {type(model).__name__}, not an nn.Module"
            )
        return model

    def build_on_meta(self) -> nn.Module:
        """Build with meta tensors (shapes only, nothing allocated or initialised).

        Builders that compute with tensors while building (torchvision's RegNet derives its
        widths from them) cannot run on the meta device; those are built on the CPU instead.

        Raises:
            ConfigError: As :meth:`build`.
        """
        try:
            with torch.device("meta"):
                return self.build()
        except (NotImplementedError, RuntimeError, ConfigError):
            # a factory's meta failure arrives as ConfigError; the CPU build says what is wrong
            return self.build()


def parse_model(text: str, source: str = "torchvision") -> ModelSpec:
    """Parse a model name (see the module docstring); nothing is built.

    Args:
        text: ``arch``, ``source:arch`` or ``package.module:callable``.
        source: The source of a name without one (the ``--source`` option); ``"factory"``
            reads ``package.module:callable`` only.

    Raises:
        ConfigError: Unknown source, a name that is neither registered nor in the source's
            library (the message lists the registered architectures and close library names),
            a Hugging Face name that is neither a hub id nor a directory with ``config.json``
            (or transformers missing), or a factory that does not import or is not callable.
    """
    name = text.strip()
    prefix, colon, rest = name.partition(":")
    if colon and prefix.lower() in SOURCES:
        source, name = prefix.lower(), rest.strip()
    elif colon:
        return _factory(prefix.strip(), rest.strip())
    try:
        family = get_family(name, source)
    except ConfigError as unknown:
        if source == "hf":
            return _hf_model(name, unknown)
        builder = _catalogue_builder(source, name, unknown) if source in CATALOGUE_SOURCES else None
        if builder is None:
            raise
        return ModelSpec(arch=name, source=source, family=None, builder=builder)
    return ModelSpec(arch=family.arch, source=family.source, family=family, builder=family.builder)


def _hf_model(name: str, unknown: ConfigError) -> ModelSpec:
    """A Hugging Face classifier by hub id or local directory (the registered one for the id of
    a registered architecture)."""
    for family in list_families("hf"):
        if family.imagenet == name:
            return ModelSpec(arch=family.arch, source="hf", family=family, builder=family.builder)
    folder = Path(name).expanduser().resolve()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"Hugging Face model directory {folder} has no config.json (save_pretrained "
                "writes one)"
            )
        arch = str(folder)
    elif _HUB_ID.fullmatch(name):
        arch = name
    else:
        raise ConfigError(
            f"{unknown} (nor a Hugging Face hub id owner/name or a directory with config.json)"
        ) from None
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(HF_INSTALL)
    builder = functools.partial(_hf_build, arch)
    return ModelSpec(arch=arch, source="hf", family=None, builder=builder)


def _hf_build(name_or_dir: str) -> nn.Module:
    from resablate.hf import build_from_config

    return build_from_config(name_or_dir)


def _catalogue_builder(
    source: str, name: str, unknown: ConfigError
) -> Callable[[], nn.Module] | None:
    """A builder of ``name`` from the source's library, or a ConfigError saying what is close."""
    if source == "torchvision":
        import torchvision.models as tvm

        names = tvm.list_models(module=tvm)

        def build() -> nn.Module:
            return tvm.get_model(name, weights=None, num_classes=1000)

    else:
        import timm

        names = timm.list_models()

        def build() -> nn.Module:
            return timm.create_model(name, pretrained=False, num_classes=1000)

    if name in names:
        return build
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; close {source} models: {', '.join(close)}" if close else ""
    raise ConfigError(f"{unknown} (nor a {source} model{hint})") from None


def _factory(module_name: str, attribute: str) -> ModelSpec:
    text = f"{module_name}:{attribute}"
    if not module_name or not attribute:
        raise ConfigError(f"model factory {text!r} must read package.module:callable")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: the working directory shadows no installed module
    try:
        target: object = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # the user's module: missing, broken, or it exits
        message = f"cannot import module {module_name!r} of model factory {text}: {_failure(exc)}"
        raise ConfigError(message) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model factory {text}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model factory {text} is a {type(target).__name__}, not callable")
    return ModelSpec(arch=text, source=FACTORY, family=None, builder=target)


def _failure(exc: BaseException) -> str:
    """What went wrong in the user's code, in one line (a ``sys.exit`` says so: it would
    otherwise end the command without a word)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    if isinstance(exc, ImportError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
