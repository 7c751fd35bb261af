"""Rewired residual blocks: surgery changes a block's ``__class__`` to a subclass of its own class.

A rewired block keeps every attribute, submodule, parameter and buffer of the upstream block (so
state_dict keys and values, ``.to(device)`` and ``torch.compile`` keep working); only ``forward``
differs. Per residual site (one for a ResNet block, two for a ViT block: attention and MLP) the
block holds two plain attributes, tuples in site order:

- ``residual_alpha``: the site computes ``main(x) + alpha * shortcut(x)``; with 0 the shortcut
  (and any projection on it) is not run at all: ``main(x)``.
- ``lesioned``: the main path is not run: the site computes ``shortcut(x)``, the block with its
  residual branch's contribution removed (Veit et al. 2016).

Whatever the block applies after the addition (a ResNet's final ReLU) stays. The rewired subclass
is made once per upstream class (:func:`rewired_class`); it pickles and deep-copies as
"rebuild from the upstream class, then rewire again", so a rewired model pickles wherever its
upstream blocks do. Restoring gives the block back its upstream class and removes the attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

import resablate.adapters  # noqa: F401  (declares torchvision's ResNet blocks)
from resablate._subclass import made_subclass, rebuild_as
from resablate._trace import (
    Mode,
    Traced,
    Untraceable,
    analyse,
    live_targets,
    reached_targets,
    rewired_forward,
    site_names,
    unused_params,
)
from resablate.blocks import BlockAdapter, block_adapter
from resablate.errors import UnsupportedBlockError

_FORWARD = "_resablate_forward"
_STATE = ("residual_alpha", "lesioned")

# One site's wiring: (alpha, lesioned); (1.0, False) is the upstream wiring.
Wiring = tuple[float, bool]
UNTOUCHED: Wiring = (1.0, False)


@dataclass(frozen=True)
class BlockView:
    """How surgery sees one residual block: by its declaration, or by tracing it.

    Attributes:
        upstream: The block's upstream class.
        adapter: The declaration from :mod:`resablate.blocks`, or None.
        traced: The traced forward, when not declared.
        sites: Site suffixes: ``("",)`` for one site, ``("attn", "mlp")`` for a ViT block.
    """

    upstream: type[nn.Module]
    adapter: BlockAdapter | None
    traced: Traced | None
    sites: tuple[str, ...]


def upstream_of(block: nn.Module) -> type[nn.Module]:
    """The upstream class of ``block`` (its own class unless surgery rewired it)."""
    cls = type(block)
    upstream = cls.__dict__.get("upstream_class")  # set on the rewired class itself only
    return upstream if isinstance(upstream, type) else cls


def view(block: nn.Module) -> BlockView | Untraceable | None:
    """``block`` as a residual block, :class:`Untraceable`, or None when it adds no shortcut."""
    upstream = upstream_of(block)
    adapter = block_adapter(upstream)
    if adapter is not None:
        return BlockView(upstream, adapter, None, ("",))
    traced = analyse(block, upstream)
    if isinstance(traced, Untraceable):
        return traced
    if not traced.sites:
        return None
    return BlockView(upstream, None, traced, site_names(traced.sites))


def wiring(block: nn.Module, sites: int) -> tuple[Wiring, ...]:
    """The current wiring of each of the block's ``sites`` residual sites."""
    alphas = block.__dict__.get("residual_alpha", (1.0,) * sites)
    lesions = block.__dict__.get("lesioned", (False,) * sites)
    return tuple((float(a), bool(b)) for a, b in zip(alphas, lesions, strict=True))


def _mode(state: Wiring) -> Mode:
    alpha, lesioned = state
    if lesioned:
        return ("lesion", alpha)
    if alpha == 0.0:
        return ("drop", 0.0)
    return ("keep", 1.0) if alpha == 1.0 else ("scale", alpha)


def unwire(block: nn.Module) -> type[nn.Module]:
    """Give ``block`` back its upstream class and drop the wiring attributes; return the class."""
    upstream = upstream_of(block)
    block.__class__ = upstream
    for key in (*_STATE, _FORWARD):
        block.__dict__.pop(key, None)
    return upstream


def set_wiring(block: nn.Module, seen: BlockView, states: tuple[Wiring, ...]) -> None:
    """Rewire ``block`` to ``states`` (one per site); all untouched gives the upstream block."""
    if all(s == UNTOUCHED for s in states):
        unwire(block)
        return
    block.__class__ = rewired_class(seen.upstream)
    block.__dict__["residual_alpha"] = tuple(a for a, _ in states)
    block.__dict__["lesioned"] = tuple(b for _, b in states)
    block.__dict__[_FORWARD] = _forward(block, seen, states)


def _forward(block: nn.Module, seen: BlockView, states: tuple[Wiring, ...]) -> Callable[..., Any]:
    if seen.adapter is not None:
        return _adapter_forward(seen.adapter, _mode(states[0]))
    assert seen.traced is not None
    return rewired_forward(block, seen.traced, tuple(_mode(s) for s in states))


def _adapter_forward(adapter: BlockAdapter, mode: Mode) -> Callable[[nn.Module, Tensor], Tensor]:
    kind, alpha = mode
    main, shortcut, act = adapter.main, adapter.shortcut, adapter.act

    def forward(block: nn.Module, x: Tensor) -> Tensor:
        if kind == "lesion":
            return act(block, shortcut(block, x))
        out = main(block, x)
        if kind == "keep":
            out = out + shortcut(block, x)
        elif kind == "scale":
            out = out + alpha * shortcut(block, x)
        return act(block, out)

    return forward


def inactive_params(block: nn.Module, seen: BlockView, states: tuple[Wiring, ...]) -> int:
    """Parameters of ``block`` its forward reaches untouched but not wired as ``states``."""
    if seen.adapter is not None:
        kind = _mode(states[0])[0]
        total = sum(p.numel() for p in block.parameters())
        shortcut = sum(
            p.numel()
            for name in seen.adapter.shortcut_modules
            if isinstance(getattr(block, name, None), nn.Module)
            for p in getattr(block, name).parameters()
        )
        return {"lesion": total - shortcut, "drop": shortcut}.get(kind, 0)
    assert seen.traced is not None
    before = reached_targets(seen.traced)
    after = live_targets(seen.traced, tuple(_mode(s) for s in states))
    return unused_params(block, before, after)


class RewiredBlock(nn.Module):
    """Mixin placed before the upstream block class; see the module docstring."""

    upstream_class: ClassVar[type[nn.Module]]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__[_FORWARD](self, *args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> Any:  # type: ignore[override]
        state = {k: v for k, v in self.__dict__.items() if k != _FORWARD}
        return (rebuild_as, (rewired_class, self.upstream_class), state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        seen = view(self)
        if not isinstance(seen, BlockView):
            raise UnsupportedBlockError(
                f"cannot rewire {seen_name(self)} again: it is no longer a residual block "
                "surgery can see (declare it with resablate.register_block before loading)"
            )
        set_wiring(self, seen, wiring(self, len(seen.sites)))


def seen_name(block: nn.Module) -> str:
    """Dotted name of ``block``'s upstream class."""
    cls = upstream_of(block)
    return f"{cls.__module__}.{cls.__qualname__}"


_CLASSES: dict[type, type] = {}


def rewired_class(upstream: type[nn.Module]) -> type[nn.Module]:
    """The rewired subclass of ``upstream`` (made once, named ``Rewired<Name>``)."""
    doc = f"{upstream.__qualname__} with rewired residual connections."
    return made_subclass(_CLASSES, upstream, RewiredBlock, "Rewired", __name__, doc)
