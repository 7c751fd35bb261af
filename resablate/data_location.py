"""Where a dataset is, as users write it: a path, optionally followed by ``::`` and column options.

``PATH`` is an image folder, a Hugging Face ``datasets`` folder (``save_to_disk``) or parquet
files. Table layouts (the last two) take options naming their columns when the names are not
found automatically: ``PATH::image=img,label=y``. This module is the one owner of that text: it
parses it, validates it and writes its canonical form (absolute path, options sorted by key),
which is what a cell records (``docs/data.md``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from resablate.errors import ConfigError, DataNotFoundError

SEPARATOR = "::"
OPTIONS: Mapping[str, str] = MappingProxyType(
    {"image": "the column holding the encoded images", "label": "the column holding the labels"}
)
"""The column options of table layouts, with what each names."""


@dataclass(frozen=True)
class DataLocation:
    """A dataset path and the column options given with it.

    Attributes:
        path: The dataset (absolute; ``~`` expanded, symbolic links resolved).
        options: Option -> value, keys from :data:`OPTIONS` (only those given).
    """

    path: Path
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> DataLocation:
        """Read ``PATH`` or ``PATH::key=value,key=value``.

        Raises:
            ConfigError: An unknown option, an option without ``=value`` or given twice.
        """
        path_text, separator, option_text = str(text).partition(SEPARATOR)
        options: dict[str, str] = {}
        for item in option_text.split(",") if separator else ():
            key, equals, value = (part.strip() for part in item.partition("="))
            if key not in OPTIONS:
                legal = ", ".join(OPTIONS)
                raise ConfigError(
                    f"unknown dataset option {key!r} in {str(text)!r}; options: {legal}"
                )
            if not equals or not value or key in options:
                raise ConfigError(
                    f"dataset option {key!r} in {str(text)!r} needs one value: "
                    f"{path_text}{SEPARATOR}{key}=COLUMN"
                )
            options[key] = value
        path = Path(path_text).expanduser().resolve()
        return cls(path, MappingProxyType(dict(sorted(options.items()))))

    @property
    def text(self) -> str:
        """The canonical form: the absolute path, then the options sorted by key."""
        if not self.options:
            return str(self.path)
        joined = ",".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.path}{SEPARATOR}{joined}"

    def require_exists(self) -> DataLocation:
        """This location, once its path is known to exist.

        Raises:
            DataNotFoundError: The path does not exist.
        """
        if not self.path.exists():
            what = "file" if self.path.suffix == ".parquet" else "folder"
            raise DataNotFoundError(f"dataset {what} {self.path} does not exist", field="data")
        return self
