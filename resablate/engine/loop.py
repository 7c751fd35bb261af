"""The training loop: K >= 1 groups of one model, one dataset, one recipe.

One model alone is a pack of one (:class:`~resablate.engine.groups.OneModel`); a packed model comes
with its own :class:`~resablate.engine.groups.ModelGroups`. The loop knows nothing about ablations:
surgery, freezing and packing happen before it sees the model, and what it must check (a frozen
fingerprint) is handed in.

Writes into each group's run directory (layout in ``docs/architecture.md``): ``recipe.json``,
``history.jsonl``, and at the end ``predictions.csv``, ``model.safetensors`` and ``train.json``;
checkpoints into the session's checkpoint folder (``run_dir/checkpoints`` for :func:`train`).
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resablate.atomic import sweep_stale
from resablate.engine import checkpoint as ckpt
from resablate.engine.data import ImageSource, Transform, is_resident, place_sources
from resablate.engine.evaluate import evaluate_groups
from resablate.engine.events import (
    CheckpointSaved,
    Evaluated,
    StepProgress,
    TrainEvent,
    TrainFinished,
    TrainStarted,
)
from resablate.engine.execution import backend_settings, compile_model, resolve_execution
from resablate.engine.groups import ModelGroups, OneModel
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


def masked_update(
    optimizer: torch.optim.Optimizer,
    update: Callable[[], None],
    held: Mapping[nn.Parameter, torch.Tensor],
) -> None:
    """Run ``update()`` but leave the held groups' slices of parameters and optimiser state as
    they were.

    Args:
        optimizer: The optimiser ``update`` steps.
        update: Applies the update (``optimizer.step()``, or a GradScaler's step).
        held: Parameter (dim 0 = K groups) -> bool ``[K]`` on its device: the groups whose
            slice must not change. Only these parameters are copied; parameters without a
            gradient are skipped (the optimiser does not touch them either). State tensors
            shaped like the parameter (AdamW's moments, SGD's momentum) are restored with it; a
            state created by this update is zero in the held slices.
    """
    saved = []
    with torch.no_grad():
        for param, groups in held.items():
            if param.grad is None:
                continue
            state = optimizer.state.get(param, {})
            moments = {
                name: value.clone()
                for name, value in state.items()
                if torch.is_tensor(value) and value.shape == param.shape
            }
            saved.append((param, groups, param.detach().clone(), moments))
    update()
    with torch.no_grad():
        for param, groups, before, moments in saved:
            keep = groups.view(-1, 1)
            _put_back(param.detach(), before, keep)
            for name, value in optimizer.state[param].items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    _put_back(value, moments.get(name, torch.zeros_like(value)), keep)


def _put_back(tensor: torch.Tensor, before: torch.Tensor, keep: torch.Tensor) -> None:
    rows = tensor.view(keep.shape[0], -1)
    rows.copy_(torch.where(keep, before.view_as(rows), rows))


Fingerprint = Callable[[nn.Module], Mapping[str, str]]
"""What must not change in training, as name -> digest (e.g.
:func:`resablate.freezing.frozen_fingerprint`): taken before and after, compared."""


class _Session:
    """Mutable state of one training session: K >= 1 groups of one model (kept out of the API).

    Each group follows exactly the run its model alone would give, up to float re-association:

    - it reads the split in its own seed's order with its own augmentation stream; micro-batch
      ``b`` reads rows ``b * K * B ..`` of the epoch's interleaved order (group 0's B rows, then
      group 1's, ...), augmented in one call with the K groups' generators;
    - the loss is the sum of the groups' mean losses, so each group's gradient is its own;
    - the optimiser and schedule are the recipe's and act element-wise, so on each group's slice
      as in a separate run. What a separate run would not touch is put back after the update
      (:func:`masked_update`): the slices the groups leave idle (:meth:`ModelGroups.idle`), and
      every slice of a group that diverged once the host has seen it;
    - a non-finite loss marks that group ``diverged`` at its step; the group stops (its running
      statistics held) and the others go on. The session ends ``diverged`` when every group has.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: ModelGroups,
        train_data: ImageSource,
        evals: Mapping[str, ImageSource],
        recipe: Recipe,
        *,
        checkpoint_dir: Path,
        run_dirs: Sequence[Path],
        seeds: Sequence[int],
        device: torch.device,
        callback: Callable[[TrainEvent], None] | None,
        on_step: Sequence[StepHook],
        transforms: tuple[Transform, Transform],
    ) -> None:
        self.model = model
        self.groups = groups
        self.k = k = groups.size
        self.recipe = recipe
        self.run_dirs = tuple(run_dirs)
        self.ckpt_dir = checkpoint_dir
        self.seeds = tuple(seeds)
        self.callback = callback
        self.on_step = tuple(on_step)
        self.train_tf, self.eval_tf = transforms
        self.plan = StepPlan.of(len(train_data), recipe)
        # Rows of the epoch's order one micro-batch reads: K groups' batches.
        self.rows = k * recipe.batch_size
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
        self.forward = compile_model(model, self.execution)
        # The idle slices, moved to the device once: masking them costs no transfer.
        named = dict(model.named_parameters())
        self.idle = {
            named[name]: mask.to(device)
            for name, mask in groups.idle().items()
            if named[name].requires_grad
        }
        self.held = self.idle
        # This epoch's order on the CPU, where the data's indices live and on the labels'
        # device: moved once per epoch, so a step copies no index to the device.
        self.order_epoch = -1
        self.order_cpu = self.order_data = self.order_labels = torch.zeros(0, dtype=torch.long)

        self.epoch = 0
        self.position = 0
        self.step = 0
        self.histories: list[list[EvalRecord]] = [[] for _ in range(k)]
        self.diverged: list[int | None] = [None] * k
        self.train_seconds = 0.0
        self.images_seen = 0
        self.resumed_from = 0
        self.skipped_checkpoints: tuple[str, ...] = ()
        # Running training loss/accuracy per group since the last train record (on the device).
        self.run_loss = torch.zeros(k, dtype=torch.float64, device=device)
        self.run_correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.run_images = 0
        # Per-step losses [K] not yet checked for finiteness: (step, losses).
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

    def alive(self) -> list[int]:
        """Groups that have not diverged (as far as the host has checked)."""
        return [g for g in range(self.k) if self.diverged[g] is None]

    # --- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe_sha256": recipe_fingerprint(self.recipe),
            "seeds": list(self.seeds),
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
            "histories": [[r.to_dict() for r in h] for h in self.histories],
            "diverged": [-1 if s is None else s for s in self.diverged],
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
        # A run of one before packs shared this format: ``seed`` and ``history``, no group lists.
        seeds = state.get("seeds", [state.get("seed")])
        if state.get("recipe_sha256") != recipe_fingerprint(self.recipe) or seeds != list(
            self.seeds
        ):
            raise ConfigError(
                f"{path} was written by a run with another recipe, seed or pack of cells; resume "
                "with the same settings, or start over without resuming, or use another output "
                "folder",
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
        histories = state.get("histories", [state.get("history", [])])
        self.histories = [[EvalRecord.from_dict(r) for r in h] for h in histories]
        self.train_seconds = float(state["train_seconds"])
        self.images_seen = int(state["images_seen"])
        self.lr_used = float(state["lr_used"])
        running = state["running"]
        self.run_loss.copy_(running["loss"])
        self.run_correct.copy_(running["correct"])
        self.run_images = int(running["images"])
        self.resumed_from = self.step
        diverged = [None if s < 0 else int(s) for s in state.get("diverged", [-1] * self.k)]
        self.stop_groups([g for g, s in enumerate(diverged) if s is not None], diverged)

    def save(self) -> None:
        path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.state())
        self.emit(CheckpointSaved(step=self.step, path=str(path)))

    # --- evaluation ----------------------------------------------------------------------------

    def write_history(self) -> None:
        for run_dir, history in zip(self.run_dirs, self.histories, strict=True):
            RunDir(run_dir).write_history(r.to_dict() for r in history)

    def record(self, group: int, record: EvalRecord) -> None:
        self.histories[group].append(record)
        self.emit(Evaluated(record, group=group if self.k > 1 else None))

    def train_record(self, loss_sum: float, correct: int) -> EvalRecord:
        """A group's running training record over the ``run_images`` images since the last."""
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

    def record_train(self) -> None:
        if self.run_images == 0:
            return
        losses, correct = self.run_loss.cpu().tolist(), self.run_correct.cpu().tolist()
        for g in self.alive():
            self.record(g, self.train_record(losses[g], correct[g]))
        self.run_loss.zero_()
        self.run_correct.zero_()
        self.run_images = 0

    def evaluate_all(self) -> list[EvalResult] | None:
        """Evaluate every eval split (one pass per batch for all groups), append the records;
        return the last split's result per group."""
        self.record_train()
        results = None
        for name, data in self.evals.items():
            results = evaluate_groups(
                self.forward,
                self.groups,
                data,
                self.eval_tf,
                split=name,
                num_classes=self.num_classes,
                positive=self.recipe.positive,
                batch_size=self.recipe.eval_batch_size,
                device=self.device,
                autocast=self.autocast(),
                channels_last=self.channels_last,
            )
            for g in self.alive():
                self.record(g, self.eval_record(results[g]))
        self.write_history()
        return results

    # --- training ------------------------------------------------------------------------------

    def stop_groups(self, stopped: Sequence[int], steps: Sequence[int | None]) -> None:
        """Mark ``stopped`` groups diverged (at ``steps[g]``): hold their running statistics and,
        from the next update on, every slice of theirs."""
        if not stopped:
            return
        for g in stopped:
            self.diverged[g] = steps[g]
        mask = torch.tensor([s is not None for s in self.diverged])
        self.groups.hold(mask)
        mask = mask.to(self.device)
        if self.k > 1:
            self.held = {
                p: mask | self.idle[p] if p in self.idle else mask
                for group in self.optimizer.param_groups
                for p in group["params"]
            }

    def check_losses(self) -> tuple[int | None, float]:
        """Read the pending step losses back (one transfer), stop the groups whose loss turned
        non-finite and clear the queue.

        Returns:
            The step at which the last group diverged when every group has (else ``None``), and
            the mean loss of the groups still training.
        """
        losses = torch.stack([loss for _, loss in self.pending]).float().cpu()
        steps = [s for s, _ in self.pending]
        self.pending = []
        first: list[int | None] = [None] * self.k
        for g in self.alive():
            bad = (~torch.isfinite(losses[:, g])).nonzero()
            if bad.numel():
                first[g] = steps[int(bad[0])]
        self.stop_groups([g for g in range(self.k) if first[g] is not None], first)
        alive = self.alive()
        if not alive:
            return max(s for s in self.diverged if s is not None), math.nan
        return None, float(losses[:, alive].mean())

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's training order (int64, CPU): the K groups' orders interleaved by
        micro-batch, so micro-batch ``b`` reads rows ``b * rows .. (b + 1) * rows``."""
        if self.k == 1:
            return epoch_order(self.seeds[0], self.epoch, self.plan.n)
        bs, micro = self.recipe.batch_size, self.plan.micro_per_epoch
        orders = [epoch_order(seed, self.epoch, self.plan.n)[: micro * bs] for seed in self.seeds]
        return torch.stack(orders).view(self.k, micro, bs).transpose(0, 1).reshape(-1)

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
        """uint8 images of micro-batch ``b`` of the epoch (every group's), on the device."""
        bs = self.rows
        if self.prefetcher is None:
            return self.train_data.get_batch(self.order_data[b * bs : (b + 1) * bs])
        images = self.prefetcher.take((self.epoch, b), self.order_cpu[b * bs : (b + 1) * bs])
        if b + 1 < self.plan.micro_per_epoch:
            following = self.order_cpu[(b + 1) * bs : (b + 2) * bs]
            self.prefetcher.request((self.epoch, b + 1), following)
        return images

    def augment(self, images: torch.Tensor, b: int) -> torch.Tensor:
        """Micro-batch ``b``'s images, each group's chunk with its own augmentation stream."""
        generators = [
            stream_generator(seed, "augment", self.epoch, b, device=self.device)
            for seed in self.seeds
        ]
        return self.train_tf(images, generators[0] if self.k == 1 else generators)

    def micro_batch(self, b: int, scale: float) -> torch.Tensor:
        """Forward and backward micro-batch ``b`` of every group; the groups' mean losses [K]."""
        rows, k = self.rows, self.k
        x = self.groups.join(self.augment(self.batch_images(b), b))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.train_labels[self.order_labels[b * rows : (b + 1) * rows]].view(k, -1)
        with self.autocast():
            logits = self.groups.split(self.forward(x).float())
        # Each group's loss exactly as a separate run computes it.
        losses = torch.stack(
            [F.cross_entropy(out, target) for out, target in zip(logits, y, strict=True)]
        )
        self.scaler.scale(losses.sum() * scale).backward()
        losses = losses.detach()
        self.run_loss += losses.double() * y.shape[1]
        self.run_correct += (logits.detach().argmax(dim=2) == y).sum(dim=1)
        self.run_images += y.shape[1]
        return losses

    def optimiser_step(self) -> torch.Tensor:
        """Accumulate the micro-batches of one step and apply it (no host synchronisation);
        the step's losses, one per group."""
        group = self.plan.group(self.position, self.recipe.grad_accum)
        loss = torch.stack([self.micro_batch(b, 1.0 / len(group)) for b in group]).mean(0)
        if self.on_step:
            self.scaler.unscale_(self.optimizer)
            info = StepInfo(model=self.model, step=self.step + 1, epoch=self.epoch, loss=loss[0])
            for hook in self.on_step:
                hook(info)
        if self.held:
            masked_update(self.optimizer, self.apply_update, self.held)
        else:
            self.apply_update()
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

    def apply_update(self) -> None:
        """Apply the accumulated gradients (through the GradScaler)."""
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


def frozen_check(before: dict[str, str] | None, after: dict[str, str] | None) -> str:
    """``"passed"``/``"failed"`` comparing frozen fingerprints, ``"not applicable"`` without."""
    if not before:
        return "not applicable"
    return "passed" if after == before else "failed"


def _finish_group(
    session: _Session,
    g: int,
    *,
    final: EvalResult | None,
    frozen: str,
    weights: nn.Module | Mapping[str, torch.Tensor],
) -> TrainResult:
    """Write group ``g``'s run directory and return its :class:`TrainResult`.

    A ``done`` group gets ``predictions.csv`` and ``model.safetensors`` (``weights``: its model
    or state dict), a diverged one its history; both get ``train.json``.
    """
    files = RunDir(session.run_dirs[g])
    diverged_at = session.diverged[g]
    history = session.histories[g]
    steps = session.step if diverged_at is None else diverged_at
    if final is not None:
        files.write_predictions(final.labels, final.preds, final.probs, final.paths)
        files.write_weights(weights)
    else:
        files.write_history(r.to_dict() for r in history)
    result = TrainResult(
        status="done" if diverged_at is None else "diverged",
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
    fingerprint: Fingerprint | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with ``recipe``; evaluate on ``eval_data``.

    The model is trained in place (its frozen parts, if any, are left out of the optimiser).
    Randomness comes from ``seed`` through named streams (data order per epoch, augmentation per
    micro-batch), so a resumed run continues exactly where the checkpoint was taken. On CUDA the
    recipe's autocast mode and channels_last apply; CPU runs train in fp32 and keep freed memory
    in the process (:func:`resablate.engine.memory.keep_freed_memory`). A non-finite fp32
    training loss ends the run with status ``"diverged"`` (no exception). This is
    :func:`train_groups` with one group.

    Args:
        model: The model, already built, surgered and frozen.
        train_data: The training split (moved to ``device`` when it can move).
        eval_data: The split evaluated every ``recipe.eval_every`` steps and at the end, or a
            mapping ``{split name: split}`` (all evaluated; the last one is the final result).
        recipe: The training recipe.
        run_dir: Folder of the run (created), its checkpoints in ``run_dir/checkpoints``; see
            the run directory layout in ``docs/architecture.md``.
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
        fingerprint: What must not change (e.g. :func:`resablate.freezing.frozen_fingerprint`
            of a frozen model), compared before and after: ``frozen_check`` is ``"passed"`` or
            ``"failed"``; ``None`` (or an empty fingerprint) gives ``"not applicable"``.

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        DataError: The training split has fewer images than one batch.
        ConfigError: Nothing to train, or the checkpoint in ``run_dir`` belongs to another
            recipe or seed.
    """
    (result,) = train_groups(
        model,
        OneModel(model),
        train_data,
        eval_data,
        recipe,
        checkpoint_dir=Path(run_dir) / ckpt.CHECKPOINT_DIR,
        run_dirs=[run_dir],
        seeds=[seed],
        device=device,
        resume=resume,
        callback=callback,
        on_step=on_step,
        transforms=transforms,
        fingerprint=fingerprint,
    )
    return result


def train_groups(
    model: nn.Module,
    groups: ModelGroups,
    train_data: ImageSource,
    eval_data: ImageSource | Mapping[str, ImageSource],
    recipe: Recipe,
    *,
    checkpoint_dir: str | Path,
    run_dirs: Sequence[str | Path],
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
    resume: bool = True,
    callback: Callable[[TrainEvent], None] | None = None,
    on_step: Sequence[StepHook] = (),
    transforms: tuple[Transform, Transform] | None = None,
    fingerprint: Fingerprint | None = None,
) -> list[TrainResult]:
    """Train the K groups of ``model`` as K separate runs, in one session (see :class:`_Session`).

    A packed model (:mod:`resablate.packing`) comes with its :class:`ModelGroups`; a plain model
    is :class:`OneModel` (what :func:`train` does). fp16 autocast is refused for K > 1: one
    GradScaler would let one group's overflow skip every group's step.

    Args:
        model: The model, trained in place.
        groups: How its K groups take inputs and give outputs.
        train_data: The training split, shared by the groups (each reads it in its own order).
        eval_data: As for :func:`train`.
        recipe: The recipe of every group.
        checkpoint_dir: Folder of the session's checkpoints (created).
        run_dirs: Each group's run directory (created), in group order.
        seeds: Each group's seed (data order and augmentation streams), in group order; the
            dropout stream follows group 0's.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        resume: Continue from the newest checkpoint; ``False`` starts over.
        callback: Receives the engine's events; with K > 1,
            :class:`~resablate.engine.events.Evaluated` carries the group.
        on_step: As for :func:`train`; only with K = 1 (a hook sees one model's gradients).
        transforms: ``(train, eval)`` batch transforms (:class:`~resablate.engine.data.Transform`).
        fingerprint: As for :func:`train`, of the whole model.

    Returns:
        One :class:`TrainResult` per group, in group order; a diverged group's status is
        ``"diverged"`` with its own step.

    Raises:
        ConfigError: ``run_dirs`` or ``seeds`` do not match K, step hooks or fp16 with K > 1,
            nothing to train, or a checkpoint of another recipe, seed or pack.
        DataError: The training split has fewer images than one batch.
    """
    k = groups.size
    if len(run_dirs) != k or len(seeds) != k:
        raise ConfigError(
            f"a pack of {k} needs {k} run directories and seeds, got {len(run_dirs)} and "
            f"{len(seeds)}"
        )
    evals, device = prepare_run(train_data, eval_data, recipe, device)
    if k > 1 and on_step:
        raise ConfigError("step hooks see one model's gradients; train the cells unpacked")
    if k > 1 and resolve_execution(recipe, device).amp == "fp16":
        raise ConfigError(
            f"recipe {recipe.name!r} trains with fp16 autocast, whose single loss scale would let "
            "one packed cell's overflow skip every cell's step; use amp bf16 or train the "
            "cells unpacked",
            field="pack",
        )
    checkpoint_dir = Path(checkpoint_dir)
    dirs = [Path(d) for d in run_dirs]
    for folder in dict.fromkeys([*dirs, checkpoint_dir.parent]):
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale(folder)
    before = dict(fingerprint(model)) if fingerprint is not None else None
    session = _Session(
        model,
        groups,
        train_data,
        evals,
        recipe,
        checkpoint_dir=checkpoint_dir,
        run_dirs=dirs,
        seeds=seeds,
        device=device,
        callback=callback,
        on_step=on_step,
        transforms=transforms or _default_transforms(recipe),
    )
    torch.manual_seed(stream_seed(seeds[0], "dropout"))
    found = ckpt.load_latest(checkpoint_dir) if resume else None
    if found is not None:
        session.skipped_checkpoints = found.skipped
    if found is not None and found.path is not None and found.state is not None:
        session.restore(found.path, found.state)
    elif not resume:
        ckpt.clear_checkpoints(checkpoint_dir)
    for run_dir in dirs:
        RunDir(run_dir).write_recipe(recipe)
    session.emit(
        TrainStarted(
            total_steps=session.plan.total_steps,
            start_step=session.step,
            steps_per_epoch=session.plan.steps_per_epoch,
            images_per_step=recipe.images_per_step,
            device=session.execution.device_name,
            amp=session.amp,
            skipped_checkpoints=session.skipped_checkpoints,
            ran_on=session.execution.summary(),
        )
    )
    try:
        with backend_settings(session.execution):
            status, _ = session.run()
            finals = session.evaluate_all() if status == "done" else None
    finally:
        if session.prefetcher is not None:
            session.prefetcher.close()
    after = dict(fingerprint(model)) if fingerprint is not None else None
    frozen = frozen_check(before, after)
    states = groups.states()
    results = [
        _finish_group(
            session,
            g,
            final=finals[g] if finals is not None and session.diverged[g] is None else None,
            frozen=frozen,
            weights=states[g],
        )
        for g in range(k)
    ]
    session.emit(
        TrainFinished(status=status, steps=session.step, train_seconds=session.train_seconds)
    )
    return results


class _RandomImages:
    """Random uint8 images standing in for a split (what :func:`time_steps` trains on)."""

    def __init__(self, n: int, size: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=generator).byte()
        self.labels = torch.arange(n) % num_classes
        self.classes = tuple(str(c) for c in range(num_classes))
        self.paths = tuple(f"random-{i}" for i in range(n))

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices.to(self.images.device)]


def time_steps(
    model: nn.Module,
    recipe: Recipe,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    steps: int = 5,
    budget_seconds: float = 10.0,
) -> list[float]:
    """Seconds of single optimiser steps of ``model`` under ``recipe``, as :func:`train` takes
    them: the session's own step (data placement, augmentation, autocast, channels_last, the
    optimiser, backend settings) on random images at the recipe's stored size, after one
    untimed warm-up step. Nothing is written; ``model`` is trained in place (pass a throwaway).

    Args:
        model: The model (built, surgered, frozen).
        recipe: The recipe whose step is timed.
        num_classes: Classes of the random labels.
        device: Where the step runs.
        steps: Timed steps at most.
        budget_seconds: Wall time after which no further step starts (warm-up included); at
            least one step is timed.

    Returns:
        The timed steps' seconds, in order (on CUDA, each ends with a synchronisation).
    """
    size = recipe.storage_size or recipe.image_size
    rows = recipe.batch_size * recipe.grad_accum * (steps + 1)
    data = _RandomImages(rows, size, num_classes)
    run = recipe.replace(epochs=1, max_steps=None, eval_every=None, checkpoint_every=None)
    session = _Session(
        model,
        OneModel(model),
        data,
        {"test": data},
        run,
        checkpoint_dir=Path(),
        run_dirs=[Path()],
        seeds=[0],
        device=torch.device(device),
        callback=None,
        on_step=(),
        transforms=_default_transforms(run),
    )
    start, times = time.perf_counter(), []
    try:
        with backend_settings(session.execution):
            session.model.train()
            session.set_epoch_order()
            for i in range(steps + 1):
                begin = time.perf_counter()
                session.optimiser_step()
                if session.cuda:
                    torch.cuda.synchronize(session.device)
                if i:
                    times.append(time.perf_counter() - begin)
                if i and time.perf_counter() - start >= budget_seconds:
                    break
    finally:
        if session.prefetcher is not None:
            session.prefetcher.close()
    return times
