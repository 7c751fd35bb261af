"""Evaluation of a model (or its K groups) on one split: loss, metrics, per-sample predictions."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from resablate.engine.data import ImageSource, Transform
from resablate.engine.groups import ModelGroups, OneModel, replicate
from resablate.engine.results import EvalResult
from resablate.metrics import classification_metrics


def evaluate(
    model: nn.Module,
    data: ImageSource,
    transform: Transform,
    *,
    split: str,
    num_classes: int,
    positive: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on every sample of ``data`` in order (eval mode, no gradients).

    The model is put back into training mode afterwards. Logits are cast to fp32 before the loss
    and the softmax.

    Args:
        model: The model (on ``device``).
        data: The split.
        transform: Deterministic eval transform (its generator argument is not used for
            randomness; a fixed one is passed).
        split: Name recorded in the result.
        num_classes: Number of classes.
        positive: Positive class index.
        batch_size: Images per forward pass.
        device: Where the model runs.
        autocast: Autocast context to run the forward pass in (``None`` = fp32).
        channels_last: Feed NHWC inputs.
    """
    (result,) = evaluate_groups(
        model,
        OneModel(model),
        data,
        transform,
        split=split,
        num_classes=num_classes,
        positive=positive,
        batch_size=batch_size,
        device=device,
        autocast=autocast,
        channels_last=channels_last,
    )
    return result


def evaluate_groups(
    model: nn.Module,
    groups: ModelGroups,
    data: ImageSource,
    transform: Transform,
    *,
    split: str,
    num_classes: int,
    positive: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
) -> list[EvalResult]:
    """Evaluate every group of ``model`` on ``data``: one forward pass per batch feeds the batch
    to all K groups (:func:`~resablate.engine.groups.replicate`). Arguments as :func:`evaluate`.

    Indices are made where the split's images are and the labels moved to ``device`` once, so a
    batch copies nothing between host and device; predictions come back once, at the end.

    Returns:
        One result per group, in group order.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    k = groups.size
    total_loss = torch.zeros(k, dtype=torch.float64, device=device)
    preds, probs = [], []
    data_device = getattr(data, "device", torch.device("cpu"))
    labels = data.labels.to(device)
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                stop = min(start + batch_size, len(data))
                idx = torch.arange(start, stop, device=data_device)
                x = transform(data.get_batch(idx).to(device, non_blocking=True), generator)
                x = replicate(groups, x)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels[start:stop]
                with autocast if autocast is not None else contextlib.nullcontext():
                    logits = groups.split(model(x).float())  # [K, B, classes]
                # Each group's loss as a plain model's evaluation computes it.
                total_loss += torch.stack(
                    [F.cross_entropy(out, y, reduction="sum") for out in logits]
                ).double()
                preds.append(logits.argmax(dim=2))
                probs.append(logits.softmax(dim=2)[..., positive])
    finally:
        model.train(was_training)
    n = len(data)
    # One transfer at the end, not one per batch.
    pred = torch.cat(preds, dim=1).cpu() if preds else torch.zeros(k, 0, dtype=torch.int64)
    prob = torch.cat(probs, dim=1).cpu() if probs else torch.zeros(k, 0)
    true = labels.cpu()
    losses = total_loss.cpu().tolist()
    paths = tuple(str(p) for p in getattr(data, "paths", ()))
    return [
        EvalResult(
            split=split,
            loss=losses[g] / max(1, n),
            metrics=classification_metrics(
                true, pred[g], num_classes=num_classes, positive=positive
            ),
            labels=tuple(true.tolist()),
            preds=tuple(pred[g].tolist()),
            probs=tuple(prob[g].tolist()),
            paths=paths,
        )
        for g in range(k)
    ]
