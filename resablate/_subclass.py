"""Subclasses made on demand for an upstream class (rewired blocks, held BatchNorm layers).

Surgery and freezing change a module's ``__class__`` to a subclass of its own class that only
changes behaviour. Such a subclass is made once per upstream class and pickles (and deep-copies)
as "rebuild an instance of the upstream class, then give it the subclass again", so a model
pickles wherever its upstream modules do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast


def made_subclass(
    cache: dict[type, type], upstream: type, mixin: type, prefix: str, module: str, doc: str
) -> type:
    """``{prefix}{Name}(mixin, upstream)`` with ``upstream_class = upstream``, made once."""
    made = cache.get(upstream)
    if made is None:
        name = f"{prefix}{upstream.__name__}"
        namespace = {"upstream_class": upstream, "__module__": module, "__qualname__": name}
        made = type(name, (mixin, upstream), {**namespace, "__doc__": doc})
        cache[upstream] = made
    return made


def rebuild_as(make: Callable[[type], type], upstream: type) -> Any:
    """An empty instance of ``upstream`` given the class ``make(upstream)``; pickle then sets its
    state. ``make`` must be a module-level function (pickled by reference)."""
    instance = cast(Any, upstream).__new__(upstream)
    instance.__class__ = make(upstream)
    return instance
