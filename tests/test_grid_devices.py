"""Devices in the grid: CUDA asked for where none is visible, per-GPU local workers, the spawn
guard, the dry run's probe running as the engine runs."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from grid_helpers import tiny_grid_args, write_tiny_dataset
from torch import nn
from typer.testing import CliRunner

from resablate.errors import ConfigError
from resablate.grid import executors
from resablate.grid.executors import WORKERS_EXITED, LocalExecutor, _worker_main
from resablate.grid.job import Job
from resablate.grid.plan import _seconds_per_step
from resablate.recipes import get_recipe
from resablate_cli.app import app


def _runner(*args: object, **kwargs: object) -> None:
    raise AssertionError("no cell may run")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "error: device 'cuda' asked for, but no CUDA device is visible; use cpu"),
        ("cuda:1", "error: device 'cuda:1' asked for, but no CUDA device is visible; use cpu"),
    ],
)
def test_grid_on_cuda_without_cuda_is_refused_up_front(
    tmp_path: Path, device: str, message: str
) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "out"
    args = [a if a != "cpu" else device for a in tiny_grid_args(data, out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [message]
    assert not out.exists()  # no store: no cell recorded at all, let alone as failed


def test_cuda_index_beyond_the_visible_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as caught:
        LocalExecutor(_runner, device="cuda:2", workers=2)
    assert str(caught.value) == (
        "device 'cuda:2' asked for, but 2 CUDA device(s) are visible (cuda:0 to cuda:1)"
    )


def test_local_workers_spread_over_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    spread = ("cuda:0", "cuda:1", "cuda:2", "cuda:0")
    assert LocalExecutor(_runner, device="cuda", workers=4).worker_devices == spread
    assert LocalExecutor(_runner, workers=4).worker_devices == spread
    assert LocalExecutor(_runner, device="cuda:1", workers=2).worker_devices == ("cuda:1",) * 2
    assert LocalExecutor(_runner, device="cpu", workers=2).worker_devices == ("cpu", "cpu")


def test_a_worker_makes_its_gpu_current_and_takes_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    current: list[str] = []
    threads: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for index, device in enumerate(("cuda:1", "cpu")):
        tasks: queue.Queue = queue.Queue()
        tasks.put(None)  # the stop marker: the worker only sets up and ends
        _worker_main(index, _runner, device, 3 - index, tasks, queue.Queue())
    assert current == ["cuda:1"]
    assert threads == [3, 2]


def test_local_workers_divide_the_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two workers with all of a 2-core CPU's threads each trained 241 images/s together, one
    # worker alone 457, two with one thread each 634 (ResNet-18, 32x32, docs/grid.md).
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    threads = [LocalExecutor(_runner, device="cpu", workers=n).worker_threads for n in (1, 2, 3)]
    assert threads == [8, 4, 2]
    assert LocalExecutor(_runner, device="cpu", workers=16).worker_threads == 1


class _DeadProcess:
    """A worker that died while starting (what a script without a __main__ guard produces)."""

    exitcode = 1

    def __init__(self, **kwargs: object) -> None:
        pass

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


class _Context:
    Process = _DeadProcess

    @staticmethod
    def Queue() -> queue.Queue:
        return queue.Queue()


def test_workers_that_all_exit_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors.multiprocessing, "get_context", lambda method: _Context)
    runner = LocalExecutor(_runner, device="cpu", workers=2)
    with pytest.raises(ConfigError) as caught:
        runner._run_workers(
            [_job("a"), _job("b")], lambda *a: None, lambda *a: None, lambda *a: None
        )
    assert str(caught.value) == WORKERS_EXITED
    assert 'under `if __name__ == "__main__":`' in WORKERS_EXITED


class _Cell:
    """Stands in for a cell that never runs."""

    def __init__(self, cell_id: str) -> None:
        self.cell_id = cell_id


def _job(cell_id: str) -> Job:
    return Job.single(_Cell(cell_id), cell_id)  # type: ignore[arg-type]


class _AutocastProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        self.seen.add((torch.is_autocast_enabled("cpu"), channels_last and not x.is_contiguous()))
        return self.fc(x.flatten(1))


def test_time_probe_runs_the_engines_step() -> None:
    recipe = get_recipe("demo", image_size=8, batch_size=4)
    fp32 = _AutocastProbe()
    _seconds_per_step(fp32, recipe, 2, torch.device("cpu"), 1, 10.0)
    assert fp32.seen == {(False, False)}
    bf16 = _AutocastProbe()
    bf16_recipe = recipe.replace(amp="bf16", channels_last=True)
    _seconds_per_step(bf16, bf16_recipe, 2, torch.device("cpu"), 1, 10.0)
    assert bf16.seen == {(True, True)}
