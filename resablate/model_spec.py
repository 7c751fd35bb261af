"""Model names as users type them: one owner for the mini-language of ``surgery`` and ``count``.

A model is named in one of three ways:

- ``resnet50``: a registered architecture of the chosen source (``--source``, default
  torchvision), or else any classification model of that source's library (torchvision's
  ``torchvision.models.list_models()``, timm's ``timm.list_models()``), e.g. ``vit_b_16``;
- ``timm:convnext_tiny``, ``torchvision:vit_b_16``, ``hf:resnet50``: the same with the source
  spelled in the name (it overrides ``--source``);
- ``package.module:callable``: a user factory, called without arguments, returning an
  ``nn.Module`` (``mypackage.nets:cifar_resnet20``; ``callable`` may be dotted, e.g.
  ``Net.build``).

Registered architectures come with their stage map and head; other models are counted as they
are (per-stage rows only where :func:`resablate.families.stage_map` recognises the layout).
Parsing validates everything that can be checked without building (the source, that the name
exists, that the factory imports and is callable); building happens later, on the meta device
where the builder allows it (:meth:`ModelSpec.build_on_meta`).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from resablate.errors import ConfigError
from resablate.families import SOURCES, Family, get_family

#: ``ModelSpec.source`` of a user factory.
FACTORY = "factory"
#: Sources whose library catalogue is offered beyond the registered architectures.
CATALOGUE_SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: what it is and how to build it (with a 1000-class head).

    Attributes:
        arch: The architecture or library model name (``"convnext_tiny"``), or
            ``"module:callable"`` for a factory.
        source: ``"torchvision"``, ``"timm"``, another registered source, or ``"factory"``.
        family: The registered family, or None for any other model.
        builder: Builds the model with random initialisation.
    """

    arch: str
    source: str
    family: Family | None
    builder: Callable[[], nn.Module] = field(repr=False, compare=False)

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
        source: The source of a name without one (the ``--source`` option).

    Raises:
        ConfigError: Unknown source, a name that is neither registered nor in the source's
            library (the message lists the registered architectures and close library names),
            or a factory that does not import or is not callable.
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
        builder = _catalogue_builder(source, name, unknown) if source in CATALOGUE_SOURCES else None
        if builder is None:
            raise
        return ModelSpec(arch=name, source=source, family=None, builder=builder)
    return ModelSpec(arch=family.arch, source=family.source, family=family, builder=family.builder)


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
