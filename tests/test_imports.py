"""The core imports cheaply: no CLI, no rendering, no timm, no training stack, no fvcore or
platformdirs (neither is a runtime dependency)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = (
    "typer",
    "rich",
    "matplotlib",
    "timm",
    "fvcore",
    "platformdirs",
    "resablate.engine",
    "resablate.data",
    "resablate.grid",
    "resablate_cli",
)

# One subprocess (torch is imported once): import times, then what surgery on a torchvision and
# on a timm model pulls in.
_PROBE = """
import json, os, sys, time
os.environ.pop("RESABLATE_CACHE", None)
def loaded():
    return sorted({m for m in sys.modules for f in FORBIDDEN if m == f or m.startswith(f + ".")})
start = time.perf_counter()
import resablate
bare = time.perf_counter() - start
torch_on_bare = "torch" in sys.modules
start = time.perf_counter()
from resablate import build_model, count, drop_residual, freeze
from resablate.paths import cache_root
core = time.perf_counter() - start
cache_root()  # the user cache folder, found without platformdirs
after_import = loaded()
import torch
with torch.device("meta"):
    model = build_model("resnet18")
    drop_residual(model)
    freeze(model, "conv1-2")
    count(model, (3, 32, 32))
    after_torchvision = loaded()
    timm_model = build_model("resnet18", source="timm")
    drop_residual(timm_model)
print(json.dumps({
    "bare": bare, "core": core, "torch_on_bare": torch_on_bare, "after_import": after_import,
    "after_torchvision": after_torchvision, "timm_loaded": "timm" in sys.modules,
    "timm_block": type(timm_model.layer1[0]).__name__,
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    code = f"FORBIDDEN = {FORBIDDEN!r}\n{_PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_import_pulls_in_nothing_above_the_core(probe: dict) -> None:
    assert probe["torch_on_bare"] is False  # `import resablate` alone is lazy
    assert probe["after_import"] == []
    # reported in the README; the bound only catches an accidental heavy import
    print(f"import resablate: {probe['bare'] * 1e3:.1f} ms; core names: {probe['core']:.2f} s")
    assert probe["core"] < 60


def test_timm_is_imported_only_when_a_timm_model_is_met(probe: dict) -> None:
    assert probe["after_torchvision"] == []
    assert probe["timm_loaded"] is True
    assert probe["timm_block"] == "RewiredBasicBlock"
