"""The training loop: one model, one dataset, one recipe. It knows nothing about ablations.

Writes only into ``run_dir`` (layout in ``docs/architecture.md``): ``recipe.json``,
``checkpoints/``, ``history.jsonl``, and at the end ``predictions.csv``, ``model.safetensors`` and
``train.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from resablate.atomic import sweep_stale
from resablate.engine import checkpoint as ckpt
from resablate.engine.data import ImageSource, Transform, is_resident, place_sources
from resablate.engine.evaluate import evaluate
from resablate.engine.events import (
    CheckpointSaved,
    Evaluated,
    StepProgress,
    TrainEvent,
    TrainFinished,
    TrainStarted,
)
from resablate.engine.execution import backend_settings, resolve_execution
from resablate.engine.memory import keep_freed_memory
from resablate.engine.optim import build_optimizer
from resablate.engine.prefetch import Prefetcher
from resablate.engine.results import EvalRecord, EvalResult, TrainResult
from resablate.engine.schedule import build_scheduler
from resablate.engine.seeding import epoch_order, stream_generator, stream_seed
from resablate.errors import ConfigError, DataError
from resablate.recipes import Recipe
from resablate.run_dir import RunDir

CHECKPOINT_FORMAT = 2
# On CUDA, reading the loss back forces a synchronisation; check it every few steps instead.
_CUDA_CHECK_EVERY = 10
# torch's warning when the scheduler steps before the optimiser ever did (a skipped fp16 step).
_SCHEDULER_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before")


@dataclass(frozen=True)
class StepInfo:
    """What an ``on_step`` hook sees: gradients are accumulated (and unscaled), not yet applied.

    Attributes:
        model: The model being trained (not the compiled wrapper).
        step: 1-based number of the optimiser step about to be applied.
        epoch: 0-based epoch the step belongs to.
        loss: Mean fp32 loss of the step's micro-batches (a 0-d tensor on the device).
    """

    model: nn.Module
    step: int
    epoch: int
    loss: torch.Tensor


StepHook = Callable[[StepInfo], None]


@dataclass(frozen=True)
class StepPlan:
    """How a run is laid out in micro-batches and optimiser steps (shared with grid estimates)."""

    n: int
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, n: int, recipe: Recipe) -> StepPlan:
        # Drop the last partial micro-batch: a batch of one breaks BatchNorm in training mode.
        micro = n // recipe.batch_size
        steps = math.ceil(micro / recipe.grad_accum)
        total = steps * recipe.epochs
        if recipe.max_steps is not None:
            total = min(total, recipe.max_steps)
        return cls(n=n, micro_per_epoch=micro, steps_per_epoch=steps, total_steps=total)

    def group(self, position: int, grad_accum: int) -> range:
        """Micro-batch indices (within the epoch) of the step that starts at ``position``."""
        return range(position, min(position + grad_accum, self.micro_per_epoch))


def recipe_fingerprint(recipe: Recipe) -> str:
    """sha256 of the recipe's canonical JSON (a checkpoint resumes only under the same recipe)."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()


def _default_transforms(recipe: Recipe) -> tuple[Transform, Transform]:
    """The recipe's train and eval transforms, writing into reused buffers (each loop is done
    with a batch before it asks for the next)."""
    from resablate.data import BatchTransform, RecyclingTransform

    return (
        RecyclingTransform(BatchTransform.from_recipe(recipe, train=True)),
        RecyclingTransform(BatchTransform.from_recipe(recipe, train=False)),
    )


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The RNG state of the run's own accelerator (``None`` on the CPU, whose state is saved
    separately). Only this device's generator: another GPU's state is not the run's."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    """Restore :func:`device_rng_state` onto ``device`` (whatever index the run had before)."""
    if device.type == "cuda" and state is not None:
        torch.cuda.set_rng_state(state, device)


def _frozen_fingerprint(model: nn.Module) -> dict[str, str] | None:
    """Fingerprint of the frozen parameters and BN statistics (``None`` when nothing is frozen)."""
    if all(p.requires_grad for p in model.parameters()):
        return None
    from resablate.freezing import frozen_fingerprint

    return frozen_fingerprint(model)


class _Session:
    """Mutable state of one call to :func:`train` (kept out of the public API)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: ImageSource,
        evals: Mapping[str, ImageSource],
        recipe: Recipe,
        *,
        run_dir: Path,
        seed: int,
        device: torch.device,
        callback: Callable[[TrainEvent], None] | None,
        on_step: Sequence[StepHook],
        transforms: tuple[Transform, Transform],
    ) -> None:
        self.model = model
        self.recipe = recipe
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / ckpt.CHECKPOINT_DIR
        self.seed = seed
        self.device = device
        self.callback = callback
        self.on_step = tuple(on_step)
        self.train_tf, self.eval_tf = transforms
        self.plan = StepPlan.of(len(train_data), recipe)
        # Rows of the training split one micro-batch reads (K batches for a pack).
        self.rows = recipe.batch_size
        self.execution = resolve_execution(recipe, device)
        self.device = device = torch.device(self.execution.device)
        self.cuda = device.type == "cuda"
        self.amp = self.execution.amp
        self.channels_last = self.execution.channels_last
        classes = getattr(train_data, "classes", None)
        self.num_classes = len(classes) if classes else max(2, int(train_data.labels.max()) + 1)

        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.train_data, *placed = place_sources([train_data, *evals.values()], device)
        self.evals = dict(zip(evals, placed, strict=True))
        self.train_labels = self.train_data.labels.to(device)
        # A split not held on the device is loaded one micro-batch ahead, off the step.
        self.prefetcher = (
            None if is_resident(self.train_data, device) else Prefetcher(self.train_data, device)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters; nothing to train")
        self.optimizer = build_optimizer(params, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe, self.plan.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self.forward = cast(nn.Module, torch.compile(model)) if recipe.compile else model
        # This epoch's order on the CPU, where the data's indices live and on the labels'
        # device: moved once per epoch, so a step copies no index to the device.
        self.order_epoch = -1
        self.order_cpu = self.order_data = self.order_labels = torch.zeros(0, dtype=torch.long)

        self.epoch = 0
        self.position = 0
        self.step = 0
        self.history: list[EvalRecord] = []
        self.train_seconds = 0.0
        self.images_seen = 0
        self.resumed_from = 0
        self.skipped_checkpoints: tuple[str, ...] = ()
        # Running training loss/accuracy since the last train record (device tensors).
        self.run_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.run_correct = torch.zeros((), dtype=torch.int64, device=device)
        self.run_images = 0
        # Per-step losses not yet checked for finiteness: (step, loss tensor).
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.lr_used = self.lr

    # --- helpers -------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.execution.autocast()

    def emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    @property
    def lr(self) -> float:
        """Learning rate the next update will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def epochs_done(self) -> float:
        return self.step / max(1, self.plan.steps_per_epoch)

    # --- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe_sha256": recipe_fingerprint(self.recipe),
            "seed": self.seed,
            "total_steps": self.plan.total_steps,
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
            "micro_step": 0,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "precision": self.execution.precision(),
            "execution": self.execution.to_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_device": device_rng_state(self.device),
            "history": [r.to_dict() for r in self.history],
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "lr_used": self.lr_used,
            "running": {
                "loss": self.run_loss.cpu(),
                "correct": self.run_correct.cpu(),
                "images": self.run_images,
            },
        }

    def restore(self, path: Path, state: dict[str, Any]) -> None:
        if state.get("recipe_sha256") != recipe_fingerprint(self.recipe) or (
            state.get("seed") != self.seed
        ):
            raise ConfigError(
                f"{path} was written by a run with another recipe or seed; resume with the same "
                "settings, or start over without resuming, or use another output folder",
                field="resume",
            )
        saved = state.get("precision", "an unrecorded device and precision")
        if saved != self.execution.precision():
            raise ConfigError(
                f"{path} was written by a run on {saved}, this run is on "
                f"{self.execution.precision()}; resume on the same device type and precision "
                "(device, recipe field amp), or start over without resuming, or use another "
                "output folder",
                field="resume",
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        set_device_rng_state(self.device, state["rng_device"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.history = [EvalRecord.from_dict(r) for r in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        self.images_seen = int(state["images_seen"])
        self.lr_used = float(state["lr_used"])
        running = state["running"]
        self.run_loss.copy_(running["loss"])
        self.run_correct.copy_(running["correct"])
        self.run_images = int(running["images"])
        self.resumed_from = self.step

    def save(self) -> None:
        path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.state())
        self.emit(CheckpointSaved(step=self.step, path=str(path)))

    # --- evaluation ----------------------------------------------------------------------------

    def write_history(self) -> None:
        RunDir(self.run_dir).write_history(r.to_dict() for r in self.history)

    def train_record(self, loss_sum: float, correct: int) -> EvalRecord:
        """The running training record over the ``run_images`` images since the last one."""
        return EvalRecord(
            step=self.step,
            epoch=self.epochs_done(),
            split="train",
            loss=loss_sum / self.run_images,
            accuracy=correct / self.run_images,
            precision=None,
            recall=None,
            f1=None,
            lr=self.lr_used,
            n=self.run_images,
        )

    def eval_record(self, result: EvalResult) -> EvalRecord:
        """The history record of an evaluation."""
        m = result.metrics
        return EvalRecord(
            step=self.step,
            epoch=self.epochs_done(),
            split=result.split,
            loss=result.loss,
            accuracy=m.accuracy,
            precision=m.precision,
            recall=m.recall,
            f1=m.f1,
            lr=self.lr_used,
            n=m.n,
        )

    def eval_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~resablate.engine.evaluate.evaluate` for this run."""
        return {
            "num_classes": self.num_classes,
            "positive": self.recipe.positive,
            "batch_size": self.recipe.eval_batch_size,
            "device": self.device,
            "autocast": self.autocast(),
            "channels_last": self.channels_last,
        }

    def record_train(self) -> None:
        if self.run_images == 0:
            return
        record = self.train_record(float(self.run_loss.item()), int(self.run_correct.item()))
        self.run_loss.zero_()
        self.run_correct.zero_()
        self.run_images = 0
        self.history.append(record)
        self.emit(Evaluated(record))

    def evaluate_all(self) -> EvalResult | None:
        """Evaluate every eval split, append the records; return the last split's result."""
        self.record_train()
        result = None
        for name, data in self.evals.items():
            result = evaluate(self.forward, data, self.eval_tf, split=name, **self.eval_options())
            record = self.eval_record(result)
            self.history.append(record)
            self.emit(Evaluated(record))
        self.write_history()
        return result

    # --- training ------------------------------------------------------------------------------

    def check_losses(self) -> tuple[int | None, float]:
        """Read the pending step losses back (one transfer) and clear the queue.

        Returns:
            The step of the first non-finite loss (``None`` if all are finite) and their mean.
        """
        losses = torch.stack([loss for _, loss in self.pending]).float().cpu()
        steps = [s for s, _ in self.pending]
        self.pending = []
        bad = (~torch.isfinite(losses)).nonzero()
        return (steps[int(bad[0])] if bad.numel() else None), float(losses.mean())

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's training order (int64, CPU): micro-batch ``b`` reads rows
        ``b * rows .. (b + 1) * rows`` of it."""
        return epoch_order(self.seed, self.epoch, self.plan.n)

    def set_epoch_order(self) -> None:
        """Draw this epoch's order and move it where it is used (once per epoch)."""
        self.order_cpu = self.epoch_indices()
        data_device = getattr(self.train_data, "device", torch.device("cpu"))
        self.order_data = self.order_cpu if self.prefetcher else self.order_cpu.to(data_device)
        self.order_labels = self.order_cpu.to(self.train_labels.device)
        self.order_epoch = self.epoch
        if self.prefetcher is not None:  # the epoch's (or the resumed run's) first micro-batch
            bs, b = self.rows, self.position
            self.prefetcher.request((self.epoch, b), self.order_cpu[b * bs : (b + 1) * bs])

    def batch_images(self, b: int) -> torch.Tensor:
        """uint8 images of micro-batch ``b`` of the epoch, on the device."""
        bs = self.rows
        if self.prefetcher is None:
            return self.train_data.get_batch(self.order_data[b * bs : (b + 1) * bs])
        images = self.prefetcher.take((self.epoch, b), self.order_cpu[b * bs : (b + 1) * bs])
        if b + 1 < self.plan.micro_per_epoch:
            following = self.order_cpu[(b + 1) * bs : (b + 2) * bs]
            self.prefetcher.request((self.epoch, b + 1), following)
        return images

    def micro_batch(self, b: int, scale: float) -> torch.Tensor:
        bs = self.rows
        images = self.batch_images(b)
        generator = stream_generator(self.seed, "augment", self.epoch, b, device=self.device)
        x = self.train_tf(images, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.train_labels[self.order_labels[b * bs : (b + 1) * bs]]
        with self.autocast():
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        self.scaler.scale(loss * scale).backward()
        loss = loss.detach()
        self.run_loss += loss.double() * len(y)
        self.run_correct += (logits.detach().argmax(dim=1) == y).sum()
        self.run_images += len(y)
        return loss

    def optimiser_step(self) -> torch.Tensor:
        """Accumulate the micro-batches of one step and apply it (no host synchronisation)."""
        group = self.plan.group(self.position, self.recipe.grad_accum)
        loss = torch.stack([self.micro_batch(b, 1.0 / len(group)) for b in group]).mean(0)
        if self.on_step:
            self.scaler.unscale_(self.optimizer)
            info = StepInfo(model=self.model, step=self.step + 1, epoch=self.epoch, loss=loss)
            for hook in self.on_step:
                hook(info)
        self.apply_update(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_used = self.lr
        if self.scaler.is_enabled():
            # The schedule follows optimiser steps taken or skipped by the GradScaler (asking
            # which would synchronise); a skipped first step is not a misordered call.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _SCHEDULER_ORDER_WARNING)
                self.scheduler.step()
        else:
            self.scheduler.step()
        self.step += 1
        self.position = group.stop
        self.images_seen += len(group) * self.recipe.batch_size
        return loss

    def apply_update(self, loss: torch.Tensor) -> None:
        """Apply the accumulated gradients (through the GradScaler); ``loss`` is the step's."""
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def run(self) -> tuple[str, int | None]:
        """Train until the planned step; return ``(status, diverged_at_step)``."""
        recipe, plan = self.recipe, self.plan
        check_every = _CUDA_CHECK_EVERY if self.cuda else 1
        self.model.train()
        session_images, session_start = 0, time.perf_counter()
        last_tick = session_start
        while self.step < plan.total_steps:
            if self.position >= plan.micro_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            if self.order_epoch != self.epoch:
                self.set_epoch_order()
            loss = self.optimiser_step()
            self.pending.append((self.step, loss))
            session_images += recipe.images_per_step
            evaluate_now = recipe.eval_every is not None and self.step % recipe.eval_every == 0
            save_now = (
                recipe.checkpoint_every is not None and self.step % recipe.checkpoint_every == 0
            )
            last = self.step == plan.total_steps
            if self.step % check_every and not (evaluate_now or save_now or last):
                continue
            bad, mean_loss = self.check_losses()
            if self.cuda:
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            self.train_seconds += now - last_tick
            if bad is not None:
                return "diverged", bad
            rate = session_images / max(now - session_start, 1e-9)
            steps_per_s = (self.step - self.resumed_from) / max(now - session_start, 1e-9)
            self.emit(
                StepProgress(
                    step=self.step,
                    total_steps=plan.total_steps,
                    epoch=self.epochs_done(),
                    loss=mean_loss,
                    lr=self.lr_used,
                    images_per_second=rate,
                    eta_seconds=(plan.total_steps - self.step) / max(steps_per_s, 1e-9),
                )
            )
            if evaluate_now and not last:
                self.evaluate_all()
            if save_now or last:
                self.save()
            last_tick = time.perf_counter()
        return "done", None


def _as_evals(eval_data: ImageSource | Mapping[str, ImageSource]) -> dict[str, ImageSource]:
    if isinstance(eval_data, Mapping):
        if not eval_data:
            raise ConfigError("eval_data is an empty mapping; give at least one split")
        return dict(eval_data)
    return {"test": eval_data}


def prepare_run(
    train_data: ImageSource,
    eval_data: ImageSource | Mapping[str, ImageSource],
    recipe: Recipe,
    device: str | torch.device,
) -> tuple[dict[str, ImageSource], torch.device]:
    """Check the training split against the recipe; the eval splits by name and the device.

    Raises:
        DataError: The training split has fewer images than one batch.
        ConfigError: ``eval_data`` is an empty mapping.
    """
    if len(train_data) < recipe.batch_size:
        raise DataError(
            f"the training split has {len(train_data)} images, fewer than one batch "
            f"({recipe.batch_size}); lower the batch size",
            field="batch_size",
        )
    evals = _as_evals(eval_data)
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    return evals, device


def start_session(session: _Session, *, resume: bool, run_dirs: Sequence[Path]) -> None:
    """Resume ``session`` from its newest checkpoint (or clear them with ``resume=False``), write
    the recipe into every run directory and emit :class:`TrainStarted`."""
    found = ckpt.load_latest(session.ckpt_dir) if resume else None
    if found is not None:
        session.skipped_checkpoints = found.skipped
    if found is not None and found.path is not None and found.state is not None:
        session.restore(found.path, found.state)
    elif not resume:
        ckpt.clear_checkpoints(session.ckpt_dir)
    for run_dir in run_dirs:
        RunDir(run_dir).write_recipe(session.recipe)
    session.emit(
        TrainStarted(
            total_steps=session.plan.total_steps,
            start_step=session.step,
            steps_per_epoch=session.plan.steps_per_epoch,
            images_per_step=session.recipe.images_per_step,
            device=session.execution.device_name,
            amp=session.amp,
            skipped_checkpoints=session.skipped_checkpoints,
            ran_on=session.execution.summary(),
        )
    )


def run_session(session: _Session) -> tuple[str, int | None, Any]:
    """Train under the run's backend settings, then evaluate when done.

    Returns:
        ``(status, diverged_at_step, final)``: ``final`` is what ``session.evaluate_all()``
        returns (``None`` when the run diverged).
    """
    try:
        with backend_settings(session.execution):
            status, diverged_at = session.run()
            final = session.evaluate_all() if status == "done" else None
    finally:
        if session.prefetcher is not None:
            session.prefetcher.close()
    return status, diverged_at, final


def frozen_check(before: dict[str, str] | None, after: dict[str, str] | None) -> str:
    """``"passed"``/``"failed"`` comparing frozen fingerprints, ``"not applicable"`` without."""
    if not before:
        return "not applicable"
    return "passed" if after == before else "failed"


def finish_run(
    files: RunDir,
    session: _Session,
    *,
    status: str,
    steps: int,
    final: EvalResult | None,
    history: Sequence[EvalRecord],
    diverged_at: int | None,
    frozen: str,
    weights: nn.Module | Mapping[str, torch.Tensor],
) -> TrainResult:
    """Write a finished run's files and return its :class:`TrainResult`.

    A ``done`` run gets ``predictions.csv`` and ``model.safetensors`` (``weights``: the model or
    its state dict), a diverged one its history; both get ``train.json``.
    """
    if final is not None:
        files.write_predictions(final.labels, final.preds, final.probs, final.paths)
        files.write_weights(weights)
    else:
        files.write_history(r.to_dict() for r in history)
    result = TrainResult(
        status=status,
        steps=steps,
        total_steps=session.plan.total_steps,
        epochs=steps / max(1, session.plan.steps_per_epoch),
        final=final,
        history=tuple(history),
        train_seconds=session.train_seconds,
        images_per_second=session.images_seen / max(session.train_seconds, 1e-9),
        diverged_at_step=diverged_at,
        reason=(
            f"non-finite training loss at step {diverged_at}" if diverged_at is not None else None
        ),
        resumed_from_step=session.resumed_from,
        skipped_checkpoints=session.skipped_checkpoints,
        frozen_check=frozen,
        device=session.execution.device_name,
        amp=session.amp,
        execution=session.execution,
    )
    files.write_train(result.to_dict())
    return result


def train(
    model: nn.Module,
    train_data: ImageSource,
    eval_data: ImageSource | Mapping[str, ImageSource],
    recipe: Recipe,
    *,
    run_dir: str | Path,
    seed: int,
    device: str | torch.device = "cpu",
    resume: bool = True,
    callback: Callable[[TrainEvent], None] | None = None,
    on_step: Sequence[StepHook] = (),
    transforms: tuple[Transform, Transform] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with ``recipe``; evaluate on ``eval_data``.

    The model is trained in place (its frozen parts, if any, are left out of the optimiser and
    checked afterwards). Randomness comes from ``seed`` through named streams (data order per
    epoch, augmentation per micro-batch), so a resumed run continues exactly where the checkpoint
    was taken. On CUDA the recipe's autocast mode and channels_last apply; CPU runs train in fp32
    and keep freed memory in the process (:func:`resablate.engine.memory.keep_freed_memory`).
    A non-finite fp32 training loss ends the run with status ``"diverged"`` (no exception).

    Args:
        model: The model, already built, surgered and frozen.
        train_data: The training split (moved to ``device`` when it can move).
        eval_data: The split evaluated every ``recipe.eval_every`` steps and at the end, or a
            mapping ``{split name: split}`` (all evaluated; the last one is the final result).
        recipe: The training recipe.
        run_dir: Folder of the run (created); see the run directory layout in
            ``docs/architecture.md``.
        seed: Seed of the data order, augmentation and dropout streams.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        resume: Continue from the newest checkpoint in ``run_dir`` if there is one; ``False``
            deletes existing checkpoints and starts over.
        callback: Receives :mod:`resablate.engine.events` events. An exception it raises stops
            the run (the newest checkpoint stays valid).
        on_step: Hooks called after each step's gradients are accumulated, before they are
            applied (e.g. gradient-norm logging).
        transforms: ``(train, eval)`` batch transforms; default: the data package's
            ``BatchTransform`` built from the recipe, in a ``RecyclingTransform``.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        DataError: The training split has fewer images than one batch.
        ConfigError: Nothing to train, or the checkpoint in ``run_dir`` belongs to another
            recipe or seed.
    """
    run_dir = Path(run_dir)
    evals, device = prepare_run(train_data, eval_data, recipe, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(run_dir)
    frozen_before = _frozen_fingerprint(model)
    session = _Session(
        model,
        train_data,
        evals,
        recipe,
        run_dir=run_dir,
        seed=seed,
        device=device,
        callback=callback,
        on_step=on_step,
        transforms=transforms or _default_transforms(recipe),
    )
    torch.manual_seed(stream_seed(seed, "dropout"))
    start_session(session, resume=resume, run_dirs=[run_dir])
    status, diverged_at, final = run_session(session)
    result = finish_run(
        RunDir(run_dir),
        session,
        status=status,
        steps=session.step,
        final=final,
        history=session.history,
        diverged_at=diverged_at,
        frozen=frozen_check(frozen_before, _frozen_fingerprint(model)),
        weights=model,
    )
    session.emit(
        TrainFinished(status=status, steps=session.step, train_seconds=result.train_seconds)
    )
    return result
