"""The cell's from_dict/to_dict round-trip every field (a property test; needs hypothesis, a dev
package: the module skips on a machine without it, such as a bare GPU machine)."""

from __future__ import annotations

import json

import pytest

from resablate.choices import BN_POLICIES, FREEZE_PLANS
from resablate.grid.cell import Cell

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (dev extra) is not installed")
st = hypothesis.strategies
given = hypothesis.given

_OVERRIDE_VALUES = st.one_of(
    st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
_CONFIGS = st.fixed_dictionaries(
    {
        "arch": st.sampled_from(["resnet18", "resnet50", "vgg16"]),
        "source": st.sampled_from(["torchvision", "timm"]),
        "residual": st.sampled_from(
            ["on", "off", "OFF", "off:conv4_x,conv5_x", "off:layer2", "off:conv2_x,layer3"]
        ),
        "residual_alpha": st.floats(0.0, 1.0),
        "weights": st.sampled_from(["none", "", "ImageNet", "demo", "/w/r.pt", "rel/w.pth"]),
        "freeze": st.sampled_from(FREEZE_PLANS),
        "bn": st.sampled_from(BN_POLICIES),
        "recipe": st.sampled_from(["cifake", "demo", "food"]),
        "overrides": st.dictionaries(st.text(min_size=1, max_size=8), _OVERRIDE_VALUES, max_size=3),
        "seed": st.integers(0, 2**31),
        "data": st.sampled_from(["demo", "/data/cifake", "rel/data"]),
    }
)


@given(_CONFIGS)
def test_to_dict_and_from_dict_round_trip_every_field(config: dict) -> None:
    cell = Cell.from_dict(config)
    saved = cell.to_dict()
    assert sorted(saved) == sorted(config)  # every field is written
    again = Cell.from_dict(json.loads(json.dumps(saved)))  # through JSON, as stores keep it
    assert again == cell
    assert again.to_dict() == saved and again.cell_id == cell.cell_id
