"""Evaluation of a model on one split: loss, metrics and per-sample predictions."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from resablate.engine.data import ImageSource, Transform
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
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    preds, probs = [], []
    labels = data.labels
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(data)))
                x = transform(data.get_batch(idx).to(device, non_blocking=True), generator)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels[idx.to(labels.device)].to(device, non_blocking=True)
                with autocast if autocast is not None else contextlib.nullcontext():
                    logits = model(x)
                logits = logits.float()
                total_loss += F.cross_entropy(logits, y, reduction="sum").double()
                preds.append(logits.argmax(dim=1))
                probs.append(logits.softmax(dim=1)[:, positive])
    finally:
        model.train(was_training)
    n = len(data)
    # One transfer at the end, not one per batch.
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.int64)
    prob = torch.cat(probs).cpu() if probs else torch.zeros(0)
    true = labels.cpu()
    return EvalResult(
        split=split,
        loss=float(total_loss.item()) / max(1, n),
        metrics=classification_metrics(true, pred, num_classes=num_classes, positive=positive),
        labels=tuple(true.tolist()),
        preds=tuple(pred.tolist()),
        probs=tuple(prob.tolist()),
        paths=tuple(str(p) for p in getattr(data, "paths", ())),
    )
