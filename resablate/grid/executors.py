"""Executors: where the cells of a grid run.

* ``local``: in this process, one cell at a time; with several visible GPUs (or ``workers > 1``),
  one spawned worker process per GPU, fed from a queue.
* ``ray``: each cell is a Ray task asking for one GPU (or one CPU when the cluster has no GPU);
  ``address`` joins an existing cluster, otherwise a local Ray is started.

Executors never touch the store. They call the driver's hooks: ``on_start(job, device)`` when a
cell starts (or is submitted), ``on_event(cell_id, event)`` for the engine's progress events
(in-process and per-GPU workers only) and ``on_done(outcome)`` with a plain, picklable
:class:`CellOutcome`. The run directories must be reachable by every worker (shared storage for
a Ray cluster): workers write checkpoints and artefacts there, the driver records their paths.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resablate.errors import ConfigError, WeightsUnavailableError
from resablate.grid.cell import Cell

if TYPE_CHECKING:
    from resablate.engine import StepHook

CellRunner = Callable[..., Any]
"""``cell_runner(cell, run_dir, *, device, callback, resume) -> CellResult`` (``run_cell``)."""

EXECUTORS = ("local", "ray")
WORKERS_EXITED = (
    "every grid worker process has exited; worker processes are spawned and import the main "
    "module again, so a script that runs a grid with several workers must call it under "
    '`if __name__ == "__main__":` (or use --workers 1)'
)
StepHookFactory = Callable[[str], "StepHook"]
"""Builds one run's engine step hook from its run directory, in the worker that runs the cell
(picklable: it crosses process boundaries in the job). A hook with a ``close()`` method is closed
when the cell ends, however it ends (e.g. gradient-norm logging writing its file)."""
RAY_HINT = "the ray executor needs Ray, which is not installed: pip install 'resablate[ray]'"


@dataclass(frozen=True)
class CellJob:
    """A cell to run, with its run directory (a path string, reachable by the workers).

    Attributes:
        cell: The cell.
        run_dir: Its run directory.
        step_hooks: Per-run step hooks for the engine, built in the worker from ``run_dir`` (e.g.
            gradient-norm logging). A run option: not part of the cell id.
    """

    cell: Cell
    run_dir: str
    step_hooks: tuple[StepHookFactory, ...] = ()


@dataclass(frozen=True)
class CellOutcome:
    """What running one cell produced (plain data; crosses process boundaries).

    Attributes:
        cell_id: The cell.
        status: ``done`` or ``diverged`` (from the result), ``failed`` (it raised) or ``skipped``
            (its weights cannot be obtained offline).
        reason: One line saying why, for every status but ``done``.
        result: The ``CellResult`` the cell runner returned (``None`` when it raised).
        device: The device the cell ran on.
    """

    cell_id: str
    status: str
    reason: str | None
    result: Any
    device: str


def one_line(exc: BaseException) -> str:
    """An exception as ``"Type: message"`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom | MemoryError) or "out of memory" in str(exc).lower()


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to this process, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def execute_cell(
    job: CellJob,
    cell_runner: CellRunner,
    *,
    device: str | None = None,
    callback: Callable[[Any], None] | None = None,
) -> CellOutcome:
    """Run one cell and classify the outcome; never raises for a failing cell.

    Failure isolation: an exception becomes ``failed`` with its one-line summary (out-of-memory
    errors say so), :class:`~resablate.errors.WeightsUnavailableError` becomes ``skipped`` with
    its message. ``KeyboardInterrupt`` (and ``SystemExit``) propagate: the grid stops.

    Args:
        job: The cell and its run directory.
        cell_runner: Runs the cell (``run_cell``); resumes from the run directory's newest
            complete checkpoint when there is one.
        device: Device to run on; :func:`default_device` when ``None``.
        callback: Receives the engine's progress events.

    The job's step-hook factories are called here (in the worker) with the run directory; the
    hooks go to the cell runner as ``on_step`` and those with a ``close()`` method are closed
    when the cell ends, however it ends.
    """
    device = device or default_device()
    cell_id = job.cell.cell_id
    step_hooks = [factory(job.run_dir) for factory in job.step_hooks]
    hooks: dict[str, Any] = {"on_step": step_hooks} if step_hooks else {}
    try:
        result = cell_runner(
            job.cell, job.run_dir, device=device, callback=callback, resume=True, **hooks
        )
    except WeightsUnavailableError as exc:
        return CellOutcome(cell_id, "skipped", str(exc), None, device)
    except Exception as exc:
        summary = one_line(exc)
        if _out_of_memory(exc) and not summary.lower().startswith("out of memory"):
            summary = f"out of memory: {summary}"
        return CellOutcome(cell_id, "failed", summary, None, device)
    finally:
        for hook in step_hooks:
            close = getattr(hook, "close", None)
            if callable(close):
                close()
    status = str(result.status)
    reason = None if status == "done" else getattr(result, "reason", None)
    return CellOutcome(cell_id, status, reason, result, device)


StartHook = Callable[[CellJob, str], None]
EventHook = Callable[[str, Any], None]
DoneHook = Callable[[CellOutcome], None]


class LocalExecutor:
    """Runs cells on this machine.

    Args:
        cell_runner: Runs one cell (must be importable by name when ``workers > 1``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (``None`` = :func:`default_device`); checked
            here, before anything runs.
        workers: Worker processes; ``None`` = one per visible GPU when there are several, else
            run in this process. With ``workers > 1`` and ``device`` ``None`` or ``"cuda"``,
            worker ``i`` gets ``cuda:(i mod GPUs)`` (or the CPU when there is none) and makes it
            its current device; a ``cuda:N`` puts every worker on that GPU. Workers are spawned
            processes: a script that runs a grid must do so under
            ``if __name__ == "__main__":``.

    Raises:
        ConfigError: ``workers < 1``, or a device that is not visible (see
            :func:`resablate.engine.environment.resolve_device`).
    """

    name = "local"

    def __init__(
        self, cell_runner: CellRunner, *, device: str | None = None, workers: int | None = None
    ) -> None:
        import torch

        from resablate.engine.environment import resolve_device

        if device is not None:
            resolve_device(device)
        gpus = torch.cuda.device_count()
        if workers is None:
            workers = gpus if gpus > 1 and device is None else 1
        if workers < 1:
            raise ConfigError(f"workers={workers} must be at least 1")
        self.cell_runner = cell_runner
        self.device = device
        self.workers = workers
        spread = device in (None, "cuda") and gpus > 0
        self.worker_devices = tuple(
            f"cuda:{i % gpus}" if spread else (device or "cpu") for i in range(workers)
        )

    def run(
        self, jobs: Sequence[CellJob], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        """Run ``jobs`` in order (in parallel over the workers), calling the hooks."""
        if self.workers == 1:
            device = self.device or default_device()
            for job in jobs:
                on_start(job, device)
                cell_id = job.cell.cell_id
                forward = functools.partial(on_event, cell_id)
                outcome = execute_cell(job, self.cell_runner, device=device, callback=forward)
                on_done(outcome)
            return
        self._run_workers(jobs, on_start, on_event, on_done)

    def _run_workers(
        self, jobs: Sequence[CellJob], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        tasks: Any = context.Queue()
        messages: Any = context.Queue()
        by_id = {job.cell.cell_id: job for job in jobs}
        for job in jobs:
            tasks.put(job)
        processes = []
        for index, device in enumerate(self.worker_devices[: len(jobs)]):
            tasks.put(None)  # one stop marker per worker
            args = (index, self.cell_runner, device, tasks, messages)
            process = context.Process(target=_worker_main, args=args, daemon=True)
            process.start()
            processes.append(process)
        current: dict[int, str | None] = dict.fromkeys(range(len(processes)))
        remaining = len(jobs)
        try:
            while remaining:
                try:
                    kind, index, cell_id, payload = messages.get(timeout=1.0)
                except queue.Empty:
                    remaining -= self._reap_dead(processes, current, on_done)
                    if remaining and not any(p.is_alive() for p in processes):
                        raise ConfigError(WORKERS_EXITED) from None
                    continue
                if kind == "start":
                    current[index] = cell_id
                    on_start(by_id[cell_id], payload)
                elif kind == "event":
                    on_event(cell_id, payload)
                else:
                    current[index] = None
                    remaining -= 1
                    on_done(payload)
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                process.join(timeout=10)

    def _reap_dead(
        self, processes: list[Any], current: dict[int, str | None], on_done: DoneHook
    ) -> int:
        """Record the cell of each worker that died mid-cell as failed; return how many."""
        reaped = 0
        for index, process in enumerate(processes):
            cell_id = current[index]
            if cell_id is not None and not process.is_alive():
                current[index] = None
                device = self.worker_devices[index]
                reason = f"worker process on {device} died (exit code {process.exitcode})"
                on_done(CellOutcome(cell_id, "failed", reason, None, device))
                reaped += 1
        return reaped


def _worker_main(
    index: int, cell_runner: CellRunner, device: str, tasks: Any, messages: Any
) -> None:
    """A per-GPU worker: make ``device`` current, run queued cells on it until the stop marker."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    while (job := tasks.get()) is not None:
        cell_id = job.cell.cell_id
        messages.put(("start", index, cell_id, device))

        forward = functools.partial(_put_event, messages, index, cell_id)
        outcome = execute_cell(job, cell_runner, device=device, callback=forward)
        messages.put(("done", index, cell_id, outcome))


def _put_event(messages: Any, index: int, cell_id: str, event: Any) -> None:
    messages.put(("event", index, cell_id, event))


def _execute_on(job: CellJob, cell_runner: CellRunner, device: str) -> CellOutcome:
    """:func:`execute_cell` with positional arguments (the Ray task)."""
    return execute_cell(job, cell_runner, device=device)


class RayExecutor:
    """Runs each cell as a Ray task (one GPU per task, or one CPU without GPUs).

    Only the driver writes the store: tasks return :class:`CellOutcome` values. Progress events
    are not forwarded from Ray tasks (the driver sees starts and finishes).

    Args:
        cell_runner: Runs one cell (importable by the Ray workers).
        address: A Ray cluster to join (``ray.init(address=...)``); ``None`` starts a local Ray.
        workers: CPUs of the local Ray (``None`` = all of this machine's).
    """

    name = "ray"

    def __init__(
        self, cell_runner: CellRunner, *, address: str | None = None, workers: int | None = None
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_HINT) from None
        self.cell_runner = cell_runner
        self.address = address
        self.workers = workers

    def run(
        self, jobs: Sequence[CellJob], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        """Submit ``jobs`` (at most one per free GPU/CPU at a time) and record them as they end."""
        import ray

        started_here = not ray.is_initialized()
        running: dict[Any, CellJob] = {}
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            slots = max(1, gpus or int(resources.get("CPU", 1)))
            options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            device = "cuda" if gpus else "cpu"
            task = ray.remote(_execute_on).options(max_retries=0, **options)
            waiting = list(jobs)
            while waiting or running:
                while waiting and len(running) < slots:
                    job = waiting.pop(0)
                    on_start(job, device)
                    running[task.remote(job, self.cell_runner, device)] = job
                ready, _ = ray.wait(list(running), num_returns=1)
                job = running.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the worker died (not the cell raising)
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = f"{type(exc).__name__}: {first}".rstrip(": ")
                    outcome = CellOutcome(job.cell.cell_id, "failed", reason, None, device)
                on_done(outcome)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


def make_executor(
    executor: str,
    cell_runner: CellRunner,
    *,
    device: str | None,
    workers: int | None,
    ray_address: str | None,
) -> LocalExecutor | RayExecutor:
    """The executor called ``executor`` (one of :data:`EXECUTORS`) running ``cell_runner``.

    Raises:
        ConfigError: Unknown executor name.
    """
    if executor == "local":
        return LocalExecutor(cell_runner, device=device, workers=workers)
    if executor == "ray":
        return RayExecutor(cell_runner, address=ray_address, workers=workers)
    raise ConfigError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
