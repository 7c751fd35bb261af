"""The engine's CUDA branches, exercised on the CPU: autocast, GradScaler, channels_last, compile,
checkpoints across devices and precisions, the device's RNG state, backend flags, the memory
policy of the caches, and a census of host synchronisations in steady-state steps."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from sync_census import SyncCensus
from test_engine import TinySource, _assert_same_run, flip_transform, tiny_model
from torch import nn

from resablate.data.cache import DecodedSplit
from resablate.engine import checkpoint as ckpt
from resablate.engine import loop
from resablate.engine.data import device_resident, is_resident, place_sources
from resablate.engine.execution import (
    CUBLAS_WORKSPACE_CONFIG,
    Execution,
    backend_settings,
    compile_model,
    resolve_execution,
)
from resablate.engine.loop import _Session, device_rng_state, set_device_rng_state, train
from resablate.engine.prefetch import Prefetcher
from resablate.errors import ConfigError
from resablate.recipes import Recipe, get_recipe

RECIPE = get_recipe(
    "demo", batch_size=8, grad_accum=2, epochs=2, eval_every=None, checkpoint_every=2, lr=3e-3
)
CPU = torch.device("cpu")


def decoded(source: TinySource) -> DecodedSplit:
    """``source`` as a decode-once split held in memory (the resident path of the engine)."""
    return DecodedSplit(
        images=source.images,
        labels=source.labels,
        paths=source.paths,
        classes=source.classes,
        split="train",
        bad_files=(),
        cache_file=Path("unused.npy"),
        from_cache=True,
    )


class Recorder(nn.Module):
    """Wraps a model; records the autocast state and memory format of each training input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[tuple[bool, torch.dtype, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(
                (
                    torch.is_autocast_enabled("cpu"),
                    torch.get_autocast_dtype("cpu"),
                    x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                )
            )
        return self.model(x)


CPU_EXECUTION = {
    "device": "cpu",
    "device_name": "cpu",
    "gpu_count": 0,
    "amp": "none",
    "channels_last": False,
    "compile": "off",
    "tf32": False,
    "cudnn_benchmark": False,
    "deterministic": False,
}
"""What a default run on the CPU records (``Execution.to_dict()``)."""
CUDA_POLICY = {
    "amp": "bf16",
    "channels_last": True,
    "compile": "off",
    "tf32": True,
    "cudnn_benchmark": True,
    "deterministic": False,
}
"""What a default run on CUDA records besides the device."""


def run(
    run_dir: Path,
    recipe: Recipe = RECIPE,
    *,
    model: nn.Module | None = None,
    train_data=None,
    transforms=(flip_transform, flip_transform),
    callback=None,
    device: str | torch.device = "cpu",
):
    """The tiny model on 48 training images (``TinySource`` unless given), seed 3."""
    return train(
        model if model is not None else tiny_model(),
        train_data if train_data is not None else TinySource(48, 0),
        TinySource(16, 1),
        recipe,
        run_dir=run_dir,
        seed=3,
        transforms=transforms,
        callback=callback,
        device=device,
    )


# --- what runs on the CPU by default and when asked --------------------------------------------


def test_cpu_default_is_fp32_nchw_and_recorded(tmp_path: Path) -> None:
    model = Recorder(tiny_model())
    started = []
    result = run(tmp_path, model=model, callback=started.append)
    assert started[0].ran_on == "cpu · fp32"  # what `resablate train` prints as "training on"
    assert set(model.seen) == {(False, torch.bfloat16, False)}  # autocast off (its default dtype)
    assert result.amp == "none"
    assert result.execution.to_dict() == CPU_EXECUTION
    assert json.loads((tmp_path / "train.json").read_text())["execution"] == CPU_EXECUTION


def test_explicit_bf16_and_channels_last_apply_on_the_cpu(tmp_path: Path) -> None:
    model = Recorder(tiny_model())
    recipe = RECIPE.replace(amp="bf16", channels_last=True)
    result = run(tmp_path, recipe, model=model)
    assert set(model.seen) == {(True, torch.bfloat16, True)}
    conv = model.model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert result.status == "done"
    assert result.execution.summary() == "cpu · bf16 · channels_last"


def _stop_after_checkpoint(step: int):
    def callback(event: object) -> None:
        if getattr(event, "path", None) and event.step == step:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize(
    "settings", [{"amp": "fp16"}, {"amp": "bf16", "channels_last": True}], ids=["fp16", "bf16"]
)
def test_resume_is_exact_under_autocast(tmp_path: Path, settings: dict) -> None:
    recipe = RECIPE.replace(max_steps=4, **settings)
    full = run(tmp_path / "full", recipe)
    assert full.execution.amp == settings["amp"]
    state = ckpt.load_latest(tmp_path / "full" / "checkpoints").state
    assert state["precision"] == f"cpu {settings['amp']}"
    if settings["amp"] == "fp16":  # the CPU GradScaler's state: no overflow, scale unchanged
        assert state["scaler"]["scale"] == 65536.0
    # Stop after step 2 (its checkpoint), then resume: same weights, history, predictions.
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part", recipe, callback=_stop_after_checkpoint(2))
    assert run(tmp_path / "part", recipe).resumed_from_step == 2
    _assert_same_run(tmp_path / "full", tmp_path / "part")


def test_skipped_fp16_steps_do_not_warn_about_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A huge initial scale overflows fp16 in backward: the GradScaler skips the first steps.
    huge = functools.partial(torch.amp.GradScaler, init_scale=2.0**100)
    monkeypatch.setattr(torch.amp, "GradScaler", huge)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tmp_path, RECIPE.replace(amp="fp16", max_steps=2), model=model)
    assert result.execution.amp == "fp16"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_the_recipes_compile_mode_reaches_torch_compile(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    calls: list[tuple[nn.Module, dict]] = []

    def spy(model: nn.Module, **kwargs: object) -> nn.Module:
        calls.append((model, kwargs))
        return nn.Identity()

    monkeypatch.setattr(torch, "compile", spy)
    model = tiny_model()
    execution = resolve_execution(RECIPE.replace(compile=mode), CPU)
    assert execution.compile == mode
    assert isinstance(compile_model(model, execution), nn.Identity)
    assert calls == [(model, {"mode": mode})]
    off = resolve_execution(RECIPE, CPU)
    assert compile_model(model, off) is model and len(calls) == 1
    summary = "cpu · fp32 · compile" + ("" if mode == "default" else f" {mode}")
    assert execution.summary() == summary and off.summary() == "cpu · fp32"
    # a record written before the modes (compile: true/false) reads back as a mode
    assert Execution(**{**off.to_dict(), "compile": True}).compile == "default"


@pytest.mark.slow
def test_compile_after_surgery_trains_like_eager(tmp_path: Path) -> None:
    from torchvision.models.resnet import BasicBlock, ResNet

    from resablate.surgery import drop_residual

    def surgered() -> nn.Module:
        torch.manual_seed(0)
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2)
        drop_residual(model, ["layer3"])
        return model

    recipe = RECIPE.replace(max_steps=2, checkpoint_every=None)
    eager_model, compiled_model = surgered(), surgered()
    eager = run(tmp_path / "eager", recipe, model=eager_model)
    compiled = run(tmp_path / "compiled", recipe.replace(compile=True), model=compiled_model)
    assert compiled.execution.compile and not eager.execution.compile
    assert type(compiled_model.layer3[0]).__name__ == "RewiredBasicBlock"
    for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert compiled.final.metrics.n == eager.final.metrics.n == 16


# --- resuming across devices and precisions, the device RNG --------------------------------------


def _forced(amp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the engine resolve ``amp`` on the CPU (as a CUDA default would resolve bf16)."""
    real = loop.resolve_execution

    def resolve(recipe: Recipe, device: torch.device) -> Execution:
        execution = real(recipe, device)
        return Execution(**{**execution.to_dict(), "amp": amp})

    monkeypatch.setattr(loop, "resolve_execution", resolve)


@pytest.mark.parametrize(("first", "second"), [("none", "fp16"), ("bf16", "none")])
def test_resume_under_another_precision_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, second: str
) -> None:
    recipe = RECIPE.replace(max_steps=2)
    with monkeypatch.context() as patch:
        _forced(first, patch)
        run(tmp_path, recipe)
    _forced(second, monkeypatch)
    path = tmp_path / "checkpoints" / "step-00000002.pt"
    names = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}
    with pytest.raises(ConfigError) as caught:
        run(tmp_path, recipe)
    assert str(caught.value) == (
        f"{path} was written by a run on cpu {names[first]}, this run is on cpu {names[second]}; "
        "resume on the same device type and precision (device, recipe field amp), or start "
        "over without resuming, or use another output folder"
    )
    assert caught.value.field == "resume"  # the command line adds "(--no-resume)"
    assert path.exists()


def test_device_rng_state_is_the_runs_own_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def refuse(*args: object) -> None:
        raise AssertionError("the state of every GPU must not be saved or restored")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(2)
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device))
    )
    state = device_rng_state(torch.device("cuda:1"))
    # Resumed with one visible GPU (e.g. a Ray task): restored onto that device, no IndexError.
    set_device_rng_state(torch.device("cuda:0"), state)
    assert device_rng_state(CPU) is None
    set_device_rng_state(CPU, None)
    assert calls == [("get", torch.device("cuda:1")), ("set", torch.device("cuda:0"))]


# --- resolution and backend flags --------------------------------------------------------------


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")


def test_cuda_policy_bf16_channels_last_tf32_benchmark(fake_gpus: None) -> None:
    recipe = get_recipe("demo")
    cuda = resolve_execution(recipe, torch.device("cuda"))
    assert cuda.to_dict() == {
        **{"device": "cuda:2", "device_name": "Fake H100", "gpu_count": 4},
        **CUDA_POLICY,
    }
    assert (
        cuda.summary() == "Fake H100 (cuda:2 of 4) · bf16 · channels_last · tf32 · cudnn.benchmark"
    )
    exact = resolve_execution(recipe.replace(deterministic=True, tf32=False), torch.device("cuda"))
    assert (exact.tf32, exact.cudnn_benchmark, exact.deterministic) == (False, False, True)
    cpu = resolve_execution(recipe.replace(tf32=True, cudnn_benchmark=True), CPU)
    assert (cpu.amp, cpu.channels_last, cpu.tf32, cpu.cudnn_benchmark) == (
        "none",
        False,
        False,
        False,
    )


def test_backend_settings_apply_and_restore() -> None:
    execution = Execution(
        device="cuda:0",
        device_name="Fake",
        gpu_count=1,
        amp="bf16",
        channels_last=True,
        compile=False,
        tf32=True,
        cudnn_benchmark=False,
        deterministic=True,
    )
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    with backend_settings(execution):
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    after = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    assert after == before
    assert not torch.are_deterministic_algorithms_enabled()


# A fresh interpreter: what importing the engine (the grid's probe and every run import it before
# any CUDA work) leaves in the environment, and whether CUDA was initialised by then.
_CUBLAS_PROBE = """
import importlib, json, os, sys
importlib.import_module(sys.argv[1])
import torch
print(json.dumps([os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.cuda.is_initialized()]))
"""


@pytest.mark.parametrize("module", ["resablate.engine.execution", "resablate.engine"])
@pytest.mark.parametrize("preset", [None, ":16:8"])
def test_cublas_workspace_is_set_at_import_before_cuda_starts(
    module: str, preset: str | None
) -> None:
    # cuBLAS reads the variable once, when its first handle is created: it must be in the
    # environment before any CUDA work, and a user's own value wins.
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    if preset is not None:
        env["CUBLAS_WORKSPACE_CONFIG"] = preset
    done = subprocess.run(
        [sys.executable, "-c", _CUBLAS_PROBE, module],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    value, cuda_started = json.loads(done.stdout.strip().splitlines()[-1])
    assert value == (preset or CUBLAS_WORKSPACE_CONFIG) and CUBLAS_WORKSPACE_CONFIG == ":4096:8"
    assert cuda_started is False


def test_deterministic_recipe_on_the_cpu(tmp_path: Path) -> None:
    result = run(tmp_path, RECIPE.replace(deterministic=True, max_steps=2))
    assert result.execution.deterministic
    assert not torch.are_deterministic_algorithms_enabled()


# --- memory policy and prefetching ---------------------------------------------------------------


def test_caches_stay_on_the_gpu_only_within_the_stated_fraction() -> None:
    mb = 1 << 20
    # 10 GB free, half of it for caches: train (3 GB) and val (1 GB) fit, test (2 GB) does not.
    assert device_resident([3000 * mb, 1000 * mb, 2000 * mb], 10000 * mb) == (True, True, False)
    assert device_resident([3000 * mb, None, 500 * mb], 10000 * mb, 0.3) == (
        True,
        False,
        False,
    )
    assert device_resident([5001 * mb, 10 * mb], 10000 * mb) == (False, True)


class Movable:
    """A source that records where it is moved instead of moving."""

    def __init__(self, nbytes: int | None) -> None:
        self.nbytes = nbytes
        self.moved_to: torch.device | None = None

    def to(self, device: torch.device) -> Movable:
        self.moved_to = device
        return self


def test_place_sources_uses_the_free_gpu_memory() -> None:
    sources = [Movable(600), Movable(300), Movable(None)]
    placed = place_sources(sources, torch.device("cuda:1"), free_bytes=1000)
    assert placed == sources
    assert [s.moved_to for s in sources] == [None, torch.device("cuda:1"), None]
    on_cpu = [Movable(600)]
    place_sources(on_cpu, CPU, free_bytes=0)
    assert on_cpu[0].moved_to == CPU


def test_prefetcher_loads_ahead_in_a_background_thread() -> None:
    source = TinySource(16, 0)
    threads: list[str] = []
    real = source.get_batch

    def get_batch(indices: torch.Tensor) -> torch.Tensor:
        import threading

        threads.append(threading.current_thread().name)
        return real(indices)

    source.get_batch = get_batch
    prefetcher = Prefetcher(source, CPU)
    try:
        first, second = torch.tensor([3, 1]), torch.tensor([0, 2])
        prefetcher.request((0, 1), second)
        assert torch.equal(prefetcher.take((0, 1), second), source.images[second])
        # Not the batch in flight (e.g. after a resume): loaded in the step's thread.
        prefetcher.request((0, 5), second)
        assert torch.equal(prefetcher.take((0, 0), first), source.images[first])
    finally:
        prefetcher.close()
    assert threads[0].startswith("resablate-prefetch") and threads[1].startswith("resablate")
    assert not threads[2].startswith("resablate-prefetch")


def test_host_source_through_the_prefetcher_trains_like_a_resident_one(tmp_path: Path) -> None:
    resident = decoded(TinySource(48, 0))
    assert is_resident(resident, CPU) and not is_resident(TinySource(48, 0), CPU)
    run(tmp_path / "resident", train_data=resident)
    run(tmp_path / "host", train_data=TinySource(48, 0))
    _assert_same_run(tmp_path / "resident", tmp_path / "host")


# --- host synchronisations ---------------------------------------------------------------------


def test_sync_census_counts_what_it_is_for() -> None:
    t = torch.ones(3)
    with SyncCensus() as census:
        t.sum().item()
        bool(t[0] > 0)
        t.tolist()
        torch.tensor([1.0, 2.0])
        t.to("cpu")
        t.to(torch.float16)  # a dtype change: no transfer
        t.to("cpu", non_blocking=True)  # asynchronous: no wait
        torch.as_tensor(t)  # already a tensor
        torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1).step()
    assert census.calls == {
        "item": 1,
        "bool": 1,
        "tolist": 1,
        "torch.tensor(data)": 1,
        **{"blocking .to(device)": 1},
    }


def test_no_host_sync_in_steady_state_bf16_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resablate.data import BatchTransform, RecyclingTransform
    from resablate.data.augment import _normalisation

    _normalisation.cache_clear()  # as in a fresh process
    counts: list[dict[str, int]] = []
    step = _Session.optimiser_step

    def census_step(self: _Session) -> torch.Tensor:
        with SyncCensus() as census:
            loss = step(self)
        counts.append(dict(census.calls))
        return loss

    monkeypatch.setattr(_Session, "optimiser_step", census_step)
    recipe = RECIPE.replace(
        amp="bf16",
        image_size=12,
        train_transform="random_resized_crop",
        optimizer="adamw",
        max_steps=5,
    )
    transforms = tuple(
        RecyclingTransform(BatchTransform.from_recipe(recipe, train=train))
        for train in (True, False)
    )
    result = run(tmp_path, recipe, train_data=decoded(TinySource(48, 0)), transforms=transforms)
    assert result.execution.amp == "bf16"
    assert len(counts) == 5
    # Step 1 builds the normalisation constants (gain, bias) once for the device; then none.
    assert counts == [{"torch.tensor(data)": 2}, {}, {}, {}, {}]


# --- on a real GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_default_run_is_bf16_channels_last_and_recorded(tmp_path: Path) -> None:
    model = tiny_model()
    result = run(tmp_path, model=model, train_data=decoded(TinySource(48, 0)), device="cuda")
    index = torch.cuda.current_device()
    assert result.execution.to_dict() == {
        "device": f"cuda:{index}",
        "device_name": torch.cuda.get_device_name(index),
        "gpu_count": torch.cuda.device_count(),
        **CUDA_POLICY,
    }
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.cuda.get_rng_state(index).equal(
        ckpt.load_latest(tmp_path / "checkpoints").state["rng_device"]
    )


@pytest.mark.gpu
def test_gpu_resume_of_a_cpu_checkpoint_is_refused(tmp_path: Path) -> None:
    run(tmp_path, RECIPE.replace(max_steps=2))
    with pytest.raises(ConfigError, match="written by a run on cpu fp32, this run is on cuda bf16"):
        run(tmp_path, RECIPE.replace(max_steps=2), device="cuda")


@pytest.mark.gpu
def test_gpu_host_split_through_the_prefetcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = torch.device("cuda")
    split = decoded(TinySource(48, 0))
    (kept,) = place_sources([split], device, free_bytes=0)  # no room: stays in host memory
    assert kept is split and not is_resident(split, device)
    taken: list[torch.device] = []

    class Spy(Prefetcher):
        def take(self, key, indices):
            images = super().take(key, indices)
            taken.append(images.device)
            return images

    monkeypatch.setattr(loop, "place_sources", functools.partial(place_sources, free_bytes=0))
    monkeypatch.setattr(loop, "Prefetcher", Spy)
    result = run(tmp_path, RECIPE.replace(amp="fp16", max_steps=4), train_data=split, device=device)
    assert result.status == "done" and result.execution.amp == "fp16"
    assert len(taken) == 8 and {d.type for d in taken} == {"cuda"}  # 4 steps × 2 micro-batches
    state = ckpt.load_latest(tmp_path / "checkpoints").state
    assert state["precision"] == "cuda fp16" and state["scaler"]["scale"] > 0


def aten_ops(module: nn.Module, x: torch.Tensor) -> list[str]:
    """The ATen operators a forward and backward pass of ``module`` on ``x`` dispatch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        module(x).sum().backward()
    return recorder.ops


def test_global_average_pooling_is_a_mean_without_the_nondeterministic_kernel() -> None:
    # AdaptiveAvgPool2d is on PyTorch's list of CUDA backwards without a deterministic kernel, but
    # to a 1 x 1 output (every ResNet's pooling before its head, the tiny model's) ATen computes
    # it as a mean over H and W before choosing a device kernel: its backward is an expand.
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    ops = aten_ops(nn.AdaptiveAvgPool2d(1), x)
    assert ops[0] == "aten.mean.dim" and not [op for op in ops if "adaptive" in op]
    assert "aten._adaptive_avg_pool2d_backward.default" in aten_ops(nn.AdaptiveAvgPool2d(2), x)


@pytest.mark.gpu
def test_gpu_deterministic_mode_trains_without_a_nondeterminism_warning(tmp_path: Path) -> None:
    # Nothing in the step lacks a deterministic CUDA kernel (the global pooling is a mean, see
    # above), so warn_only has nothing to warn about.
    recipe = RECIPE.replace(deterministic=True, max_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tmp_path, recipe, train_data=decoded(TinySource(48, 0)), device="cuda")
    assert [str(w.message) for w in caught if "deterministic" in str(w.message)] == []
    assert result.status == "done"
    assert (result.execution.deterministic, result.execution.cudnn_benchmark) == (True, False)
    assert not torch.are_deterministic_algorithms_enabled()
