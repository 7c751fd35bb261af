"""Training a pack: K cells of one architecture and recipe as one packed model, as K separate runs.

A packed model (:func:`resablate.packing.fuse`) holds K groups. :func:`train_pack` trains it so that
each group follows exactly the run :func:`resablate.engine.train` would give its model alone, up to
float re-association:

- each group gets its own seed's data order and augmentation (the packed input is the K groups'
  batches side by side along channels), so cells of different seeds pack;
- the loss is the sum of the groups' mean losses, so each group's gradient is its own;
- the optimiser, schedule and weight decay are the recipe's; they act element-wise, so on each
  group's slice exactly as in a separate run. What a separate run would not touch is put back
  after every update (:func:`masked_update`): the slices of parameters a group does not use (the
  projection shortcut of a block whose residual it dropped: a separate run gives them no
  gradient, and AdamW and SGD skip a parameter without one but decay one with a zero gradient),
  and every slice of a group that has stopped;
- a non-finite loss in one group marks that cell ``diverged`` at that step; its group stops
  updating (parameters, optimiser state and BatchNorm statistics held) and the others go on.
  The pack ends ``diverged`` only when every group has;
- fp16 autocast is refused (one GradScaler would let one group's overflow skip every group's
  step): packs train in fp32 or bf16.

The recipes have no gradient clipping, so there is none to do per group.

Checkpoints of the pack (model, optimiser, scheduler, every group's history and state) go to
``pack_dir/checkpoints``; each cell's run directory gets the files of a separate run
(``recipe.json``, ``history.jsonl``, ``predictions.csv``, ``model.safetensors`` with the standalone
keys, ``train.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resablate.atomic import sweep_stale
from resablate.engine.data import ImageSource, Transform
from resablate.engine.evaluate import evaluate_pack
from resablate.engine.events import Evaluated, TrainEvent, TrainFinished
from resablate.engine.execution import resolve_execution
from resablate.engine.loop import (
    _frozen_fingerprint,
    _Session,
    finish_run,
    frozen_check,
    prepare_run,
    run_session,
    start_session,
)
from resablate.engine.results import EvalRecord, EvalResult, TrainResult
from resablate.engine.seeding import epoch_order, stream_generator
from resablate.errors import ConfigError
from resablate.packing import (
    hold_groups,
    idle_groups,
    pack_inputs,
    pack_size,
    split_outputs,
    unfuse,
)
from resablate.recipes import Recipe
from resablate.run_dir import RunDir


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
        held: Packed parameter (dim 0 = K groups) -> bool ``[K]`` on its device: the groups
            whose slice must not change. Parameters without a gradient are skipped (the
            optimiser does not touch them either). State tensors shaped like the parameter
            (AdamW's moments, SGD's momentum) are restored with it; a state created by this
            update is zero in the held slices.
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


class _PackSession(_Session):
    """A :class:`~resablate.engine.loop._Session` over the K groups of a packed model."""

    def __init__(
        self,
        model: nn.Module,
        train_data: ImageSource,
        evals: Mapping[str, ImageSource],
        recipe: Recipe,
        *,
        run_dirs: Sequence[Path],
        seeds: Sequence[int],
        **options: Any,
    ) -> None:
        """``options``: the ``_Session`` keywords (``run_dir`` is the pack's folder)."""
        super().__init__(model, train_data, evals, recipe, seed=seeds[0], on_step=(), **options)
        k = self.k = pack_size(model)
        device = self.device
        self.rows = k * recipe.batch_size
        self.seeds = tuple(seeds)
        self.run_dirs = tuple(run_dirs)
        self.run_loss = torch.zeros(k, dtype=torch.float64, device=device)
        self.run_correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.histories: list[list[EvalRecord]] = [[] for _ in range(k)]
        self.diverged: list[int | None] = [None] * k
        # Groups still training, as the device sees them (no host sync needed to mask updates).
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        params = dict(model.named_parameters())
        self.idle = {
            params[name]: groups.to(device)
            for name, groups in idle_groups(model).items()
            if params[name].requires_grad
        }

    # --- data ----------------------------------------------------------------------------------

    def epoch_indices(self) -> torch.Tensor:
        """The groups' orders of this epoch, interleaved by micro-batch: rows
        ``b * K * bs ..`` hold micro-batch ``b`` of group 0, then of group 1, ..."""
        bs, micro = self.recipe.batch_size, self.plan.micro_per_epoch
        orders = [epoch_order(seed, self.epoch, self.plan.n)[: micro * bs] for seed in self.seeds]
        return torch.stack(orders).view(self.k, micro, bs).transpose(0, 1).reshape(-1)

    def micro_batch(self, b: int, scale: float) -> torch.Tensor:
        """Forward and backward micro-batch ``b`` of every group; the groups' mean losses."""
        rows, k = self.rows, self.k
        images = self.batch_images(b).chunk(k)
        batches = [
            self.train_tf(
                group_images, stream_generator(seed, "augment", self.epoch, b, device=self.device)
            )
            for seed, group_images in zip(self.seeds, images, strict=True)
        ]
        x = pack_inputs(batches)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.train_labels[self.order_labels[b * rows : (b + 1) * rows]].view(k, -1)
        with self.autocast():
            logits = split_outputs(self.forward(x).float(), k)
        # Each group's loss exactly as a separate run computes it.
        losses = torch.stack(
            [F.cross_entropy(out, target) for out, target in zip(logits, y, strict=True)]
        )
        (torch.where(self.active, losses, 0.0).sum() * scale).backward()
        losses = losses.detach()
        self.run_loss += losses.double() * y.shape[1]
        self.run_correct += (logits.detach().argmax(dim=2) == y).sum(dim=1)
        self.run_images += y.shape[1]
        return losses

    # --- updates and divergence ----------------------------------------------------------------

    def apply_update(self, loss: torch.Tensor) -> None:
        """The optimiser step on the groups still training with a finite loss this step."""
        self.active &= torch.isfinite(loss)
        stopped = ~self.active
        if self.cuda or bool(stopped.any()):
            held = {p: stopped | self.idle.get(p, stopped) for p in self.optimizer_params()}
        else:
            held = self.idle
        masked_update(self.optimizer, self.optimizer.step, held)

    def optimizer_params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def check_losses(self) -> tuple[int | None, float]:
        """Mark the groups whose loss turned non-finite; the pack stops when all have."""
        losses = torch.stack([loss for _, loss in self.pending]).float().cpu()
        steps = [s for s, _ in self.pending]
        self.pending = []
        stopped = torch.zeros(self.k, dtype=torch.bool)
        for g in range(self.k):
            bad = (~torch.isfinite(losses[:, g])).nonzero()
            if self.diverged[g] is None and bad.numel():
                self.diverged[g] = steps[int(bad[0])]
                stopped[g] = True
        if bool(stopped.any()):
            hold_groups(self.model, stopped)
        alive = self.alive()
        if not alive:
            return max(s for s in self.diverged if s is not None), math.nan
        return None, float(losses[:, alive].mean())

    def alive(self) -> list[int]:
        """Groups that have not diverged (as far as the host has checked)."""
        return [g for g in range(self.k) if self.diverged[g] is None]

    # --- history and evaluation ----------------------------------------------------------------

    def record(self, group: int, record: EvalRecord) -> None:
        self.histories[group].append(record)
        self.emit(Evaluated(record, group=group))

    def record_train(self) -> None:
        if self.run_images == 0:
            return
        losses, correct = self.run_loss.cpu().tolist(), self.run_correct.cpu().tolist()
        for g in self.alive():
            self.record(g, self.train_record(losses[g], correct[g]))
        self.run_loss.zero_()
        self.run_correct.zero_()
        self.run_images = 0

    def write_history(self) -> None:
        for run_dir, history in zip(self.run_dirs, self.histories, strict=True):
            RunDir(run_dir).write_history(r.to_dict() for r in history)

    def evaluate_all(self) -> list[EvalResult] | None:  # type: ignore[override]
        """Evaluate every split with one packed pass per batch; the last split's K results."""
        self.record_train()
        results = None
        for name, data in self.evals.items():
            results = evaluate_pack(
                self.forward, data, self.eval_tf, split=name, **self.eval_options()
            )
            for g in self.alive():
                self.record(g, self.eval_record(results[g]))
        self.write_history()
        return results

    # --- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["seeds"] = list(self.seeds)
        state["histories"] = [[r.to_dict() for r in h] for h in self.histories]
        state["diverged"] = [-1 if s is None else s for s in self.diverged]
        state["active"] = self.active.cpu()
        return state

    def restore(self, path: Path, state: dict[str, Any]) -> None:
        if state.get("seeds") != list(self.seeds):
            raise ConfigError(
                f"{path} was written by a pack of other cells; start over without resuming, or "
                "use another output folder",
                field="resume",
            )
        super().restore(path, state)
        self.histories = [[EvalRecord.from_dict(r) for r in h] for h in state["histories"]]
        self.diverged = [None if s < 0 else int(s) for s in state["diverged"]]
        self.active.copy_(state["active"])
        stopped = torch.tensor([s is not None for s in self.diverged])
        if bool(stopped.any()):
            hold_groups(self.model, stopped)


def _pack_transforms(recipe: Recipe) -> tuple[Transform, Transform]:
    """Train transform without recycled buffers (K outputs are alive at once), recycled eval."""
    from resablate.data import BatchTransform, RecyclingTransform

    return (
        BatchTransform.from_recipe(recipe, train=True),
        RecyclingTransform(BatchTransform.from_recipe(recipe, train=False)),
    )


def train_pack(
    model: nn.Module,
    train_data: ImageSource,
    eval_data: ImageSource | Mapping[str, ImageSource],
    recipe: Recipe,
    *,
    pack_dir: str | Path,
    run_dirs: Sequence[str | Path],
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
    resume: bool = True,
    callback: Callable[[TrainEvent], None] | None = None,
    transforms: tuple[Transform, Transform] | None = None,
) -> list[TrainResult]:
    """Train the K groups of a packed model as K separate runs (see the module docstring).

    Args:
        model: A packed model (:func:`resablate.packing.fuse`), trained in place.
        train_data: The training split, shared by the groups (each reads it in its own order).
        eval_data: As for :func:`resablate.engine.train`.
        recipe: The recipe of every group.
        pack_dir: Folder of the pack's checkpoints (created).
        run_dirs: Each group's run directory (created), in group order.
        seeds: Each group's seed (data order and augmentation streams), in group order.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        resume: Continue from the pack's newest checkpoint; ``False`` starts over.
        callback: Receives the engine's events; :class:`~resablate.engine.events.Evaluated`
            carries the group.
        transforms: ``(train, eval)`` batch transforms; the train one must return a new tensor
            per call (the K groups' batches are alive together).

    Returns:
        One :class:`TrainResult` per group, in group order; a diverged group's status is
        ``"diverged"`` with its own step.

    Raises:
        ConfigError: ``run_dirs`` or ``seeds`` do not match the pack size, fp16 autocast,
            nothing to train, or a checkpoint of another pack in ``pack_dir``.
        DataError: The training split has fewer images than one batch.
    """
    k = pack_size(model)
    if len(run_dirs) != k or len(seeds) != k:
        raise ConfigError(
            f"a pack of {k} needs {k} run directories and seeds, got {len(run_dirs)} and "
            f"{len(seeds)}"
        )
    evals, device = prepare_run(train_data, eval_data, recipe, device)
    if resolve_execution(recipe, device).amp == "fp16":
        raise ConfigError(
            f"recipe {recipe.name!r} trains with fp16 autocast, whose single loss scale would let "
            "one packed cell's overflow skip every cell's step; use amp bf16 or train the "
            "cells unpacked",
            field="pack",
        )
    pack_dir = Path(pack_dir)
    dirs = [Path(d) for d in run_dirs]
    for folder in (pack_dir, *dirs):
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale(folder)
    frozen_before = _frozen_fingerprint(model)
    session = _PackSession(
        model,
        train_data,
        evals,
        recipe,
        run_dir=pack_dir,
        run_dirs=dirs,
        seeds=seeds,
        device=device,
        callback=callback,
        transforms=transforms or _pack_transforms(recipe),
    )
    start_session(session, resume=resume, run_dirs=dirs)
    status, _, finals = run_session(session)
    frozen = frozen_check(frozen_before, _frozen_fingerprint(model))
    states = unfuse(model)
    results = []
    for g, run_dir in enumerate(dirs):
        diverged_at = session.diverged[g]
        results.append(
            finish_run(
                RunDir(run_dir),
                session,
                status="done" if diverged_at is None else "diverged",
                steps=session.step if diverged_at is None else diverged_at,
                final=finals[g] if finals is not None and diverged_at is None else None,
                history=session.histories[g],
                diverged_at=diverged_at,
                frozen=frozen,
                weights=states[g],
            )
        )
    session.emit(
        TrainFinished(status=status, steps=session.step, train_seconds=session.train_seconds)
    )
    return results
