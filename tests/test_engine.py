"""The training engine: schedule, streams, accumulation, divergence, checkpoints, exact resume."""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from resablate.engine import checkpoint as ckpt
from resablate.engine import events
from resablate.engine.loop import StepInfo, train
from resablate.engine.optim import build_optimizer, fused_supported
from resablate.engine.schedule import build_scheduler, lr_factor, warmup_steps
from resablate.engine.seeding import epoch_order, stream_generator, stream_seed
from resablate.errors import ConfigError, DataError
from resablate.recipes import Recipe, get_recipe


class TinySource:
    """A synthetic split of ``n`` uint8 16×16 images; class 1 has a darker red channel."""

    classes = ("FAKE", "REAL")

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
        self.images[self.labels == 1, 0] //= 2
        self.paths = tuple(f"img{i:03d}.png" for i in range(n))

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def flip_transform(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = images.float() / 255
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x) - 0.5


def plain_transform(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images.float() / 255 - 0.5


def tiny_model(batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm: nn.Module = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        norm,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


RECIPE = get_recipe(
    "demo", batch_size=8, grad_accum=2, epochs=3, eval_every=4, checkpoint_every=2, lr=3e-3
)


def run_tiny(run_dir: Path, *, resume: bool = True, callback=None, recipe: Recipe = RECIPE):
    return train(
        tiny_model(),
        TinySource(72, 0),
        TinySource(24, 1),
        recipe,
        run_dir=run_dir,
        seed=7,
        resume=resume,
        callback=callback,
        transforms=(flip_transform, flip_transform),
    )


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "history.jsonl").read_text() == (b / "history.jsonl").read_text()
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()


# --- schedule and streams ------------------------------------------------------------------------


def test_linear_schedule_against_formula() -> None:
    total, peak = 50, 5e-5
    w = warmup_steps(total, 0.1)
    assert w == 5
    recipe = get_recipe("cifake")
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    sched = build_scheduler(opt, recipe, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0  # step 0: warm-up starts at 0
    assert lrs[2] == pytest.approx(peak * 2 / 5)  # inside warm-up
    assert lrs[5] == pytest.approx(peak)  # end of warm-up: the peak
    assert lrs[27] == pytest.approx(peak * (50 - 27) / 45)  # middle of the decay
    assert lrs[49] == pytest.approx(peak / 45)  # last update
    assert opt.param_groups[0]["lr"] == 0.0  # decayed to 0 after the last step
    assert lr_factor(10, 50, 5, "constant") == 1.0


def test_warmup_rounds_up() -> None:
    assert warmup_steps(781, 0.1) == math.ceil(78.1) == 79
    assert warmup_steps(10, 0.0) == 0
    assert lr_factor(0, 10, 0, "linear") == 1.0


def test_streams_are_stable_and_independent() -> None:
    assert stream_seed(0, "order", 0) == stream_seed(0, "order", 0)
    assert stream_seed(0, "order", 0) != stream_seed(0, "order", 1)
    assert stream_seed(0, "order", 0) != stream_seed(1, "order", 0)
    assert stream_seed(0, "augment", 1, 2) < 2**63
    order = epoch_order(3, 0, 100)
    assert sorted(order.tolist()) == list(range(100))
    assert not torch.equal(order, epoch_order(3, 1, 100))
    assert torch.equal(order, epoch_order(3, 0, 100))
    g1, g2 = stream_generator(3, "augment", 0, 5), stream_generator(3, "augment", 0, 5)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


# --- the loop ------------------------------------------------------------------------------------


def test_run_directory_and_result(tmp_path: Path) -> None:
    seen: list[object] = []
    result = run_tiny(tmp_path, callback=seen.append)
    # 72 images / batch 8 = 9 micro-batches → ceil(9 / 2) = 5 steps per epoch, 3 epochs.
    assert (result.status, result.steps, result.total_steps, result.epochs) == ("done", 15, 15, 3.0)
    assert result.diverged_at_step is None and result.frozen_check == "not applicable"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "history.jsonl",
        "model.safetensors",
        "predictions.csv",
        "recipe.json",
        "train.json",
    ]
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step-00000014.pt",
        "step-00000015.pt",
    ]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["split"]) for h in history] == [
        (4, "train"),
        (4, "test"),
        (8, "train"),
        (8, "test"),
        (12, "train"),
        (12, "test"),
        (15, "train"),
        (15, "test"),
    ]
    assert history[-1]["accuracy"] == result.final.metrics.accuracy
    assert history[-1]["lr"] == pytest.approx(RECIPE.lr * 1 / 13)  # last update: (15-14)/(15-2)
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,path,label,pred,prob_positive"
    assert len(rows) == 25 and rows[1].startswith("0,img000.png,")
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["status"] == "done" and saved["final"]["n"] == 24
    assert json.loads((tmp_path / "recipe.json").read_text()) == RECIPE.to_dict()
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "TrainStarted" and kinds[-1] == "TrainFinished"
    assert kinds.count("StepProgress") == 15 and kinds.count("CheckpointSaved") == 8
    progress = [e for e in seen if isinstance(e, events.StepProgress)]
    assert progress[-1].eta_seconds == 0.0 and progress[0].lr == 0.0


def test_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    run_tiny(tmp_path)
    latest = ckpt.load_latest(tmp_path / "checkpoints")
    path, state = latest.path, latest.state
    assert path.name == "step-00000015.pt"
    assert (state["step"], state["epoch"], state["position"], state["micro_step"]) == (15, 2, 9, 0)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng_cpu", "histories"}


def test_gradient_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    kw = {"epochs": 1, "eval_every": None, "checkpoint_every": None, "warmup_fraction": 0.0}
    results = []
    for name, recipe in (
        ("accum", get_recipe("demo", batch_size=4, grad_accum=2, **kw)),
        ("large", get_recipe("demo", batch_size=8, grad_accum=1, **kw)),
    ):
        model = tiny_model(batchnorm=False)
        train(
            model,
            TinySource(32, 0),
            TinySource(8, 1),
            recipe,
            run_dir=tmp_path / name,
            seed=1,
            transforms=(plain_transform, plain_transform),
        )
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


class _ExplodesAt(nn.Module):
    """Multiplies its input by NaN from its ``at``-th training forward pass on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        return x * float("nan") if self.training and self.calls >= self.at else x


def test_non_finite_loss_ends_as_diverged(tmp_path: Path) -> None:
    model = tiny_model()
    model.append(_ExplodesAt(at=5))  # micro-batch 5 = first micro-batch of step 3
    result = train(
        model,
        TinySource(72, 0),
        TinySource(24, 1),
        RECIPE,
        run_dir=tmp_path,
        seed=0,
        transforms=(flip_transform, flip_transform),
    )
    assert (result.status, result.diverged_at_step, result.steps) == ("diverged", 3, 3)
    assert result.reason == "non-finite training loss at step 3"
    assert result.final is None
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "predictions.csv").exists()
    # The checkpoint of step 2 is kept; nothing non-finite was saved.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2]
    assert json.loads((tmp_path / "train.json").read_text())["diverged_at_step"] == 3


def test_on_step_hooks_see_gradients(tmp_path: Path) -> None:
    norms: list[tuple[int, float]] = []

    def hook(info: StepInfo) -> None:
        grads = [p.grad.norm() for p in info.model.parameters() if p.grad is not None]
        norms.append((info.step, float(torch.stack(grads).norm())))

    recipe = RECIPE.replace(epochs=1)
    train(
        tiny_model(),
        TinySource(72, 0),
        TinySource(24, 1),
        recipe,
        run_dir=tmp_path,
        seed=0,
        on_step=[hook],
        transforms=(flip_transform, flip_transform),
    )
    assert [s for s, _ in norms] == [1, 2, 3, 4, 5]
    assert all(n > 0 for _, n in norms)


def test_eval_splits_mapping(tmp_path: Path) -> None:
    result = train(
        tiny_model(),
        TinySource(72, 0),
        {"val": TinySource(16, 2), "test": TinySource(24, 1)},
        RECIPE.replace(epochs=1, eval_every=None),
        run_dir=tmp_path,
        seed=0,
        transforms=(flip_transform, flip_transform),
    )
    assert [r.split for r in result.history] == ["train", "val", "test"]
    assert result.final.split == "test" and result.final.metrics.n == 24


def test_too_few_images_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has 4 images, fewer than one batch"):
        train(tiny_model(), TinySource(4, 0), TinySource(4, 1), RECIPE, run_dir=tmp_path, seed=0)


def test_resume_under_another_recipe_refused(tmp_path: Path) -> None:
    run_tiny(tmp_path, recipe=RECIPE.replace(epochs=1))
    with pytest.raises(
        ConfigError, match="written by a run with another recipe, seed or pack of cells"
    ):
        run_tiny(tmp_path, recipe=RECIPE.replace(epochs=2))
    result = run_tiny(tmp_path, recipe=RECIPE.replace(epochs=2), resume=False)
    assert (result.status, result.resumed_from_step) == ("done", 0)


# --- exact resume --------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _whole_and_cut_at_7(tmp_path: Path) -> None:
    """Run the tiny training whole (``tmp_path/whole``) and stopped after step 7 (``cut``)."""
    run_tiny(tmp_path / "whole")

    def stop_at_7(event: object) -> None:
        if isinstance(event, events.StepProgress) and event.step == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_tiny(tmp_path / "cut", callback=stop_at_7)


def test_resume_after_interruption_is_exact(tmp_path: Path, deterministic: None) -> None:
    _whole_and_cut_at_7(tmp_path)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")] == [6, 4]
    resumed = run_tiny(tmp_path / "cut")
    assert resumed.resumed_from_step == 6  # mid-epoch: epoch 1, micro-batch 2
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_a_checkpoint_of_a_run_of_one_from_before_packs_resumes(
    tmp_path: Path, deterministic: None
) -> None:
    _whole_and_cut_at_7(tmp_path)
    path = ckpt.checkpoint_path(tmp_path / "cut" / "checkpoints", 6)
    state = torch.load(path, weights_only=True)
    (state["seed"],), (state["history"],) = state.pop("seeds"), state.pop("histories")
    del state["diverged"]
    state["running"]["loss"] = state["running"]["loss"][0]
    state["running"]["correct"] = state["running"]["correct"][0]
    ckpt.save_checkpoint(tmp_path / "cut" / "checkpoints", 6, state)
    assert run_tiny(tmp_path / "cut").resumed_from_step == 6
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x8a\x13random bytes\xff" * 40, "does not load: "),
        (pickle.dumps(collections.OrderedDict), "does not load: "),
        (b"step 8 notes\n", "does not load: "),
        (None, "not a checkpoint (holds a list)"),
    ],
    ids=["random-bytes", "class-pickle", "text", "list"],
)
def test_a_bad_newest_checkpoint_is_skipped_and_named(
    tmp_path: Path, deterministic: None, content: bytes | None, reason: str
) -> None:
    _whole_and_cut_at_7(tmp_path)
    bad = ckpt.checkpoint_path(tmp_path / "cut" / "checkpoints", 8)
    if content is None:
        torch.save([1, 2], bad)
    else:
        bad.write_bytes(content)
    seen: list[object] = []
    resumed = run_tiny(tmp_path / "cut", callback=seen.append)
    assert resumed.resumed_from_step == 6
    started = next(e for e in seen if isinstance(e, events.TrainStarted))
    assert started.start_step == 6
    assert len(started.skipped_checkpoints) == 1
    assert started.skipped_checkpoints[0].startswith(f"{bad}: {reason}")
    assert "\n" not in started.skipped_checkpoints[0]
    assert resumed.skipped_checkpoints == started.skipped_checkpoints
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import test_engine as t
from resablate.engine import events

def slow(event):
    if isinstance(event, events.StepProgress):
        time.sleep(0.15)

t.run_tiny(__import__("pathlib").Path({run_dir!r}), callback=slow)
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path: Path, deterministic: None) -> None:
    run_dir = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), run_dir=str(run_dir))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            steps = [s for s, _ in ckpt.list_checkpoints(run_dir / "checkpoints")]
            if steps and steps[0] >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the training subprocess ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.safetensors").exists()
    resumed = run_tiny(run_dir)
    assert 4 <= resumed.resumed_from_step < 15
    run_tiny(tmp_path / "whole")
    _assert_same_run(tmp_path / "whole", run_dir)


@pytest.mark.parametrize("name", ["demo", "food"])
def test_the_optimiser_updates_each_slice_of_a_tensor_as_its_own_tensor(
    name: str,
) -> None:
    recipe = get_recipe(name, lr=0.1, weight_decay=0.05)
    torch.manual_seed(0)
    pieces = [nn.Parameter(torch.randn(n, dtype=torch.float64)) for n in (5, 17, 33)]
    joined = nn.Parameter(torch.cat([p.detach() for p in pieces]))
    alone, together = build_optimizer(pieces, recipe), build_optimizer([joined], recipe)
    fused = True if recipe.optimizer == "adamw" else None  # SGD's fused kernel fails the below
    assert alone.defaults["fused"] is fused and together.defaults["fused"] is fused
    for _ in range(3):
        grads = [torch.randn(len(p), dtype=torch.float64) for p in pieces]
        for p, g in zip(pieces, grads, strict=True):
            p.grad = g
        joined.grad = torch.cat(grads)
        alone.step()
        together.step()
    # Bit for bit: a packed model's slices move exactly as its cells' own tensors would.
    assert torch.equal(joined.detach(), torch.cat([p.detach() for p in pieces]))


def test_parameters_fused_kernels_do_not_take_get_the_default_optimiser() -> None:
    on_meta = [nn.Parameter(torch.zeros(3, device="meta"))]
    assert not fused_supported(on_meta)
    assert build_optimizer(on_meta, get_recipe("demo")).defaults["fused"] is None
    assert fused_supported([nn.Parameter(torch.zeros(3))])


def test_time_steps_times_the_sessions_own_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from resablate.engine import loop

    calls: list[int] = []
    step = loop._Session.optimiser_step

    def counted(self: loop._Session) -> torch.Tensor:
        calls.append(self.step)
        return step(self)

    monkeypatch.setattr(loop._Session, "optimiser_step", counted)
    times = loop.time_steps(tiny_model(), RECIPE, num_classes=2, steps=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert calls == [0, 1, 2, 3]  # one warm-up step, then the timed ones
    # A budget spent by the warm-up still times one step.
    assert len(loop.time_steps(tiny_model(), RECIPE, num_classes=2, budget_seconds=0.0)) == 1
