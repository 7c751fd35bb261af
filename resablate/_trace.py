"""Finding residual connections by tracing a module's own ``forward`` with ``torch.fx``.

A module is traced with every child module as one opaque call, so the graph shows only the
module's own code. A *residual site* is an addition whose two operands both depend on the current
residual stream: the module's input, then the output of the previous site (a ViT block has two
sites, attention and MLP). Of the two operands, the *shortcut* is the one whose own branch holds
fewer parameters (then fewer operations): the identity, or a projection; the other is the main
path.

:func:`rewired_forward` turns the traced graph into a new ``forward`` where each site keeps its
addition, weights the shortcut (``main + alpha * shortcut``), drops it (``main``; the shortcut
branch is not run) or drops the main path (``shortcut``, a lesion), and reports which parameters
the new forward no longer reaches.
"""

from __future__ import annotations

import dis
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import fx, nn

_ADDS = {operator.add, operator.iadd, torch.add, torch.Tensor.add}
_ADD_METHODS = {"add", "add_"}
_KEEP_UNUSED = {torch._assert}  # side-effect calls kept although nothing reads their output

# A site's mode: ("keep", 1.0), ("scale", alpha), ("drop", 0.0) or ("lesion", alpha).
Mode = tuple[str, float]


@dataclass(frozen=True)
class Site:
    """One residual addition in a traced forward.

    Attributes:
        name: The child module with most parameters on the main path (``"attn"``, ``"mlp"``),
            used to name the site when a module has several.
        add: The addition node.
        main: The main-path operand.
        shortcut: The shortcut operand.
    """

    name: str
    add: fx.Node
    main: fx.Node
    shortcut: fx.Node


@dataclass(frozen=True)
class Traced:
    """A module's traced forward and its residual sites (empty when it has none)."""

    graph: fx.Graph
    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Untraceable:
    """A module ``torch.fx`` could not trace.

    Attributes:
        reason: The first line of the tracer's error.
        maybe_residual: Its ``forward`` adds something and it has children with parameters: it
            could be a residual block that surgery cannot see.
    """

    reason: str
    maybe_residual: bool


class _OwnCode(fx.Tracer):
    """Traces only the root's own code: every child module is a single call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


_CACHE: WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], Traced | Untraceable]] = (
    WeakKeyDictionary()
)


@contextmanager
def as_class(module: nn.Module, cls: type[nn.Module]) -> Iterator[None]:
    """Temporarily give ``module`` the class ``cls`` (to trace a rewired block's upstream code)."""
    current = type(module)
    module.__class__ = cls
    try:
        yield
    finally:
        module.__class__ = current


def analyse(module: nn.Module, upstream: type[nn.Module]) -> Traced | Untraceable:
    """Trace ``module`` as an instance of ``upstream`` and find its residual sites (cached)."""
    key = (upstream, tuple((name, id(child)) for name, child in module.named_children()))
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with as_class(module, upstream):
            graph = _OwnCode().trace(module)
    except Exception as error:  # any tracing failure means "cannot see inside"
        lines = str(error).strip().splitlines() or [type(error).__name__]
        result: Traced | Untraceable = Untraceable(lines[0], _maybe_residual(module, upstream))
    else:
        result = Traced(graph, _sites(module, graph))
    _CACHE[module] = (key, result)
    return result


def _maybe_residual(module: nn.Module, upstream: type[nn.Module]) -> bool:
    has_weights = any(
        p.numel() for child in module.children() for p in child.parameters(recurse=True)
    )
    if not has_weights:
        return False
    forward = upstream.forward
    code = getattr(forward, "__code__", None)
    if code is None:
        return False
    return any(
        (i.opname == "BINARY_OP" and i.argrepr in ("+", "+="))
        or (i.opname in ("LOAD_METHOD", "LOAD_ATTR") and i.argval in _ADD_METHODS)
        for i in dis.get_instructions(code)
    )


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADDS
    return node.op == "call_method" and node.target in _ADD_METHODS


def _ancestors(graph: fx.Graph) -> dict[fx.Node, set[fx.Node]]:
    anc: dict[fx.Node, set[fx.Node]] = {}
    for node in graph.nodes:
        mine = {node}
        for parent in node.all_input_nodes:
            mine |= anc[parent]
        anc[node] = mine
    return anc


def _params_of(module: nn.Module, nodes: set[fx.Node]) -> dict[str, int]:
    """Parameter count per child module / attribute reached by ``nodes``."""
    sizes: dict[str, int] = {}
    for node in nodes:
        if node.op == "call_module":
            sub = module.get_submodule(str(node.target))
            sizes[str(node.target)] = sum(p.numel() for p in sub.parameters())
        elif node.op == "get_attr":
            value = _fetch(module, str(node.target))
            sizes[str(node.target)] = value.numel() if isinstance(value, nn.Parameter) else 0
    return sizes


def _fetch(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _sites(module: nn.Module, graph: fx.Graph) -> tuple[Site, ...]:
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    if not placeholders or not outputs:
        return ()
    anc = _ancestors(graph)
    reaches_output = anc[outputs[0]]
    stream = placeholders[0]
    sites: list[Site] = []
    for node in nodes:
        if not _is_add(node) or node not in reaches_output or len(node.args) < 2:
            continue
        left, right = node.args[0], node.args[1]
        if not (isinstance(left, fx.Node) and isinstance(right, fx.Node)):
            continue
        if stream not in anc[left] or stream not in anc[right]:
            continue
        only_left, only_right = anc[left] - anc[right], anc[right] - anc[left]
        left_size = (sum(_params_of(module, only_left).values()), len(only_left))
        right_size = (sum(_params_of(module, only_right).values()), len(only_right))
        main, shortcut, branch = (
            (left, right, only_left) if left_size >= right_size else (right, left, only_right)
        )
        sizes = _params_of(module, branch)
        name = max(sizes, key=lambda k: sizes[k]).split(".")[0] if sizes else ""
        sites.append(Site(name, node, main, shortcut))
        stream = node
    return tuple(sites)


def site_names(sites: tuple[Site, ...]) -> tuple[str, ...]:
    """Names of a module's sites: ``("",)`` for one site, else the main-path children's names."""
    if len(sites) == 1:
        return ("",)
    names = [s.name for s in sites]
    if all(names) and len(set(names)) == len(names):
        return tuple(names)
    return tuple(f"residual{i}" for i in range(len(sites)))


@dataclass(frozen=True)
class _Plan:
    alias: dict[fx.Node, fx.Node]  # a removed addition -> the operand that replaces it
    scaled: dict[fx.Node, tuple[fx.Node, float]]  # a scaled addition -> (its shortcut, alpha)
    live: set[fx.Node]  # nodes the rewired forward still computes

    def resolve(self, node: fx.Node) -> fx.Node:
        while node in self.alias:
            node = self.alias[node]
        return node


def _plan(traced: Traced, modes: tuple[Mode, ...]) -> _Plan:
    alias: dict[fx.Node, fx.Node] = {}
    scaled: dict[fx.Node, tuple[fx.Node, float]] = {}
    for site, (mode, alpha) in zip(traced.sites, modes, strict=True):
        if mode == "drop":
            alias[site.add] = site.main
        elif mode == "lesion":
            alias[site.add] = site.shortcut
        elif mode == "scale":
            scaled[site.add] = (site.shortcut, alpha)
    plan = _Plan(alias, scaled, set())
    plan.live.update(_live(traced.graph, plan.resolve))
    return plan


def live_targets(traced: Traced, modes: tuple[Mode, ...]) -> frozenset[str]:
    """Paths of the child modules and attributes the forward rewired as ``modes`` reaches."""
    return _targets(_plan(traced, modes).live)


def rewired_forward(
    module: nn.Module, traced: Traced, modes: tuple[Mode, ...]
) -> Callable[..., Any]:
    """The module's forward with each site rewired as ``modes`` says.

    Returns:
        ``forward(self, *args, **kwargs)`` with the upstream signature; it reads the module's
        submodules and attributes through ``self``.
    """
    plan = _plan(traced, modes)
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in traced.graph.nodes:
        if node in plan.alias or (node not in plan.live and node.op != "placeholder"):
            continue
        if node in plan.scaled:
            shortcut, alpha = plan.scaled[node]
            weighted = new.call_function(operator.mul, (env[plan.resolve(shortcut)], alpha))
            operands = [weighted if a is shortcut else env[plan.resolve(a)] for a in node.args[:2]]
            env[node] = new.call_function(operator.add, tuple(operands))
            continue
        env[node] = new.node_copy(node, lambda n: env[plan.resolve(n)])
    code = new.python_code(root_module="self")
    namespace: dict[str, Any] = dict(code.globals)
    exec(compile(code.src, f"<resablate rewired {type(module).__name__}>", "exec"), namespace)
    return namespace["forward"]


def _live(graph: fx.Graph, resolve: Callable[[fx.Node], fx.Node]) -> set[fx.Node]:
    roots = [
        n
        for n in graph.nodes
        if n.op == "output" or (n.op == "call_function" and n.target in _KEEP_UNUSED)
    ]
    live: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(resolve(p) for p in node.all_input_nodes)
    return live


def _targets(nodes: set[fx.Node]) -> frozenset[str]:
    return frozenset(str(n.target) for n in nodes if n.op in ("call_module", "get_attr"))


def reached_targets(traced: Traced) -> frozenset[str]:
    """Paths of the child modules and attributes the upstream forward calls or reads."""
    return _targets(set(traced.graph.nodes))


def unused_params(module: nn.Module, before: frozenset[str], after: frozenset[str]) -> int:
    """Parameters of ``module`` the ``before`` targets reach and the ``after`` targets do not.

    A target (child module or attribute path) reaches the parameters at or below its path; a
    parameter shared with a target still reached stays active.
    """

    def reached(name: str, targets: frozenset[str]) -> bool:
        return any(name == t or name.startswith(t + ".") for t in targets)

    seen: dict[int, tuple[int, bool, bool]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        size, was, still = seen.get(id(param), (param.numel(), False, False))
        seen[id(param)] = (size, was or reached(name, before), still or reached(name, after))
    return sum(size for size, was, still in seen.values() if was and not still)
