"""Executors: where the cells of a grid run.

* ``local``: in this process, one cell at a time; with several visible GPUs (or ``workers > 1``),
  one spawned worker process per GPU, fed from a queue.
* ``ray``: each cell is a Ray task asking for one GPU (or one CPU when the cluster has no GPU);
  ``address`` joins an existing cluster, otherwise a local Ray is started.

Executors never touch the store. ``prepare(out_dir)`` runs first (the Ray executor joins the
cluster and checks its storage there) and returns notes for the user; then ``run`` calls the
driver's hooks: ``on_start(job, device)`` when a cell starts (or is submitted),
``on_event(cell_id, event)`` for the engine's progress events (from every executor, Ray tasks
included) and ``on_done(outcomes)`` once per job with its cells' plain, picklable
:class:`CellOutcome` values (recorded together: a pack's cells all, or none). The run
directories must be reachable by every worker (shared storage for a Ray cluster, checked by
``prepare``): workers write checkpoints and artefacts there, the driver records their paths.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.atomic import write_text
from resablate.choices import CellStatus
from resablate.errors import ConfigError, WeightsUnavailableError
from resablate.grid.job import Job

if TYPE_CHECKING:
    from resablate.grid.job import CellResult

JobRunner = Callable[..., "list[CellResult | Exception]"]
"""``job_runner(job, *, device, callback, resume) -> [CellResult | Exception per cell]``
(:func:`resablate.grid.job.run_job`; tests stand in their own)."""

EXECUTORS = ("local", "ray")
WORKERS_EXITED = (
    "every grid worker process has exited; worker processes are spawned and import the main "
    "module again, so a script that runs a grid with several workers must call it under "
    '`if __name__ == "__main__":` (or run one worker)'
)
RAY_HINT = "the ray executor needs Ray, which is not installed: pip install 'resablate[ray]'"


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


def failure(exc: Exception) -> tuple[str, str]:
    """``(status, reason)`` of a cell whose run raised ``exc``."""
    if isinstance(exc, WeightsUnavailableError):
        return CellStatus.SKIPPED, str(exc)
    summary = one_line(exc)
    if _out_of_memory(exc) and not summary.lower().startswith("out of memory"):
        summary = f"out of memory: {summary}"
    return CellStatus.FAILED, summary


def _outcome(cell_id: str, result: Any, device: str) -> CellOutcome:
    status = str(result.status)
    reason = None if status == CellStatus.DONE else getattr(result, "reason", None)
    return CellOutcome(cell_id, status, reason, result, device)


def execute_job(
    job: Job,
    job_runner: JobRunner,
    *,
    device: str | None = None,
    on_event: Callable[[str, Any], None] | None = None,
) -> list[CellOutcome]:
    """Run a job and classify each cell's outcome; never raises for a failing cell.

    Failure isolation, per cell: an exception becomes ``failed`` with its one-line summary
    (out-of-memory errors say so), :class:`~resablate.errors.WeightsUnavailableError` becomes
    ``skipped`` with its message; a cell whose preparation fails in a pack fails alone (the others
    pack without it), a cell that diverges is ``diverged`` alone; when the job itself raises,
    each of its cells gets that outcome. ``KeyboardInterrupt`` (and ``SystemExit``) propagate:
    the grid stops.

    Args:
        job: The cells and their run directories.
        job_runner: Trains the job (:func:`resablate.grid.job.run_job`), resuming from its
            newest complete checkpoint when there is one.
        device: Device to run on; :func:`default_device` when ``None``.
        on_event: ``on_event(cell_id, event)``: each cell's ``CellPrepared`` and the
            ``Evaluated`` records of its group go to that cell, the other engine events to every
            cell of the job.
    """
    from resablate.engine.events import Evaluated
    from resablate.grid.job import CellPrepared

    device = device or default_device()
    ids = [cell.cell_id for cell in job.cells]

    def route(event: Any) -> None:
        if on_event is None:
            return
        if isinstance(event, CellPrepared):
            on_event(event.cell.cell_id, event)
        elif isinstance(event, Evaluated) and event.group is not None:
            on_event(ids[event.group], event)
        else:
            for cell_id in ids:
                on_event(cell_id, event)

    try:
        results = job_runner(job, device=device, callback=route, resume=True)
    except Exception as exc:
        results = [exc] * len(ids)
    outcomes = []
    for cell_id, result in zip(ids, results, strict=True):
        if isinstance(result, Exception):
            status, reason = failure(result)
            outcomes.append(CellOutcome(cell_id, status, reason, None, device))
        else:
            outcomes.append(_outcome(cell_id, result, device))
    return outcomes


StartHook = Callable[[Job, str], None]
EventHook = Callable[[str, Any], None]
DoneHook = Callable[[Sequence[CellOutcome]], None]


class LocalExecutor:
    """Runs cells on this machine.

    Args:
        job_runner: Trains one job (must be importable by name when ``workers > 1``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (``None`` = :func:`default_device`); checked
            here, before anything runs.
        workers: Worker processes; ``None`` = one per visible GPU when there are several, else
            run in this process. With ``workers > 1`` and ``device`` ``None`` or ``"cuda"``,
            worker ``i`` gets ``cuda:(i mod GPUs)`` (or the CPU when there is none) and makes it
            its current device; a ``cuda:N`` puts every worker on that GPU. Each worker gets
            this process's torch CPU threads divided among the workers (at least one), so that
            workers on a CPU share its cores instead of each taking all of them. Workers are
            spawned processes: a script that runs a grid must do so under
            ``if __name__ == "__main__":``.

    Raises:
        ConfigError: ``workers < 1``, or a device that is not visible (see
            :func:`resablate.engine.environment.resolve_device`).
    """

    name = "local"

    def __init__(
        self, job_runner: JobRunner, *, device: str | None = None, workers: int | None = None
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
        self.job_runner = job_runner
        self.device = device
        self.workers = workers
        spread = device in (None, "cuda") and gpus > 0
        self.worker_devices = tuple(
            f"cuda:{i % gpus}" if spread else (device or "cpu") for i in range(workers)
        )
        self.worker_threads = max(1, torch.get_num_threads() // workers)

    def prepare(self, out_dir: str | os.PathLike[str]) -> tuple[str, ...]:
        """Nothing to set up on this machine: no notes."""
        return ()

    def run(
        self, jobs: Sequence[Job], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        """Run ``jobs`` in order (in parallel over the workers), calling the hooks."""
        if self.workers == 1:
            device = self.device or default_device()
            for job in jobs:
                on_start(job, device)
                on_done(execute_job(job, self.job_runner, device=device, on_event=on_event))
            return
        self._run_workers(jobs, on_start, on_event, on_done)

    def _run_workers(
        self, jobs: Sequence[Job], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        tasks: Any = context.Queue()
        messages: Any = context.Queue()
        for number, job in enumerate(jobs):
            tasks.put((number, job))
        processes = []
        for index, device in enumerate(self.worker_devices[: len(jobs)]):
            tasks.put(None)  # one stop marker per worker
            args = (index, self.job_runner, device, self.worker_threads, tasks, messages)
            process = context.Process(target=_worker_main, args=args, daemon=True)
            process.start()
            processes.append(process)
        current: dict[int, Job | None] = dict.fromkeys(range(len(processes)))
        remaining = len(jobs)
        try:
            while remaining:
                try:
                    kind, index, key, payload = messages.get(timeout=1.0)
                except queue.Empty:
                    remaining -= self._reap_dead(processes, current, on_done)
                    if remaining and not any(p.is_alive() for p in processes):
                        raise ConfigError(WORKERS_EXITED, field="workers") from None
                    continue
                if kind == "start":
                    current[index] = jobs[key]
                    on_start(jobs[key], payload)
                elif kind == "event":
                    on_event(key, payload)
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
        self, processes: list[Any], current: dict[int, Job | None], on_done: DoneHook
    ) -> int:
        """Record the cells of each worker that died mid-job as failed; return how many jobs."""
        reaped = 0
        for index, process in enumerate(processes):
            job = current[index]
            if job is not None and not process.is_alive():
                current[index] = None
                device = self.worker_devices[index]
                reason = f"worker process on {device} died (exit code {process.exitcode})"
                on_done(
                    [
                        CellOutcome(cell.cell_id, CellStatus.FAILED, reason, None, device)
                        for cell in job.cells
                    ]
                )
                reaped += 1
        return reaped


def _worker_main(
    index: int, job_runner: JobRunner, device: str, threads: int, tasks: Any, messages: Any
) -> None:
    """A local worker: use ``threads`` CPU threads, make ``device`` current, run queued cells on
    it until the stop marker."""
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    while (task := tasks.get()) is not None:
        number, job = task
        messages.put(("start", index, number, device))
        forward = functools.partial(_put_event, messages, index)
        outcomes = execute_job(job, job_runner, device=device, on_event=forward)
        messages.put(("done", index, number, outcomes))


def _put_event(messages: Any, index: int, cell_id: str, event: Any) -> None:
    messages.put(("event", index, cell_id, event))


RAY_NODE_RETRIES = 3
"""How many times the Ray executor runs a cell again after losing the worker or node running it
(each time resuming from the cell's newest checkpoint) before recording it as ``failed``. A cell
that raises is never retried: it is ``failed`` at once."""

_SHARED_MARKER = ".resablate-shared-"


def _execute_on(job: Job, job_runner: JobRunner, device: str, relay: Any) -> list[CellOutcome]:
    """:func:`execute_job` as a Ray task: progress events go to the driver through ``relay``."""
    from resablate.grid.job import CellPrepared

    def forward(cell_id: str, event: Any) -> None:
        if not isinstance(event, CellPrepared):  # the dataset scan is large; the display needs
            relay.put.remote(cell_id, event)  # only the engine's events

    return execute_job(job, job_runner, device=device, on_event=forward)


def _read_marker(path: str) -> str | None:
    """The content of ``path`` as a Ray node sees it (``None`` when it cannot read it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


class _EventRelay:
    """A Ray actor on the driver's node collecting the progress events of running cells."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def put(self, cell_id: str, event: Any) -> None:
        self.events.append((cell_id, event))

    def take(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events


class RayExecutor:
    """Runs each cell as a Ray task (one GPU per task, or one CPU without GPUs).

    Only the driver writes the store: tasks return :class:`CellOutcome` values, and send their
    progress events to the driver (an actor on the driver's node relays them to ``on_event``).

    Faults: a cell whose worker process or node is lost (killed, out of memory, the machine
    gone) is run again by Ray on a live node, up to :data:`RAY_NODE_RETRIES` times, resuming
    from its newest checkpoint; then it is ``failed`` naming the loss. A cell that raises is
    ``failed`` at once, as with the local executor.

    Storage: run directories must be reachable, at the same path, by every node that runs cells
    (a shared file system): the node running a cell writes its checkpoints there, and the node
    that resumes it reads them. :meth:`prepare` checks this on every node before anything runs
    and refuses the grid, naming the nodes that cannot see the folder. Nodes that join later
    are not checked.

    Args:
        job_runner: Trains one job (importable by the Ray workers).
        address: A Ray cluster to join (``ray.init(address=...)``); ``None`` starts a local Ray.
        workers: CPUs of the local Ray (``None`` = all of this machine's).
    """

    name = "ray"

    def __init__(
        self, job_runner: JobRunner, *, address: str | None = None, workers: int | None = None
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_HINT) from None
        self.job_runner = job_runner
        self.address = address
        self.workers = workers
        self._started_here = False

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        self._started_here = True
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)

    def _disconnect(self) -> None:
        import ray

        if self._started_here:
            ray.shutdown()
            self._started_here = False

    def prepare(self, out_dir: str | os.PathLike[str]) -> tuple[str, ...]:
        """Join (or start) Ray and check that every node that runs cells sees ``out_dir``.

        Returns:
            One note for the user: the nodes, the storage check and the retry policy.

        Raises:
            ConfigError: A node cannot read a file the driver wrote into ``out_dir``.
        """
        self._connect()
        try:
            return (self._check_shared_storage(Path(out_dir)),)
        except BaseException:
            self._disconnect()
            raise

    def _check_shared_storage(self, out: Path) -> str:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [
            node
            for node in ray.nodes()
            if node["Alive"] and (node["Resources"].get("CPU") or node["Resources"].get("GPU"))
        ]
        token = uuid.uuid4().hex
        marker = out / f"{_SHARED_MARKER}{token}"
        write_text(marker, token)
        try:
            probe = ray.remote(_read_marker)
            seen = ray.get(
                [
                    probe.options(
                        num_cpus=0,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], False),
                    ).remote(str(marker))
                    for node in nodes
                ],
                timeout=300,
            )
        finally:
            marker.unlink(missing_ok=True)
        blind = [
            f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            for node, content in zip(nodes, seen, strict=True)
            if content != token
        ]
        if blind:
            raise ConfigError(
                f"the grid folder {out} is not visible from Ray node(s) {', '.join(blind)}: the "
                "ray executor needs the output folder on a file system that every node mounts at "
                "the same path (cells write their checkpoints there and resume from them on "
                "another node)",
                field="out_dir",
            )
        return (
            f"ray: {len(nodes)} node(s) can run cells and each sees {out} (shared storage "
            f"checked); a cell whose worker or node is lost is run again up to "
            f"{RAY_NODE_RETRIES} times, resuming from its newest checkpoint"
        )

    def run(
        self, jobs: Sequence[Job], on_start: StartHook, on_event: EventHook, on_done: DoneHook
    ) -> None:
        """Submit ``jobs`` (at most one per free GPU/CPU at a time) and record them as they end."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._connect()
        running: dict[Any, Job] = {}
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            slots = max(1, gpus or int(resources.get("CPU", 1)))
            options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            device = "cuda" if gpus else "cpu"
            here = ray.get_runtime_context().get_node_id()
            relay: Any = (  # an actor handle: its methods are called with .remote()
                ray.remote(_EventRelay)
                .options(
                    num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, False)
                )
                .remote()
            )
            task = ray.remote(_execute_on).options(
                max_retries=RAY_NODE_RETRIES, retry_exceptions=False, **options
            )
            waiting = list(jobs)
            while waiting or running:
                while waiting and len(running) < slots:
                    job = waiting.pop(0)
                    on_start(job, device)
                    running[task.remote(job, self.job_runner, device, relay)] = job
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for cell_id, event in ray.get(relay.take.remote()):
                    on_event(cell_id, event)
                if not ready:
                    continue
                job = running.pop(ready[0])
                try:
                    outcomes = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # lost more often than retries allow
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = (
                        f"lost its Ray worker {RAY_NODE_RETRIES + 1} times: "
                        f"{type(exc).__name__}: {first}".rstrip(": ")
                    )
                    outcomes = [
                        CellOutcome(cell.cell_id, CellStatus.FAILED, reason, None, device)
                        for cell in job.cells
                    ]
                on_done(outcomes)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            self._disconnect()


def make_executor(
    executor: str,
    job_runner: JobRunner,
    *,
    device: str | None,
    workers: int | None,
    ray_address: str | None,
) -> LocalExecutor | RayExecutor:
    """The executor called ``executor`` (one of :data:`EXECUTORS`) running ``job_runner``.

    Raises:
        ConfigError: Unknown executor name.
    """
    if executor == "local":
        return LocalExecutor(job_runner, device=device, workers=workers)
    if executor == "ray":
        return RayExecutor(job_runner, address=ray_address, workers=workers)
    raise ConfigError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
