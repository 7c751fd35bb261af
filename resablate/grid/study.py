"""A study file: a grid spec and how to run it, in YAML or JSON (the one owner of that format).

A study file holds every key of :class:`~resablate.grid.spec.GridSpec` (the axes, the recipe and
its ``overrides``, ``data``) and an ``execution`` mapping (:class:`Execution`: ``out``,
``device``, ``executor``, ``workers``, ``pack``, ``ray_address``); every key may be left out (its
default applies; ``depths`` defaults to none when ``archs`` are given, as on the command line).
An axis may be one value or a list. ``docs/grid.md`` ("Study files") documents the schema.

:func:`read_study` reads a file, with values given elsewhere (the command line's flags) taking
precedence; a bad key or value is a one-line :class:`~resablate.errors.ConfigError` naming the
file, the line and the key. :func:`dump_study` writes the resolved study as YAML that reads back
to the same cells (the same ids); the grid's store records :meth:`Study.to_dict`.

YAML is read with YAML 1.2's booleans (only ``true``/``false``), so ``residual: [on, off]`` means
the plans, not two booleans as YAML 1.1 would have it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from resablate.atomic import write_text
from resablate.errors import ConfigError, ResablateError
from resablate.grid.spec import AXES, GridSpec

#: Suffixes of study files, by format.
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIX = ".json"
#: The key of the execution mapping.
EXECUTION = "execution"
_TEXT_KEYS = ("family", "source", "data", "bn")
T = TypeVar("T")


@dataclass(frozen=True)
class Execution:
    """How a grid runs (run options of ``run_grid``: none of them changes a cell or its id).

    Attributes:
        out: The grid directory (store, ``results.csv``, ``cells/<cell id>/``).
        device: ``"auto"`` (CUDA when visible, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        executor: ``"local"`` or ``"ray"``.
        workers: Local worker processes or local Ray CPUs; ``None`` = one per visible GPU.
        pack: ``"auto"``, ``"off"`` or a pack size K (``resablate.grid.packs.parse_pack``).
        ray_address: A Ray cluster to join (executor ``ray``); ``None`` = a local Ray.
    """

    out: str = "runs/grid"
    device: str = "auto"
    executor: str = "local"
    workers: int | None = None
    pack: str | int = "auto"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        from resablate.grid.executors import EXECUTORS
        from resablate.grid.packs import parse_pack

        for name in ("out", "device", "executor"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty text", field=name)
        if self.executor not in EXECUTORS:
            legal = ", ".join(EXECUTORS)
            raise ConfigError(
                f"unknown executor {self.executor!r}; executors: {legal}", field="executor"
            )
        workers = self.workers
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ConfigError(f"workers {workers!r} must be a positive integer", field="workers")
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise ConfigError(
                f"ray_address {self.ray_address!r} must be a text", field="ray_address"
            )
        object.__setattr__(self, "pack", parse_pack(self.pack))

    @property
    def run_device(self) -> str | None:
        """The ``device`` of ``run_grid``: ``None`` for ``auto``."""
        return None if self.device == "auto" else self.device

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return dataclasses.asdict(self)


_EXECUTION_KEYS = tuple(f.name for f in dataclasses.fields(Execution))


@dataclass(frozen=True)
class Study:
    """A grid spec and how to run it.

    Attributes:
        spec: The grid's axes, recipe and data.
        execution: Where and how it runs.
    """

    spec: GridSpec
    execution: Execution = Execution()

    def to_dict(self) -> dict[str, Any]:
        """The resolved study as plain types: the spec's keys, then ``execution``."""
        return {**self.spec.to_dict(), EXECUTION: self.execution.to_dict()}


def dump_study(study: Study) -> str:
    """The resolved study as YAML (reads back with :func:`read_study` to the same cells)."""
    import yaml

    return yaml.safe_dump(study.to_dict(), sort_keys=False, default_flow_style=None)


def write_study(study: Study, path: str | os.PathLike[str]) -> Path:
    """Write the resolved study atomically: JSON for a ``.json`` path, else YAML."""
    target = Path(path)
    if target.suffix.lower() == JSON_SUFFIX:
        text = json.dumps(study.to_dict(), indent=2) + "\n"
    else:
        text = dump_study(study)
    write_text(target, text)
    return target


def read_study(
    path: str | os.PathLike[str],
    *,
    spec: Mapping[str, Any] | None = None,
    execution: Mapping[str, Any] | None = None,
) -> Study:
    """Read a study file, the values in ``spec`` and ``execution`` replacing the file's.

    Args:
        path: A ``.yaml``/``.yml`` or ``.json`` file.
        spec: Grid spec fields given elsewhere (the command line); ``overrides`` are merged
            into the file's, field by field.
        execution: :class:`Execution` fields given elsewhere.

    Raises:
        ConfigError: A missing or unreadable file, an unknown key or a bad value: one line naming
            the file, the line (when the value came from the file) and the key. A bad value
            given in ``spec`` or ``execution`` keeps its field (the CLI names its flag).
    """
    source = Path(path).expanduser()
    data, lines = _load(source)
    given_spec, given_execution = dict(spec or {}), dict(execution or {})

    def where(key: str) -> str:
        line = lines.get(key)
        return f"{source}:{line}" if line is not None else str(source)

    run = data.pop(EXECUTION, None) or {}
    if not isinstance(run, Mapping):
        keys = ", ".join(_EXECUTION_KEYS)
        raise ConfigError(f"{where(EXECUTION)}: {EXECUTION} must be a mapping of {keys}")
    _check_keys(run, _EXECUTION_KEYS, f"{EXECUTION}.", where)
    _check_keys(data, (*_SPEC_KEYS, *_RENAMED), "", where)
    values = _spec_values(data, where)
    overrides = {**values.pop("overrides", {}), **given_spec.pop("overrides", {})}
    values.update(given_spec)
    values["overrides"] = overrides
    if "depths" not in values and values.get("archs"):
        values["depths"] = ()
    from_file = {key for key in (*data, *(f"overrides.{k}" for k in data.get("overrides") or {}))}
    grid = _built(lambda: GridSpec.from_dict(values), from_file - set(given_spec), where)
    chosen = {**run, **given_execution}
    ran = _built(lambda: Execution(**chosen), {f"{EXECUTION}.{k}" for k in run}, where)
    return Study(grid, ran)


_SPEC_KEYS = (*(f.name for f in dataclasses.fields(GridSpec)), EXECUTION)
#: Keys of earlier releases ``GridSpec.from_dict`` still reads (not offered in messages).
_RENAMED = ("arch", "pretrained")


def _check_keys(
    data: Mapping[str, Any], known: tuple[str, ...], prefix: str, where: Callable[[str], str]
) -> None:
    for key in data:
        if key not in known:
            shown = ", ".join(k for k in known if k not in _RENAMED)
            raise ConfigError(f"{where(prefix + str(key))}: unknown key {key!r}; keys: {shown}")


def _spec_values(data: Mapping[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """The file's spec values in ``GridSpec.from_dict``'s form (one axis value -> a list)."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in (*AXES, "residual_alpha") and value is not None and not isinstance(value, list):
            value = [value]
        elif key in _TEXT_KEYS and not isinstance(value, str):
            raise ConfigError(f"{where(key)}: {key} must be a text, not {value!r}")
        elif key == "recipe" and value is not None and not isinstance(value, str):
            raise ConfigError(f"{where(key)}: recipe must be a recipe name, not {value!r}")
        elif key == "overrides" and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{where(key)}: overrides must be a mapping of recipe fields")
        values[key] = {} if key == "overrides" and value is None else value
    return values


def _built(make: Callable[[], T], file_keys: set[str], where: Callable[[str], str]) -> T:
    """``make()``; its error about a value of the file names the file, line and key instead of
    the field (one about a value given elsewhere keeps its field: the CLI names its flag)."""
    try:
        return make()
    except ResablateError as exc:
        key = _file_key(exc.field, file_keys)
        if exc.field is not None and key is None:
            raise
        shown = f"{key}: " if key else ""
        raise type(exc)(f"{where(key or '')}: {shown}{exc}") from None


def _file_key(field: str | None, file_keys: set[str]) -> str | None:
    if field is None:
        return None
    for key in (field, f"overrides.{field}", f"{EXECUTION}.{field}"):
        if key in file_keys:
            return key
    return None


# ----------------------------------------------------------------------------- reading files


def _load(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's top-level mapping and the line of each key (``"execution.pack"`` nested)."""
    suffix = path.suffix.lower()
    if suffix not in (*YAML_SUFFIXES, JSON_SUFFIX):
        raise ConfigError(f"study file {path} must end in .yaml, .yml or .json", field="spec")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read study file {path}: {reason}", field="spec") from None
    data, lines = _load_json(path, text) if suffix == JSON_SUFFIX else _load_yaml(path, text)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file holds a mapping of keys, not a list or a value")
    return data, lines


def _load_json(path: Path, text: str) -> tuple[Any, dict[str, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    lines: dict[str, int] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            found = re.search(rf'"{re.escape(str(key))}"\s*:', text)
            start = found.start() if found else 0
            lines[str(key)] = text.count("\n", 0, start) + 1
            for inner in value if isinstance(value, dict) else ():
                hit = re.compile(rf'"{re.escape(str(inner))}"\s*:').search(text, start)
                if hit:
                    lines[f"{key}.{inner}"] = text.count("\n", 0, hit.start()) + 1
    return data, lines


def _yaml_loader() -> type:
    """A safe loader with YAML 1.2's booleans (``on``/``off``/``yes``/``no`` stay texts)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def _load_yaml(path: Path, text: str) -> tuple[Any, dict[str, int]]:
    import yaml

    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for inner, _ in value.value:
                    lines[f"{key.value}.{inner.value}"] = inner.start_mark.line + 1
    return data, lines
