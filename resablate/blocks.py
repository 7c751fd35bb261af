"""The block registry: residual block classes declared by hand for surgery (a leaf: no model code).

Surgery finds most residual blocks on its own, by tracing each module's ``forward`` with
``torch.fx`` and looking for an addition of a shortcut to the module's input (see
``docs/surgery.md``). A block whose ``forward`` cannot be traced (data-dependent control flow, for
instance) is declared here instead, with the three pieces of its upstream forward
``act(main(x) + shortcut(x))``::

    import resablate

    resablate.register_block(
        MyBlock,
        main=lambda block, x: block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))),
        shortcut=lambda block, x: block.proj(x) if block.proj is not None else x,
        act=lambda block, x: block.relu(x),
        shortcut_modules=("proj",),
    )

Declared blocks take precedence over tracing. This module imports nothing but torch and
:mod:`resablate.errors`; whoever declares a block imports its class and calls
:func:`register_block` (resablate does so for torchvision's ResNet blocks in
:mod:`resablate.adapters`), as timm's ``_registry.py`` collects model entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from resablate.errors import ConfigError

BlockFn = Callable[[nn.Module, Tensor], Tensor]


def identity(block: nn.Module, x: Tensor) -> Tensor:
    """The identity shortcut (or no activation): returns ``x``."""
    return x


@dataclass(frozen=True)
class BlockAdapter:
    """How surgery sees one residual block class: ``act(main(x) + shortcut(x))``.

    Attributes:
        block_type: The upstream class (exact: a subclass needs its own declaration).
        main: The main (residual) path, everything before the addition.
        shortcut: The identity, or the projection applied to ``x``.
        act: What the block applies after the addition (``identity`` when nothing).
        shortcut_modules: Names of the block's submodules that only the shortcut calls (their
            parameters are inactive once the shortcut is dropped).
    """

    block_type: type[nn.Module]
    main: BlockFn = field(repr=False)
    shortcut: BlockFn = field(repr=False)
    act: BlockFn = field(repr=False)
    shortcut_modules: tuple[str, ...] = ()


_ADAPTERS: dict[type[nn.Module], BlockAdapter] = {}


def register_block(
    block_type: type[nn.Module],
    *,
    main: BlockFn,
    shortcut: BlockFn = identity,
    act: BlockFn = identity,
    shortcut_modules: tuple[str, ...] = (),
) -> BlockAdapter:
    """Declare how surgery handles the residual block class ``block_type``.

    Args:
        block_type: The block class, as it appears in the model.
        main: ``main(block, x)``: the main path, everything before the addition.
        shortcut: ``shortcut(block, x)``: the identity (default) or the projection.
        act: ``act(block, y)``: what follows the addition (default: nothing).
        shortcut_modules: Submodule names only the shortcut calls (e.g. ``("downsample",)``).

    Returns:
        The registered adapter.

    Raises:
        ConfigError: ``block_type`` is not an ``nn.Module`` class or is already declared.
    """
    if not (isinstance(block_type, type) and issubclass(block_type, nn.Module)):
        raise ConfigError(f"register_block needs an nn.Module class, not {block_type!r}")
    if block_type in _ADAPTERS:
        raise ConfigError(
            f"block type {block_type.__module__}.{block_type.__qualname__} is already registered"
        )
    adapter = BlockAdapter(block_type, main, shortcut, act, tuple(shortcut_modules))
    _ADAPTERS[block_type] = adapter
    return adapter


def block_adapter(block_type: type[nn.Module]) -> BlockAdapter | None:
    """The declaration of exactly ``block_type``, or None."""
    return _ADAPTERS.get(block_type)


def registered_blocks() -> tuple[type[nn.Module], ...]:
    """Every declared block class, in declaration order."""
    return tuple(_ADAPTERS)
