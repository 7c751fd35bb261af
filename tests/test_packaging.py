"""The package layout: what pyproject installs and what `import resablate` costs."""

from __future__ import annotations

import re
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


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_are_what_the_library_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    # paths.py finds the user cache folder itself; only tests and benchmarks run fvcore.
    assert not runtime & {"platformdirs", "fvcore"}
    assert "fvcore" in _requirement_names(project["optional-dependencies"]["dev"])
    sources = [*(ROOT / "resablate").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    imports = re.compile(r"^\s*(?:import|from)\s+(fvcore|platformdirs)\b", re.MULTILINE)
    assert [str(p) for p in sources if imports.search(p.read_text())] == []


def test_each_tracker_is_an_extra_of_its_name_and_in_dev() -> None:
    from resablate.choices import TRACKERS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = set(extras["dev"])
    for name in TRACKERS:
        assert extras[name] and set(extras[name]) <= dev
