"""Named, frozen training recipes: optimiser, schedule, batch, epochs, transforms, evaluation.

A recipe says *how* one model is trained; it knows nothing about the model or the ablation. Any
field can be overridden (``get_recipe("cifake", image_size=32)``); the effective recipe is stored
with each run (``recipe.json``) so a result always names the exact settings it came from.

Conventions:
    * ``lr`` is the peak learning rate (reached at the end of warm-up for ``schedule="linear"``).
    * ``batch_size`` is the micro-batch size; one optimiser step sees ``batch_size * grad_accum``
      images. ``eval_every``, ``checkpoint_every`` and ``max_steps`` count optimiser steps.
    * ``image_size`` is the side (pixels) of the square images fed to the model; ``storage_size``
      the side at which the decode-once cache stores them (``None`` = the images' native size,
      which must then be the same for all images).
    * ``positive`` is the class index whose precision, recall and F1 are reported. Classes are
      sorted folder names, so for CIFAKE (``FAKE``, ``REAL``) index 1 is ``REAL``, as in the study.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from resablate.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "constant")
TRAIN_TRANSFORMS = ("random_resized_crop", "resize")
AMP_MODES = ("auto", "bf16", "fp16", "none")


class CompileMode(StrEnum):
    """How the engine compiles the model: ``off`` (eager) or a ``torch.compile`` mode.

    ``reduce-overhead`` replays CUDA graphs (a step's shapes are fixed within a run), which pays
    for small, launch-bound models and images; ``max-autotune`` also times Triton kernels at
    the first step. A mode is truthy when it compiles.
    """

    OFF = "off"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"
    MAX_AUTOTUNE = "max-autotune"

    def __bool__(self) -> bool:
        return self is not CompileMode.OFF

    @classmethod
    def parse(cls, value: Any, field: str = "compile") -> CompileMode:
        """A mode from its name, or from a flag (``true`` = ``default``, ``false`` = ``off``,
        as recipes before the modes wrote it).

        Raises:
            ConfigError: Anything else; the message names ``field`` and the legal values.
        """
        if isinstance(value, bool):
            return cls.DEFAULT if value else cls.OFF
        try:
            return cls(value)
        except ValueError:
            legal = ", ".join(mode.value for mode in cls)
            raise ConfigError(
                f"recipe field {field}={value!r} is not valid; use {legal} (or true/false)",
                field=field,
            ) from None


@dataclass(frozen=True)
class Recipe:
    """How to train one model; validated on construction.

    Attributes:
        name: Recipe name (the base recipe's name; overrides do not rename it).
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: Peak learning rate.
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        batch_size: Images per micro-batch (forward/backward pass).
        grad_accum: Micro-batches accumulated per optimiser step.
        epochs: Passes over the training split.
        max_steps: Cap on optimiser steps (``None`` = ``epochs`` decide). The schedule is laid out
            over the capped total, as in the Hugging Face Trainer.
        warmup_fraction: Fraction of optimiser steps of linear warm-up (``schedule="linear"``).
        schedule: ``"linear"`` (warm-up then linear decay to 0) or ``"constant"``.
        image_size: Side of the model's input in pixels.
        storage_size: Side of the decoded cache in pixels (``None`` = native size).
        train_transform: ``"random_resized_crop"`` (scale ``crop_scale``, aspect 3/4–4/3) or
            ``"resize"`` (to ``image_size`` × ``image_size``).
        crop_scale: Area fraction range of the random-resized crop.
        hflip: Random horizontal flip (p = 0.5) during training.
        mean: Per-channel normalisation mean (inputs in [0, 1]).
        std: Per-channel normalisation standard deviation.
        eval_every: Evaluate every this many optimiser steps (``None`` = only at the end).
        checkpoint_every: Checkpoint every this many optimiser steps (``None`` = only at the end).
        eval_batch_size: Images per evaluation batch.
        amp: Autocast dtype: ``"auto"`` (bf16 on CUDA, none on the CPU), ``"bf16"``, ``"fp16"``
            (with a GradScaler) or ``"none"`` (fp32). An explicit mode applies on any device
            (``"bf16"`` on the CPU is CPU bf16 autocast).
        channels_last: NHWC memory format: ``None`` = on for CUDA, off on the CPU; ``True`` or
            ``False`` applies on any device.
        compile: :class:`CompileMode`: ``"off"`` or the ``torch.compile`` mode the model is
            wrapped in after surgery and freezing (``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"``), on any device; ``True``/``False`` mean ``"default"``/``"off"``.
        tf32: On CUDA, let float32 matmuls and cuDNN convolutions use TF32 tensor cores (about
            10 mantissa bits, see ``docs/training.md``); no effect on the CPU.
        cudnn_benchmark: On CUDA, let cuDNN time its convolution algorithms on the first batch
            of each shape (input shapes are fixed within a run); no effect on the CPU.
        deterministic: Deterministic algorithms (``torch.use_deterministic_algorithms`` with
            ``warn_only``, cuDNN deterministic, no cuDNN autotuning; cuBLAS's deterministic
            workspace is set when the engine is imported); see ``docs/training.md`` for what is
            then bitwise.
        positive: Index of the positive class for precision/recall/F1.
    """

    name: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_accum: int = 1
    max_steps: int | None = None
    warmup_fraction: float = 0.0
    schedule: str = "constant"
    image_size: int = 224
    storage_size: int | None = None
    train_transform: str = "resize"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_every: int | None = None
    checkpoint_every: int | None = None
    eval_batch_size: int = 256
    amp: str = "auto"
    channels_last: bool | None = None
    compile: CompileMode = CompileMode.OFF
    tf32: bool = True
    cudnn_benchmark: bool = True
    deterministic: bool = False
    positive: int = 1

    def __post_init__(self) -> None:
        # A compile mode may be written as a flag (true/false) too: parsed before the type check.
        object.__setattr__(self, "compile", CompileMode.parse(self.compile))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        for name in ("betas", "crop_scale", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("train_transform", self.train_transform, TRAIN_TRANSFORMS)
        _choice("amp", self.amp, AMP_MODES)
        for name in ("batch_size", "grad_accum", "epochs", "image_size", "eval_batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("max_steps", "storage_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.positive < 0:
            raise ConfigError(f"recipe field positive={self.positive} must be >= 0")
        for name in ("lr", "warmup_fraction", "momentum", "weight_decay", "eps"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(
                    f"recipe field {name}={getattr(self, name)!r} must be a finite number"
                )
        for name in ("betas", "crop_scale", "mean", "std"):
            if not all(math.isfinite(v) for v in getattr(self, name)):
                raise ConfigError(f"recipe field {name}={getattr(self, name)!r} must be finite")
        if not self.lr > 0:
            raise ConfigError(f"recipe field lr={self.lr!r} must be > 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"recipe field warmup_fraction={self.warmup_fraction} not in [0, 1)")
        if self.momentum < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError("recipe fields momentum and weight_decay must be >= 0, eps > 0")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"recipe field crop_scale={self.crop_scale} needs 0 < lo <= hi <= 1")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"recipe field betas={self.betas} needs each value in [0, 1)")
        if min(self.std) <= 0:
            raise ConfigError(f"recipe field std={self.std} must be > 0")
        if self.storage_size is not None and self.storage_size < self.image_size:
            raise ConfigError(
                f"recipe storage_size={self.storage_size} is smaller than image_size="
                f"{self.image_size}; store at least at the training size"
            )

    def check_classes(self, num_classes: int) -> None:
        """Check the recipe against a dataset of ``num_classes`` classes (``positive`` names one).

        Raises:
            ConfigError: ``positive`` is not a class index of the dataset.
        """
        if self.positive >= num_classes:
            raise ConfigError(
                f"recipe field positive={self.positive} is not a class of the dataset "
                f"({num_classes} classes: 0..{num_classes - 1})"
            )

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with some fields changed; unknown field names raise ``ConfigError``."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    @property
    def images_per_step(self) -> int:
        """Images per optimiser step (``batch_size * grad_accum``)."""
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready plain types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Rebuild a recipe from :meth:`to_dict` output; unknown keys raise ``ConfigError``."""
        _check_fields(data)
        return cls(**dict(data))


_FIELD_TYPES: Mapping[str, Any] = typing.get_type_hints(Recipe)


def _check_type(field: str, value: Any, annotation: Any) -> None:
    """Refuse a value that is not of the field's declared type (before any conversion), so that
    ``lr="abc"`` or ``mean=5`` is one line naming the field, never an error deep in training."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if options:
        if value is None and type(None) in options:
            return
        (annotation,) = (option for option in options if option is not type(None))
    if _is_type(value, annotation):
        return
    raise ConfigError(f"recipe field {field}={value!r} must be {_describe(annotation)}")


def _is_type(value: Any, annotation: Any) -> bool:
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        return (
            isinstance(value, list | tuple)
            and len(value) == len(items)
            and all(_is_type(v, item) for v, item in zip(value, items, strict=True))
        )
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return f"a list of {len(typing.get_args(annotation))} numbers"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a text"}
    return names[annotation]


def _choice(field: str, value: str, legal: tuple[str, ...]) -> None:
    if value not in legal:
        raise ConfigError(f"recipe field {field}={value!r} is not valid; use {', '.join(legal)}")


def _positive_int(field: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"recipe field {field}={value!r} must be a positive integer")


def _check_fields(data: Mapping[str, Any]) -> None:
    known = [f.name for f in dataclasses.fields(Recipe)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown recipe field(s): {', '.join(unknown)}; known fields: {', '.join(known)}"
        )


# CIFAKE: Bird & Lotfi, "CIFAKE: Image Classification and Explainable Identification of
# AI-Generated Synthetic Images", IEEE Access 12 (2024), and the ResNet ablation that fine-tuned on
# it with the Hugging Face image-classification recipe: AdamW 5e-5, batch 32 x 4 accumulation,
# 5 epochs, 10 % linear warm-up then linear decay to 0 (HF Trainer defaults: weight decay 0,
# betas 0.9/0.999, eps 1e-8), RandomResizedCrop(224) + horizontal flip + ImageNet normalisation,
# evaluation every 600 and checkpoints every 1,200 steps. The 32 x 32 images are stored at native
# size and upsampled by the crop; ``image_size=32`` trains at native resolution.
CIFAKE = Recipe(
    name="cifake",
    optimizer="adamw",
    lr=5e-5,
    weight_decay=0.0,
    batch_size=32,
    grad_accum=4,
    epochs=5,
    warmup_fraction=0.1,
    schedule="linear",
    image_size=224,
    storage_size=None,
    train_transform="random_resized_crop",
    hflip=True,
    eval_every=600,
    checkpoint_every=1200,
)

# Food-5K: Singla, Yuan & Ebrahimi, "Food/Non-food Image Classification and Food Categorization
# using Pre-Trained GoogLeNet Model", MADiMa 2016 (the dataset), and the ResNet-18/AlexNet freezing
# study on it: SGD lr 1e-3, momentum 0.9, batch 4, 25 epochs, cross-entropy, constant lr; resize to
# 224 x 224, random horizontal flip (train), ImageNet normalisation. Photos differ in size, so the
# cache stores them at 256 x 256 and the batch transform resizes to 224.
FOOD = Recipe(
    name="food",
    optimizer="sgd",
    lr=1e-3,
    momentum=0.9,
    weight_decay=0.0,
    batch_size=4,
    grad_accum=1,
    epochs=25,
    schedule="constant",
    image_size=224,
    storage_size=256,
    train_transform="resize",
    hflip=True,
)

# Demo: the embedded 32 x 32 demo data on two CPU cores. Native resolution with flips only: a
# random-resized crop resamples the image and blurs away the up-sampling artefacts that tell the
# demo's FAKE images apart. AdamW at a rate suited to random initialisation, short warm-up.
# Batch 64: on a 2-core CPU it trains ResNet-50 at 14 ms/image against 17 ms/image at batch 32.
# 3 epochs (36 steps) keep the 8-cell demo grid (ResNet-18/50) within five minutes; ResNet-18
# still reaches 0.72 test accuracy. Evaluation every epoch; a checkpoint only at the end (a demo
# cell takes under a minute, and a ResNet-50 checkpoint with its AdamW state is 283 MB).
DEMO = Recipe(
    name="demo",
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.01,
    batch_size=64,
    grad_accum=1,
    epochs=3,
    warmup_fraction=0.1,
    schedule="linear",
    image_size=32,
    storage_size=None,
    train_transform="resize",
    hflip=True,
    eval_every=12,
    checkpoint_every=None,
)

# The degradation demo (`make demo`): He et al. 2016's CIFAR ResNets (Section 4.2, Fig. 6)
# with and without residual connections on the embedded 32 x 32 demo data, on two CPU cores.
# The demo recipe's AdamW at three times its rate, batch 32: within 40 steps (1.6 epochs of the
# 800 training images) plain ResNet-20 and the residual nets train while plain ResNet-56 stays
# near chance, and the 24-cell grid (4 depths x 2 x 3 seeds) stays near five minutes; 60 steps
# at lr 2e-3 showed the same at 1.5 times the cost. An evaluation every 4 steps: 10 points.
CIFAR_DEMO = DEMO.replace(name="cifar_demo", lr=3e-3, batch_size=32, max_steps=40, eval_every=4)

RECIPES: Mapping[str, Recipe] = MappingProxyType(
    {r.name: r for r in (CIFAKE, FOOD, DEMO, CIFAR_DEMO)}
)


def get_recipe(name: str, /, **overrides: Any) -> Recipe:
    """A named recipe with optional field overrides.

    Args:
        name: ``"cifake"``, ``"food"``, ``"demo"`` or ``"cifar_demo"``.
        **overrides: Fields to change, e.g. ``epochs=1, image_size=32``.

    Raises:
        ConfigError: Unknown recipe name (lists the names), unknown field (lists the fields),
            an override of ``name`` (a recipe is chosen by name, not renamed) or an invalid value.
    """
    if "name" in overrides:
        raise ConfigError(
            f"recipe field name={overrides['name']!r} cannot be overridden; choose a recipe by "
            f"name instead ({', '.join(RECIPES)})",
            field="recipe",
        )
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return recipe.replace(**overrides) if overrides else recipe
