"""CLI: resablate surgery, count and weights (CliRunner): numbers, one-line errors, help."""

from __future__ import annotations

import json
import urllib.error

import pytest
from typer.testing import CliRunner

from resablate_cli.app import app


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


def test_surgery_no_residual_resnet152_json() -> None:
    result = run("surgery", "--no-residual", "resnet152", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["arch"] == "resnet152"
    assert data["source"] == "torchvision"
    assert data["stages"] == ["conv2_x", "conv3_x", "conv4_x", "conv5_x"]
    assert (data["blocks_total"], data["blocks_rewired"]) == (50, 50)
    assert data["params"] == 60_192_808
    assert data["active_params"] == 57_416_232  # minus the four projection shortcuts
    assert data["flops_before"] == 11_558_835_200
    # the four projection shortcuts (1×1 conv + BN) no longer run:
    # 56²·64·256 + 2·256·56², 28²·256·512 + 2·512·28², 14²·512·1024 + …, 7²·1024·2048 + …
    projections = sum(
        hw * hw * cin * cout + 2 * cout * hw * hw
        for hw, cin, cout in ((56, 64, 256), (28, 256, 512), (14, 512, 1024), (7, 1024, 2048))
    )
    assert projections == 362_672_128
    assert data["flops_after"] == 11_558_835_200 - projections


def test_surgery_stages_with_several_values_and_timm_table() -> None:
    result = run(
        "surgery", "--no-residual", "resnet50", "--stages", "conv4_x", "conv5_x", "--source",
        "timm", "--input-size", "64",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resnet50 (timm): residual connections dropped in conv4_x, conv5_x" in result.stdout
    assert "9 / 16" in result.stdout
    assert "25,557,032" in result.stdout
    repeated = run(
        "surgery", "resnet50", "--no-residual", "--stages", "layer3", "--stages", "layer4",
        "--json", "--source", "timm",
    )  # fmt: skip
    assert json.loads(repeated.stdout)["blocks_rewired"] == 9


def test_surgery_no_residual_on_the_hugging_face_resnet50() -> None:
    result = CliRunner().invoke(
        app, ["surgery", "--no-residual", "resnet50", "--source", "hf"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert " ".join(result.stdout.split()).startswith(
        "resnet50 (hf): residual connections dropped in conv2_x, conv3_x, conv4_x, conv5_x; "
        "input 3×224×224, batch 1, 1000-class head"
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert rows == [
        "│ conv1   │              0 │      9,536 │                    9,536 │          0.120 │",
        "│ conv2_x │              3 │    215,808 │       215,808 -> 198,912 │ 0.677 -> 0.624 │",
        "│ conv3_x │              4 │  1,219,584 │   1,219,584 -> 1,087,488 │ 1.034 -> 0.930 │",
        "│ conv4_x │              6 │  7,098,368 │   7,098,368 -> 6,572,032 │ 1.469 -> 1.365 │",
        "│ conv5_x │              3 │ 14,964,736 │ 14,964,736 -> 12,863,488 │ 0.810 -> 0.708 │",
        "│ head    │              0 │  2,049,000 │                2,049,000 │          0.002 │",
        "│ total   │        16 / 16 │ 25,557,032 │ 25,557,032 -> 22,780,456 │ 4.112 -> 3.749 │",
    ]
    data = json.loads(run("surgery", "--no-residual", "hf:resnet50", "--json").stdout)
    assert (data["arch"], data["source"], data["blocks_rewired"]) == ("resnet50", "hf", 16)
    # the same projection shortcuts idle as in torchvision's ResNet-50 (see the resnet152 test)
    assert data["inactive_params"] == data["params"] - data["active_params"] == 2_776_576
    assert data["flops_after"] == 4_111_512_576 - 362_672_128


def test_surgery_alpha() -> None:
    result = run("surgery", "resnet18", "--alpha", "0.5", "--json")
    data = json.loads(result.stdout)
    assert data["alpha"] == 0.5
    assert data["active_params"] == data["params"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["surgery", "--no-residual", "resnet77"],
            [
                "unknown architecture 'resnet77'; ResNet depths: 18, 34, 50, 101, 152; "
                "architectures: resnet18, resnet34, resnet50"
            ],
        ),
        (
            ["surgery", "--no-residual", "resnet18", "--stages", "conv6_x"],
            ["unknown stage 'conv6_x'; stages: conv1, conv2_x, conv3_x, conv4_x, conv5_x"],
        ),
        (
            ["surgery", "--no-residual", "alexnet"],
            ["alexnet has no residual connections; residual surgery applies to: resnet18"],
        ),
        (["surgery", "resnet18"], ["pass exactly one of --no-residual or --alpha"]),
        (["count", "resnet18", "resnet77"], ["unknown architecture 'resnet77'"]),
        (["count", "vit_b_1"], ["nor a torchvision model; close torchvision models: vit_b_16"]),
        (["count", "no_such_pkg.nets:make"], ["cannot import module 'no_such_pkg.nets'"]),
        (
            ["surgery", "--no-residual", "test_surgery_user_blocks:reference"],  # needs arguments
            ["model factory test_surgery_user_blocks:reference failed: TypeError: reference()"],
        ),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run(*args), *fragments)


def test_count_compares_architectures() -> None:
    result = run("count", "resnet18", "resnet50", "vgg16", "efficientnet_b4")
    assert result.exit_code == 0, result.output
    for text in ("11,689,512", "25,557,032", "138,357,544", "19,341,616", "4.11", "1.82"):
        assert text in result.stdout
    data = json.loads(run("count", "resnet152", "--json").stdout)
    assert data["architectures"][0]["params"] == 60_192_808
    assert data["architectures"][0]["flops"] == 11_558_835_200


def test_count_any_library_model_and_says_what_it_leaves_out() -> None:
    result = run("count", "torchvision:vit_b_16", "convnext_tiny", "--source", "timm")
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines() if "│" in line]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["vit_b_16", "torchvision", "86,567,656", "86.6", "16.87"],
        ["convnext_tiny", "timm", "28,589,128", "28.6", "4.47"],
    ]
    assert "vit_b_16: not counted (0 FLOPs): scaled_dot_product_attention ×12" in result.stdout
    data = json.loads(run("count", "vit_b_16", "--json").stdout)["architectures"][0]
    assert (data["flops"], data["uncounted_ops"]) == (
        16_867_412_736,
        {"scaled_dot_product_attention": 12},
    )


def test_surgery_and_count_on_a_user_factory() -> None:
    # tests/ is on sys.path: the classic CIFAR ResNet of test_surgery_user_blocks (widths 8..64)
    factory = "test_surgery_user_blocks:CifarResNet"
    result = run("surgery", "--no-residual", factory, "--input-size", "32")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"{factory} (factory): residual connections dropped in conv2_x, conv3_x, " in text
    assert "input 3×32×32, batch 1 ┏" in text  # a factory's head is its own: no 1000-class claim
    # the projection shortcuts (1×1 conv and BN) of layer2..4 no longer run
    assert "│ conv5_x │ 1 │ 57,728 │ 57,728 -> 55,552 │ 0.001 │" in text
    assert "│ total │ 4 / 4 │ 78,002 │ 78,002 -> 75,090 │ 0.004 │" in text
    data = json.loads(run("surgery", "--no-residual", factory, "--json").stdout)
    shortcuts = sum(cin * cout + 2 * cout for cin, cout in ((8, 16), (16, 32), (32, 64)))
    assert data["inactive_params"] == data["params"] - data["active_params"] == shortcuts == 2_912
    counted = json.loads(run("count", factory, "--json").stdout)["architectures"][0]
    assert (counted["arch"], counted["source"], counted["params"]) == (factory, "factory", 78_002)


def test_weights_list_and_offline_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = json.loads(run("weights", "list", "--json").stdout)["weights"]
    assert {"arch": "resnet50", "source": "torchvision"}.items() <= listing[2].items()
    assert not any(w["cached"] for w in listing)
    assert "ResNet50_Weights.IMAGENET1K_V1" in run("weights", "list").stdout

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    assert_one_line_error(
        run("weights", "fetch", "resnet50"),
        "ImageNet weights ResNet50_Weights.IMAGENET1K_V1 for resnet50 are not cached",
        "resablate weights fetch resnet50",
    )


@pytest.mark.parametrize("command", [["surgery"], ["count"], ["weights", "fetch"]])
def test_help_shows_an_example(command: list[str]) -> None:
    result = run(*command, "--help")
    assert "Example: resablate " + command[0] in " ".join(result.stdout.split())
