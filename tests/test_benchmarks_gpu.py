"""benchmarks/gpu_acceptance.py without a GPU: one line and exit 0; its checks run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_acceptance.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-pytest"],
        capture_output=True,
        text=True,
        check=False,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0
    assert done.stdout == (
        "gpu_acceptance: no CUDA device is visible; nothing to check (run it on a GPU machine)\n"
    )


def test_bf16_peaks_by_device_name() -> None:
    acceptance = _load()
    assert acceptance.bf16_peak("NVIDIA H100 80GB HBM3", None) == 989.0
    assert acceptance.bf16_peak("NVIDIA H100 PCIe", None) == 756.0
    assert acceptance.bf16_peak("NVIDIA H200", None) == 989.0
    assert acceptance.bf16_peak("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert acceptance.bf16_peak("Some GPU", None) is None
    assert acceptance.bf16_peak("NVIDIA H100 PCIe", 500.0) == 500.0


@pytest.mark.slow
def test_precision_and_resume_checks_pass_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acceptance = _load()
    # 24 px images, cropped to 18 px: ResNet-18's layer4 then sees 2 x 2 maps. At 16 px (12 px
    # crops) it sees 1 x 1 maps, where oneDNN's bf16 weight gradient of the 3 x 3 stride-2
    # convolution leaves some entries unwritten, so runs differ (docs/training.md).
    monkeypatch.setattr(acceptance, "TINY", {"images": 64, "size": 24, "batch": 8})
    precision = acceptance.check_precisions(tmp_path, "cpu")
    assert [(c.name, c.ok) for c in precision] == [
        ("bf16 tiny run ends with a finite loss", True),
        ("parameters are channels_last", True),
        ("fp16 tiny run ends with a finite loss", True),
    ]
    assert precision[1].detail == "20/20 4-d parameters"
    resume = acceptance.check_resume(tmp_path, "cpu")
    # On the CPU the resumed run is bitwise the uninterrupted one.
    assert resume == acceptance.Check(
        "stop and resume", True, "resumed from step 5; max |Δw| vs uninterrupted 0.00e+00"
    )


@pytest.mark.gpu
def test_acceptance_sync_check_passes_on_the_gpu(tmp_path: Path) -> None:
    check = _load().check_no_sync(tmp_path)
    assert check.ok, check.detail
    assert check.detail == "8 steps under set_sync_debug_mode('error'), status done"


def test_without_cuda_out_gets_a_json_saying_so(tmp_path: Path) -> None:
    # From another folder and without PYTHONPATH: the script finds the working tree itself.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-pytest", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "acceptance.json").read_text())
    assert report == {"cuda": False, "checks": []}
