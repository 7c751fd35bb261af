"""A bare GPU machine has torch, torchvision, timm, transformers, typer, rich and safetensors (and
what they need): the library, the CLI, benchmarks/gpu_acceptance.py and ``pytest -m gpu`` must run
there. Here, in a fresh interpreter, the other packages are made unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING = (
    "fvcore", "iopath", "yacs", "termcolor", "platformdirs", "sklearn", "hypothesis", "ray",
    "scipy", "skimage", "matplotlib", "importlinter",
)  # fmt: skip

_PROBE = """
import json, sys
MISSING = set(sys.argv[1].split(","))
# None in sys.modules: `import X` raises ModuleNotFoundError and importlib.util.find_spec(X) is
# None, as when X is not installed.
sys.modules.update(dict.fromkeys(MISSING))
sys.path[:0] = [sys.argv[2] + "/tests", sys.argv[2] + "/benchmarks"]
import resablate, resablate.engine, resablate.grid.packs, resablate_cli.app
from resablate.paths import cache_root
cache_root()
import gpu_acceptance, train_throughput, packing, data_pipeline
import pytest
options = ["-q", "-m", "gpu", "-p", "no:cacheprovider", "-p", "pytest_timeout"]
code = pytest.main(["--collect-only", *options, sys.argv[2] + "/tests"])
leaked = sorted({m.split(".")[0] for m, v in sys.modules.items() if v} & MISSING)
print(json.dumps({"collect": int(code), "leaked": leaked}))
"""


@pytest.mark.slow
def test_gpu_tests_and_acceptance_script_need_none_of_the_dev_packages() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(MISSING), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        # plugins of the blocked packages (hypothesis's) are not there to load
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # 0: collected without errors (modules needing a dev package skip or import it lazily)
    assert found == {"collect": 0, "leaked": []}, done.stdout[-3000:]
