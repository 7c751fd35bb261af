"""Recipes: the published settings, overrides, validation."""

from __future__ import annotations

import pytest

from resablate.errors import ConfigError
from resablate.recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES, Recipe, get_recipe


def test_cifake_matches_the_study() -> None:
    r = get_recipe("cifake")
    assert (r.optimizer, r.lr, r.batch_size, r.grad_accum, r.epochs) == ("adamw", 5e-5, 32, 4, 5)
    assert (r.schedule, r.warmup_fraction) == ("linear", 0.1)
    assert (r.train_transform, r.image_size, r.hflip) == ("random_resized_crop", 224, True)
    assert (r.mean, r.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (r.eval_every, r.checkpoint_every, r.positive) == (600, 1200, 1)
    assert r.images_per_step == 128


def test_food_matches_the_study() -> None:
    r = get_recipe("food")
    assert (r.optimizer, r.lr, r.momentum, r.batch_size, r.epochs) == ("sgd", 1e-3, 0.9, 4, 25)
    assert (r.schedule, r.train_transform, r.image_size) == ("constant", "resize", 224)
    assert r.hflip


def test_names() -> None:
    assert sorted(RECIPES) == ["cifake", "cifar_demo", "demo", "food"]
    assert get_recipe("demo").image_size == 32


def test_cifar_demo_gives_ten_evaluations_in_40_steps_of_32_native_images() -> None:
    r = get_recipe("cifar_demo")
    assert (r.name, r.optimizer, r.lr, r.batch_size, r.image_size) == (
        "cifar_demo",
        "adamw",
        3e-3,
        32,
        32,
    )
    assert r.max_steps == 40
    assert r.max_steps // r.eval_every == 10
    assert r.max_steps % r.eval_every == 0  # the last step is an evaluation


def test_overrides_and_native_resolution() -> None:
    r = get_recipe("cifake", image_size=32, epochs=1)
    assert (r.image_size, r.epochs, r.name, r.lr) == (32, 1, "cifake", 5e-5)
    assert RECIPES["cifake"].image_size == 224  # the named recipe is untouched


def test_unknown_override_lists_fields() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe field\(s\): epoch; known fields: name,"):
        get_recipe("cifake", epoch=3)


def test_unknown_recipe_lists_names() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'imagenet'; known recipes: cifake, food"):
        get_recipe("imagenet")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"amp": "fp8"}, "amp='fp8' is not valid; use auto, bf16, fp16, none"),
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"lr": -1.0}, "lr=-1.0 must be > 0"),
        ({"lr": float("inf")}, r"^recipe field lr=inf must be a finite number$"),
        ({"lr": float("nan")}, r"^recipe field lr=nan must be a finite number$"),
        ({"momentum": float("inf")}, r"^recipe field momentum=inf must be a finite number$"),
        ({"std": (1.0, float("nan"), 1.0)}, r"^recipe field std=\(1.0, nan, 1.0\) must be finite"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction=1.0 not in \[0, 1\)"),
        ({"storage_size": 16}, "storage_size=16 is smaller than image_size=32"),
        ({"max_steps": True}, r"^recipe field max_steps=True must be an integer$"),
        # values as `--set` reads them (JSON when it parses, else text), checked by field type
        ({"lr": "abc"}, r"^recipe field lr='abc' must be a number$"),
        ({"lr": None}, r"^recipe field lr=None must be a number$"),
        ({"betas": 5}, r"^recipe field betas=5 must be a list of 2 numbers$"),
        ({"betas": [1]}, r"^recipe field betas=\[1\] must be a list of 2 numbers$"),
        ({"betas": [0.9, 1.0]}, r"^recipe field betas=\(0.9, 1.0\) needs each value in \[0, 1\)$"),
        ({"mean": float("inf")}, r"^recipe field mean=inf must be a list of 3 numbers$"),
        ({"mean": "abc"}, r"^recipe field mean='abc' must be a list of 3 numbers$"),
        ({"mean": [0.5, "a", 0.5]}, r"^recipe field mean=\[0.5, 'a', 0.5\] must be a list of 3"),
        ({"crop_scale": [0.5]}, r"^recipe field crop_scale=\[0.5\] must be a list of 2 numbers$"),
        ({"hflip": 7}, r"^recipe field hflip=7 must be true or false$"),
        ({"channels_last": "yes"}, r"^recipe field channels_last='yes' must be true or false$"),
        ({"positive": 1.5}, r"^recipe field positive=1.5 must be an integer$"),
        ({"amp": 3}, r"^recipe field amp=3 must be a text$"),
        ({"name": "zzz"}, r"^recipe field name='zzz' cannot be overridden; choose a recipe by"),
    ],
)
def test_invalid_values(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_recipe("demo", **override)


def test_optional_fields_take_none_and_lists_become_tuples() -> None:
    r = get_recipe("demo", max_steps=None, channels_last=None, mean=[0, 0.5, 1], crop_scale=[1, 1])
    assert (r.max_steps, r.channels_last, r.mean, r.crop_scale) == (None, None, (0, 0.5, 1), (1, 1))


def test_the_positive_class_must_be_a_class_of_the_dataset() -> None:
    get_recipe("demo", positive=1).check_classes(2)
    with pytest.raises(ConfigError) as info:
        get_recipe("demo", positive=9).check_classes(2)
    assert str(info.value) == (
        "recipe field positive=9 is not a class of the dataset (2 classes: 0..1)"
    )


def test_round_trip_and_frozen() -> None:
    r = get_recipe("food", max_steps=10)
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.to_dict()["mean"] == list(IMAGENET_MEAN)
    with pytest.raises(AttributeError):
        r.lr = 1.0  # type: ignore[misc]
    assert hash(r) == hash(Recipe.from_dict(r.to_dict()))


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("off", "off"),
        ("default", "default"),
        ("reduce-overhead", "reduce-overhead"),
        ("max-autotune", "max-autotune"),
        (True, "default"),  # recipes written before the modes
        (False, "off"),
    ],
)
def test_compile_takes_a_mode_or_a_flag(value: object, mode: str) -> None:
    recipe = get_recipe("demo", compile=value)
    assert recipe.compile == mode and bool(recipe.compile) is (mode != "off")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.to_dict()["compile"] == mode


def test_compile_from_the_grid_command_line_and_a_bad_mode() -> None:
    from resablate_cli.cells import parse_settings

    settings = parse_settings(["compile=reduce-overhead"])
    assert get_recipe("demo", **settings).compile == "reduce-overhead"
    assert get_recipe("demo", **parse_settings(["compile=true"])).compile == "default"
    with pytest.raises(ConfigError) as caught:
        get_recipe("demo", compile="fast")
    assert caught.value.field == "compile"
    assert str(caught.value) == (
        "recipe field compile='fast' is not valid; use off, default, reduce-overhead, "
        "max-autotune (or true/false)"
    )
