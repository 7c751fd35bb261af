"""The package layout: what pyproject installs and what `import resablate` costs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    inits = (ROOT / "resablate").rglob("__init__.py")
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in inits}
    assert listed == found | {"resablate_cli"}


def test_cli_is_installed_as_resablate_cli_not_bare_cli() -> None:
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('resablate_cli') is not None, u.find_spec('cli'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.split() == ["True", "None"]
