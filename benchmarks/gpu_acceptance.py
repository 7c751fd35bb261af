"""GPU acceptance: everything about the CUDA path in one run of at most five minutes on one GPU.

Checks and prints, on ``cuda`` (the current device):

1. bf16 and fp16 tiny runs (ResNet-18, 32 px) end ``done`` with a finite loss; the fp16 run's
   GradScaler scale is finite;
2. after the bf16 run every 4-d parameter is channels_last;
3. steady-state optimiser steps make no host synchronisation: steps 3 and later of a bf16 run
   execute under ``torch.cuda.set_sync_debug_mode("error")``;
4. stop and resume: a run stopped after its step-5 checkpoint and resumed reports
   ``resumed_from_step == 5`` and ends with weights close to the uninterrupted run's (printed:
   max |Δw|; bitwise is not promised on CUDA, see docs/training.md);
5. ``torch.compile`` after residual surgery: graphs and graph breaks (``torch._dynamo.explain``),
   then a compiled run that ends with a finite loss;
6. ResNet-50 at 224×224, batch 256, on generated 256×256 JPEGs: images/s, peak memory and
   model-FLOP utilisation against the device's dense bf16 peak for the engine (bf16,
   channels_last, data included), the stock AMP loop (ImageFolder + DataLoader workers + PIL
   transforms + bf16 autocast + channels_last) and the stock fp32 loop, and the ratios
   (targets: ≥ 1.5× the AMP loop, ≥ 2.5× the fp32 loop);
7. 16 packed ResNet-18 cells at 32×32 against the same cells one at a time
   (``benchmarks/packing.py``; target ≥ 6×);
8. ``pytest -m gpu``.

It runs from the working tree (it puts the repository root on ``sys.path``) and needs only torch,
torchvision, timm, transformers, typer, rich and safetensors. With ``--out DIR`` it writes
``DIR/acceptance.json`` (every check with its figures), ``DIR/acceptance.log`` (what it printed)
and ``DIR/pytest-gpu.log`` (pytest's stdout and stderr).

Without a visible CUDA device it prints one line saying so and exits 0. Exit status 1 when a check
fails. MFU counts 3 × the forward pass's multiply-adds × 2 flops per trained image
(``resablate.counting.count``).

Usage::

    PYTHONPATH=. python3 benchmarks/gpu_acceptance.py --out DIR   # all checks, then pytest -m gpu
    python benchmarks/gpu_acceptance.py --no-pytest     # the checks only
    python benchmarks/gpu_acceptance.py --peak-tflops 989   # a GPU the table below does not know
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# From the working tree, without an install or PYTHONPATH: resablate, then the sibling benchmarks.
sys.path[:0] = [str(ROOT), str(HERE)]
NO_CUDA = "gpu_acceptance: no CUDA device is visible; nothing to check (run it on a GPU machine)"

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity), by name part.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    figures: tuple[tuple[str, float], ...] = ()


def bf16_peak(name: str, override: float | None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (``override`` first), ``None`` if unknown."""
    if override is not None:
        return override
    return next((peak for part, peak in BF16_PEAK_TFLOPS if part in name), None)


def tiny_split(n: int, size: int, seed: int):
    """A decoded split of ``n`` random ``size`` px images with a learnable cue."""
    from resablate.data.cache import DecodedSplit

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] //= 2
    return DecodedSplit(
        images=images,
        labels=labels,
        paths=tuple(f"{i}.png" for i in range(n)),
        classes=("FAKE", "REAL"),
        split="train",
        bad_files=(),
        cache_file=Path("unused.npy"),
        from_cache=True,
    )


TINY = {"images": 512, "size": 32, "batch": 64}
"""The tiny runs: training images, their side in pixels, batch size (10 steps each)."""


def tiny_run(run_dir: Path, device: str, *, callback=None, model=None, **overrides):
    """ResNet-18 (or ``model``) on :data:`TINY` images for 10 steps, bf16 or as overridden."""
    from resablate.engine import train
    from resablate.recipes import get_recipe
    from resablate.weights import build_model

    # A random-resized crop to 3/4 of the side: the augmentation's resampling path runs too.
    settings = {
        "amp": "bf16",
        "channels_last": True,
        "train_transform": "random_resized_crop",
        "image_size": TINY["size"] * 3 // 4,
        **overrides,
    }
    recipe = get_recipe("demo", batch_size=TINY["batch"], max_steps=10, eval_every=None, **settings)
    torch.manual_seed(0)
    model = model if model is not None else build_model("resnet18", num_classes=2)
    result = train(
        model,
        tiny_split(TINY["images"], TINY["size"], 0),
        tiny_split(TINY["images"] // 4, TINY["size"], 1),
        recipe,
        run_dir=run_dir,
        seed=0,
        device=device,
        callback=callback,
    )
    return model, result


def last_loss(run_dir: Path) -> float:
    import json

    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line][-1]["loss"]


def check_precisions(work: Path, device: str) -> list[Check]:
    import math

    checks = []
    for amp in ("bf16", "fp16"):
        model, result = tiny_run(work / amp, device, amp=amp)
        loss = last_loss(work / amp)
        ok = result.status == "done" and math.isfinite(loss) and result.execution.amp == amp
        detail = (
            f"status {result.status}, last train loss {loss:.4f}, ran {result.execution.summary()}"
        )
        checks.append(Check(f"{amp} tiny run ends with a finite loss", ok, detail))
        if amp == "bf16":
            four_d = [p for p in model.parameters() if p.dim() == 4]
            nhwc = sum(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
            checks.append(
                Check(
                    "parameters are channels_last",
                    nhwc == len(four_d),
                    f"{nhwc}/{len(four_d)} 4-d parameters",
                )
            )
    return checks


def check_no_sync(work: Path) -> Check:
    """Steps 3 and later of a bf16 run on CUDA under ``set_sync_debug_mode("error")``."""
    from resablate.engine.loop import _Session

    step = _Session.optimiser_step
    checked = []

    def strict_step(self: _Session) -> torch.Tensor:
        if self.step < 2:  # the first steps create the optimiser's state
            return step(self)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            checked.append(self.step)

    _Session.optimiser_step = strict_step
    try:
        _, result = tiny_run(work / "sync", "cuda")
    except RuntimeError as exc:
        return Check("no host sync in steady-state steps", False, str(exc).splitlines()[0])
    finally:
        _Session.optimiser_step = step
    detail = f"{len(checked)} steps under set_sync_debug_mode('error'), status {result.status}"
    return Check("no host sync in steady-state steps", result.status == "done", detail)


def check_resume(work: Path, device: str) -> Check:
    from resablate.engine.events import CheckpointSaved

    def stop(event: object) -> None:
        if isinstance(event, CheckpointSaved) and event.step == 5:
            raise KeyboardInterrupt

    full_model, _ = tiny_run(work / "full", device, checkpoint_every=5)
    with contextlib.suppress(KeyboardInterrupt):
        tiny_run(work / "part", device, checkpoint_every=5, callback=stop)
    part_model, resumed = tiny_run(work / "part", device, checkpoint_every=5)
    pairs = zip(full_model.state_dict().values(), part_model.state_dict().values(), strict=True)
    diff = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    ok = resumed.resumed_from_step == 5 and resumed.status == "done" and diff < 1e-1
    detail = f"resumed from step {resumed.resumed_from_step}; max |Δw| vs uninterrupted {diff:.2e}"
    return Check("stop and resume", ok, detail)


def check_compile(work: Path, device: str) -> Check:
    import math

    from resablate.surgery import drop_residual
    from resablate.weights import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2)
    drop_residual(model, ["conv4_x"])
    size = TINY["size"] * 3 // 4
    explained = torch._dynamo.explain(model.to(device))(
        torch.randn(2, 3, size, size, device=device)
    )
    torch._dynamo.reset()
    _, result = tiny_run(work / "compile", device, model=model, compile=True)
    loss = last_loss(work / "compile")
    detail = (
        f"{explained.graph_count} graph(s), {explained.graph_break_count} graph break(s); "
        f"compiled run {result.status}, last train loss {loss:.4f}"
    )
    return Check(
        "torch.compile after surgery", result.status == "done" and math.isfinite(loss), detail
    )


def write_jpegs(root: Path, n: int, size: int = 256) -> Path:
    """A CIFAKE-style tree: ``n`` random ``size`` px training JPEGs (two classes), 64 test ones."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 64)):
        for c, name in enumerate(("FAKE", "REAL")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count // 2):
                base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                image = Image.fromarray(base).resize((size, size), Image.BILINEAR)
                if c:
                    image = image.rotate(90)
                image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


RESNET50 = {"images": 4096, "size": 224, "batch": 256, "steps": 40, "warmup": 10}
"""The throughput comparison: generated training JPEGs (256 px), input side, batch, timed and
warm-up steps."""


def peak_memory_gib(device: str) -> float | None:
    """Peak memory allocated on ``device`` since the last reset, in GiB (``None`` on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None


def check_resnet50(work: Path, peak: float | None, device: str) -> list[Check]:
    from train_throughput import Config, engine_rate, reference_rate

    from resablate.counting import count
    from resablate.weights import build_model

    root = write_jpegs(work / "jpegs", RESNET50["images"])
    workers = min(16, os.cpu_count() or 2)
    size, batch = RESNET50["size"], RESNET50["batch"]
    steps, warmup = RESNET50["steps"], RESNET50["warmup"]
    config = Config("resnet50", size, batch, steps, warmup, device=device, workers=workers)
    flops = 6 * count(build_model("resnet50", num_classes=2), (3, size, size)).flops
    rows = []
    for name, measure in (
        (
            "engine (bf16, channels_last, data on the device)",
            lambda: engine_rate(config, root, 0, amp="bf16"),
        ),
        (
            "engine (bf16, channels_last, compile reduce-overhead: CUDA graphs)",
            lambda: engine_rate(config, root, 0, amp="bf16", compile="reduce-overhead"),
        ),
        (
            f"stock AMP loop (bf16 autocast, channels_last, {workers} DataLoader workers)",
            lambda: reference_rate(config, root, 0, amp=True),
        ),
        (
            f"stock fp32 loop ({workers} DataLoader workers)",
            lambda: reference_rate(config, root, 0),
        ),
    ):
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        rate = measure()
        memory = peak_memory_gib(device)
        mfu = f"{rate * flops / (peak * 1e12):.1%}" if peak else "unknown peak"
        rows.append((name, rate, memory, mfu))
    engine, graphs, amp, fp32 = (r[1] for r in rows)
    checks = [
        Check(
            f"ResNet-50 {size} px: {name}",
            True,
            f"{rate:,.1f} img/s, peak {'—' if mem is None else f'{mem:.1f} GiB'}, MFU {mfu}",
            (("images_per_s", rate), *((("peak_gib", mem),) if mem is not None else ())),
        )
        for name, rate, mem, mfu in rows
    ]
    for target, name, base in ((1.5, "stock AMP", amp), (2.5, "stock fp32", fp32)):
        ratio = max(engine, graphs) / base
        checks.append(
            Check(
                f"engine ≥ {target}× the {name} loop",
                ratio >= target,
                f"{ratio:.2f}×",
                (("ratio", ratio),),
            )
        )
    return checks


PACKED = {"arch": "resnet18", "k": 16, "batch": 32, "steps": 10}
"""The packing comparison: architecture, cells, batch per cell (32×32 images), timed rounds."""


def check_packing(device: str) -> Check:
    """K packed cells against the same cells one at a time (``benchmarks/packing.py``)."""
    from packing import packed_vs_alone

    row = packed_vs_alone(
        PACKED["arch"], PACKED["k"], PACKED["batch"], PACKED["steps"], torch.device(device)
    )
    detail = (
        f"one at a time {row['alone_images_per_s_per_cell']:.1f}, packed "
        f"{row['packed_images_per_s_per_cell']:.1f} images/s per cell: {row['ratio']:.2f}×"
    )
    name = f"{PACKED['k']} packed ResNet-18 cells (32 px) ≥ 6× one at a time"
    return Check(name, row["ratio"] >= 6, detail, tuple(row.items()))


def run_check(name: str, function: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an exception is a failed check with its first line."""
    start = time.perf_counter()
    try:
        found = function()
    except Exception as exc:
        found = Check(
            name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    checks = found if isinstance(found, list) else [found]
    for check in checks:
        mark = "PASS" if check.ok else "FAIL"
        print(f"{mark}  {check.name}: {check.detail}", flush=True)
    print(f"      ({time.perf_counter() - start:.0f} s)", flush=True)
    return checks


class Tee:
    """Writes to the terminal and to a log file."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()


def run_pytest(out: Path | None) -> Check:
    """``pytest -m gpu`` on the working tree's tests; its stdout and stderr go to
    ``out/pytest-gpu.log``."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [*command, str(ROOT / "tests")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )
    if out is not None:
        (out / "pytest-gpu.log").write_text(
            f"$ {' '.join(command)} tests\n--- stdout ---\n{done.stdout}\n"
            f"--- stderr ---\n{done.stderr}"
        )
    tail = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or ["no output"])[
        -1
    ]
    return Check("pytest -m gpu", done.returncode == 0, tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-pytest", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--out", type=Path, help="folder for acceptance.json and the logs")
    args = parser.parse_args(argv)
    out: Path | None = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print(NO_CUDA)
        if out is not None:
            (out / "acceptance.json").write_text(json.dumps({"cuda": False, "checks": []}) + "\n")
        return 0
    with contextlib.ExitStack() as stack:
        if out is not None:
            log = stack.enter_context((out / "acceptance.log").open("w"))
            stack.enter_context(contextlib.redirect_stdout(Tee(sys.stdout, log)))
            stack.enter_context(contextlib.redirect_stderr(Tee(sys.stderr, log)))
        return run_all(args, out)


def run_all(args: argparse.Namespace, out: Path | None) -> int:
    """Every check on ``cuda``, printed; with ``out``, also written to ``out/acceptance.json``."""
    from resablate.engine.execution import device_name

    name = device_name(torch.device("cuda"))
    peak = bf16_peak(name, args.peak_tflops)
    print(
        f"{name} ({torch.cuda.device_count()} visible), torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, bf16 peak {peak or 'unknown'} TFLOP/s",
        flush=True,
    )
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checks += run_check("precisions", lambda: check_precisions(work, "cuda"))
        checks += run_check("no host sync", lambda: check_no_sync(work))
        checks += run_check("stop and resume", lambda: check_resume(work, "cuda"))
        checks += run_check("torch.compile after surgery", lambda: check_compile(work, "cuda"))
        checks += run_check("ResNet-50 throughput", lambda: check_resnet50(work, peak, "cuda"))
        checks += run_check("packed cells", lambda: check_packing("cuda"))
    if not args.no_pytest:
        checks += run_check("pytest -m gpu", lambda: run_pytest(out))
    failed = [c.name for c in checks if not c.ok]
    print(
        f"{len(checks) - len(failed)}/{len(checks)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    if out is not None:
        report = {
            "cuda": True,
            "device": name,
            "torch": torch.__version__,
            "cuda_version": torch.version.cuda,
            "bf16_peak_tflops": peak,
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "figures": dict(c.figures)}
                for c in checks
            ],
        }
        (out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
