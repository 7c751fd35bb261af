"""build_model and weights files: formats, wrappers, wrong architectures, unsafe pickles, caches."""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from resablate.errors import ConfigError, WeightsError, WeightsUnavailableError
from resablate.weights import (
    build_model,
    demo_weights_path,
    fetch_weights,
    list_weights,
    load_state_dict_file,
    save_state_dict_file,
    weights_sha256,
)


class Exploit:
    """A pickled object whose unpickling would write a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "pwned"))


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return build_model("resnet18", num_classes=2).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".pt"])
def test_state_dict_files_load_identically(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], suffix: str
) -> None:
    path = tmp_path / f"weights{suffix}"
    save_state_dict_file(resnet18_state, path)
    assert not list(tmp_path.glob(".resablate-tmp-*"))  # atomic write left nothing behind
    model = build_model("resnet18", weights=path, num_classes=2)
    assert states_equal(model.state_dict(), resnet18_state)  # head kept: it has 2 outputs


def test_pth_and_safetensors_give_identical_tensors(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    save_state_dict_file(resnet18_state, tmp_path / "w.pth")
    save_state_dict_file(resnet18_state, tmp_path / "w.safetensors")
    a = build_model("resnet18", weights=tmp_path / "w.pth")
    b = build_model("resnet18", weights=str(tmp_path / "w.safetensors"))
    assert states_equal(a.state_dict(), b.state_dict())


def test_head_is_replaced_for_another_class_count(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    save_state_dict_file(resnet18_state, tmp_path / "w.pth")
    torch.manual_seed(11)
    model = build_model("resnet18", weights=tmp_path / "w.pth", num_classes=5)
    assert model.fc.out_features == 5
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert states_equal(body, {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")})
    torch.manual_seed(11)
    again = build_model("resnet18", weights=tmp_path / "w.pth", num_classes=5)
    assert torch.equal(again.fc.weight, model.fc.weight)  # head init comes from the torch RNG


def test_common_wrappers_and_module_prefix(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    wrapped = {"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    assert states_equal(load_state_dict_file(tmp_path / "ckpt.pth"), resnet18_state)
    torch.save({"model": resnet18_state}, tmp_path / "model.pt")
    model = build_model("resnet18", weights=tmp_path / "model.pt")
    assert states_equal(model.state_dict(), resnet18_state)


def test_wrong_architecture_is_one_line_naming_keys(tmp_path: Path) -> None:
    with torch.device("meta"):
        state = build_model("resnet50", num_classes=2).state_dict()
    save_state_dict_file({k: torch.zeros(v.shape) for k, v in state.items()}, tmp_path / "r50.pth")
    with pytest.raises(WeightsError) as info:
        build_model("resnet18", weights=tmp_path / "r50.pth")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"{tmp_path / 'r50.pth'}: weights do not fit resnet18 (torchvision): "
    )
    assert "first layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message
    assert "unexpected key(s), first layer1.0.conv3.weight" in message


def test_pickled_object_is_refused_without_executing_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    torch.save({"state_dict": Exploit(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError) as refused:
        build_model("resnet18", weights=tmp_path / "evil.pth")
    assert not marker.exists()
    assert str(refused.value) == (
        f"weights file {tmp_path / 'evil.pth'} refused: it holds pickled Python objects, which "
        "could run code when loaded; if you trust the file, load it once with "
        "torch.load with weights_only=False and save its state dict with "
        "safetensors.torch.save_file(state_dict, 'weights.safetensors'), then pass that file"
    )


def test_non_tensor_contents_and_bad_paths(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match="is not a state dict: entry 'epoch'"):
        load_state_dict_file(tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match="weights file not found"):
        build_model("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"must end in \.safetensors, \.pth, \.pt"):
        save_state_dict_file({}, tmp_path / "w.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        build_model("resnet18", num_classes=0)


def test_imagenet_weights_from_the_torch_hub_cache(resnet18_state: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(7)
    official = build_model("resnet18", num_classes=1000).state_dict()
    path = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(path).startswith(os.environ["TORCH_HOME"])
    save_state_dict_file(official, path)
    try:
        assert fetch_weights("resnet18") == path
        info = next(w for w in list_weights() if (w.arch, w.source) == ("resnet18", "torchvision"))
        assert info.cached and info.path == str(path)
        model = build_model("resnet18", weights="imagenet", num_classes=1000)
        assert states_equal(model.state_dict(), official)
        two = build_model("resnet18", weights="ImageNet")
        assert torch.equal(two.layer4[1].conv2.weight, official["layer4.1.conv2.weight"])
        assert two.fc.out_features == 2
    finally:
        path.unlink()


def test_offline_without_cache_names_the_file_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("resnet50", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert (
        "ImageNet weights ResNet50_Weights.IMAGENET1K_V1 for resnet50 are not cached at " in message
    )
    assert "resnet50-0676ba61.pth" in message
    assert "run `resablate weights fetch resnet50` on a connected machine" in message


def test_timm_imagenet_weights_from_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"\(model source timm\)"):
        build_model("resnet18", source="timm", weights="imagenet")  # HF_HUB_OFFLINE=1
    torch.manual_seed(8)
    official = build_model("resnet18", source="timm", num_classes=1000).state_dict()
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    save_state_dict_file(official, repo / "snapshots" / "0123abc" / "model.safetensors")
    model = build_model("resnet18", source="timm", weights="imagenet", num_classes=1000)
    assert states_equal(model.state_dict(), official)


def test_demo_weights_path_and_messages(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty cache of its own: other tests build demo weights in the session's cache.
    monkeypatch.setenv("RESABLATE_CACHE", str(tmp_path))
    path = demo_weights_path("resnet18")
    assert path.name == "torchvision-resnet18.safetensors"
    assert path.parent.parts[-2:] == ("weights", "demo")
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("resnet18", weights="demo")
    assert str(info.value).startswith(
        "demo weights for resnet18 are not built yet: run `resablate demo-weights resnet18`"
    )
    save_state_dict_file(resnet18_state, path)
    try:
        model = build_model("resnet18", weights="demo")
        assert states_equal(model.state_dict(), resnet18_state)
    finally:
        path.unlink()


def test_weights_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    save_state_dict_file({"a": torch.arange(4.0)}, path)
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_family_builds_with_the_requested_head() -> None:
    for arch, source in (("alexnet", "torchvision"), ("efficientnet_b3", "torchvision")):
        with torch.device("meta"):
            model = build_model(arch, source=source, num_classes=3)
        heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert heads[-1].out_features == 3


def _online() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.network
def test_real_download_when_online() -> None:
    if not _online():
        pytest.skip("offline: download.pytorch.org is unreachable")
    path = fetch_weights("resnet18")
    assert path.name == "resnet18-f37072fd.pth"
    model = build_model("resnet18", weights="imagenet", num_classes=1000)
    assert model.fc.out_features == 1000
