"""The one registry of architectures: how to build each, its stages, its head, its residual blocks.

Everything else reads these declarations: surgery groups residual blocks by the stage maps,
freezing and counting read them, the CLI offers :func:`list_architectures`. Residual blocks
themselves are not declared here (surgery finds them by tracing, or through
:mod:`resablate.blocks`): this module imports no model code at module level.

Stage names follow the papers (He et al. 2016, Table 1): ``conv1`` is the stem (conv1, bn1,
relu, maxpool), ``conv2_x`` … ``conv5_x`` are torchvision's and timm's ``layer1`` … ``layer4``.
The CIFAR ResNets (Section 4.2, :mod:`resablate.cifar_resnet`) have three: ``conv2_x`` …
``conv4_x`` = ``layer1`` … ``layer3``, after a stem of conv1, bn1 and relu.
AlexNet and VGG16 have stages ``conv1`` … ``conv5`` (AlexNet's five conv layers, VGG16's five conv
blocks, each with its ReLUs and following max-pool). EfficientNet-B3/B4 follow the EfficientNet
paper's Table 1: ``conv1`` is the stem convolution (``features.0``), ``conv2`` … ``conv8`` are the
seven MBConv stages (``features.1`` … ``features.7``) and ``conv9`` is the final 1×1 convolution
(``features.8``).

ViTs have stages ``stem`` (the patch embedding with the class token and position embedding) and
``block1`` … ``blockN`` (one per encoder block, as timm's ``feature_info`` lists them; the final
norm goes with the last). The class token and position embedding are parameters, not modules: a
stage map entry is a module path or a parameter path (``"cls_token"``,
``"encoder.pos_embedding"``), so freezing and per-stage counts include them.

timm is imported only when a timm family is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from resablate.choices import SOURCES
from resablate.errors import ConfigError

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
RESNET_DEPTHS = (18, 34, 50, 101, 152)
CIFAR_DEPTHS = (20, 32, 44, 56)

_PAPER_TO_CODE = {
    "conv2_x": "layer1",
    "conv3_x": "layer2",
    "conv4_x": "layer3",
    "conv5_x": "layer4",
}
_CODE_TO_PAPER = {code: paper for paper, code in _PAPER_TO_CODE.items()}


@dataclass(frozen=True)
class Family:
    """One architecture from one source, declared once.

    Attributes:
        arch: Architecture name as users type it (``"resnet50"``, ``"vgg16"``, ...).
        source: ``"torchvision"``, ``"timm"`` or ``"hf"`` (Hugging Face ``transformers``).
        kind: ``"resnet"``, ``"resnetv2"``, ``"alexnet"``, ``"vgg"``, ``"efficientnet"``,
            ``"mobilenet"``, ``"convnext"``, ``"regnet"`` or ``"vit"``.
        depth: 18, 34, 50, 101 or 152 for ResNets (ResNeXt/Wide-ResNet included), 20, 32, 44 or
            56 for the CIFAR ResNets, else None.
        builder: Builds the model with random initialisation and a 1000-class head.
        stages: Paper stage name -> module (or parameter) paths of that stage, in forward order.
        head: Module path of the final classifier (an ``nn.Linear``, or a 1×1 ``nn.Conv2d`` as in
            timm's ResNetV2).
        imagenet: The official ImageNet weights: a torchvision weights enum name
            (``"ResNet50_Weights.IMAGENET1K_V1"``), a timm pretrained tag (``"resnet50.a1_in1k"``)
            or a Hugging Face model repository (``"microsoft/resnet-50"``); None where there are
            none (the CIFAR ResNets).
        residual: Whether residual surgery applies (the model has residual blocks).
        model_type: Dotted name of the class ``builder`` returns or one of its bases (instances of
            it and of its subclasses are recognised).
        params: Parameters of the model with its 1000-class head (as upstream publishes them);
            tells apart models of one class and layout (ResNet-18/34, EfficientNet-B0/B3/B4).
    """

    arch: str
    source: str
    kind: str
    depth: int | None
    builder: Callable[[], nn.Module] = field(repr=False, compare=False)
    stages: Mapping[str, tuple[str, ...]]
    head: str
    imagenet: str | None
    residual: bool
    model_type: str
    params: int

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Paper stage names in forward order."""
        return tuple(self.stages)


_FAMILIES: dict[tuple[str, str], Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry.

    Raises:
        ConfigError: ``(family.arch, family.source)`` is already registered, or the source is
            unknown.
    """
    if family.source not in SOURCES:
        raise ConfigError(
            f"unknown source {family.source!r} for {family.arch}; sources: {', '.join(SOURCES)}"
        )
    key = (family.arch, family.source)
    if key in _FAMILIES:
        raise ConfigError(f"architecture {family.arch!r} ({family.source}) is already registered")
    _FAMILIES[key] = family
    return family


def list_architectures(source: str | None = None) -> list[str]:
    """Registered architecture names in registration order, optionally for one source."""
    if source is not None:
        _check_source(source)
    names: list[str] = []
    for family in _FAMILIES.values():
        if (source is None or family.source == source) and family.arch not in names:
            names.append(family.arch)
    return names


def list_families(source: str | None = None) -> list[Family]:
    """All registered families in registration order, optionally for one source."""
    if source is not None:
        _check_source(source)
    return [f for f in _FAMILIES.values() if source is None or f.source == source]


def residual_architectures(source: str | None = None) -> list[str]:
    """Registered architectures that residual surgery applies to (each name once)."""
    return list(dict.fromkeys(f.arch for f in list_families(source) if f.residual))


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")


def get_family(arch: str, source: str = "torchvision") -> Family:
    """The registered family of ``arch`` from ``source`` (``arch`` is case-insensitive).

    Raises:
        ConfigError: Unknown source, or unknown architecture (the message lists the ResNet depths
            and the architectures registered for that source).
    """
    _check_source(source)
    key = (arch.strip().lower(), source)
    family = _FAMILIES.get(key)
    if family is not None:
        return family
    legal = ", ".join(list_architectures(source))
    others = [s for s in SOURCES if s != source and (key[0], s) in _FAMILIES]
    where = "" if source == "torchvision" else f" for source {source}"
    hint = f" (it exists with source {others[0]})" if others else ""
    depths = ", ".join(str(d) for d in RESNET_DEPTHS)
    raise ConfigError(
        f"unknown architecture {arch!r}{where}{hint}; ResNet depths: {depths}; "
        f"architectures: {legal}"
    )


def canonical_stage(name: str, family: Family | None = None) -> str:
    """The code name of a stage: ``"conv4_x"``, ``"LAYER3"`` -> ``"layer3"``.

    Args:
        name: A paper or code stage name, case-insensitive.
        family: When given, the family's own stage names (``conv1``..``conv5`` for AlexNet/VGG16,
            ``conv1``..``conv9`` for EfficientNet) are the legal set; otherwise the ResNet names.

    Raises:
        ConfigError: Unknown stage (the message lists the legal names).
    """
    key = name.strip().lower()
    if key == "stem" and (family is None or key not in family.stages):
        key = "conv1"
    if family is not None and family.kind != "resnet":
        if key in family.stages:
            return key
        raise ConfigError(
            f"unknown stage {name!r} for {family.arch}; stages: {', '.join(family.stages)}"
        )
    if key in _PAPER_TO_CODE:
        return _PAPER_TO_CODE[key]
    if key == "conv1" or key in RESNET_STAGES:
        return key
    legal = ["conv1", *_PAPER_TO_CODE, *RESNET_STAGES]
    where = f" for {family.arch}" if family is not None else ""
    raise ConfigError(f"unknown stage {name!r}{where}; stages: {', '.join(legal)}")


def paper_stage(name: str, family: Family | None = None) -> str:
    """The paper name of a stage: ``"layer3"`` -> ``"conv4_x"`` (any accepted spelling).

    Raises:
        ConfigError: Unknown stage.
    """
    code = canonical_stage(name, family)
    return _CODE_TO_PAPER.get(code, code)


def residual_stage_names(stages: Iterable[str] | str | None) -> tuple[str, ...]:
    """Canonical residual stage names (``layer1``..``layer4``) for a surgery ``stages`` argument.

    Raises:
        ConfigError: Unknown stage, or a stage without residual blocks (``conv1``).
    """
    if stages is None:
        return RESNET_STAGES
    if isinstance(stages, str):
        stages = (stages,)
    result: list[str] = []
    for stage in stages:
        code = canonical_stage(stage)
        if code not in RESNET_STAGES:
            raise ConfigError(
                f"stage {stage!r} has no residual blocks; residual stages: "
                "conv2_x, conv3_x, conv4_x, conv5_x (layer1..layer4)"
            )
        if code not in result:
            result.append(code)
    return tuple(result)


# --- recognising model instances ---------------------------------------------------------------


def type_name(cls: type) -> str:
    """Dotted name of a class: ``module.qualname``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def is_resnet_like(model: nn.Module) -> bool:
    """True when ``model`` has ``layer1``..``layer4`` (torchvision/timm ResNet layout)."""
    return all(isinstance(getattr(model, s, None), nn.Module) for s in RESNET_STAGES)


def resnet_stem(model: nn.Module) -> tuple[str, ...]:
    """Module paths of a ResNet's stem (``conv1``), those of the usual names that exist."""
    names = ("conv1", "bn1", "relu", "act1", "maxpool")
    return tuple(n for n in names if isinstance(getattr(model, n, None), nn.Module))


def stage_member(model: nn.Module, path: str) -> nn.Module | nn.Parameter:
    """The module or parameter at ``path`` in ``model`` (a stage map entry).

    Raises:
        AttributeError: ``model`` has neither a module nor a parameter at ``path``.
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_parameter(path)


def head_features(head: nn.Module) -> int | None:
    """Input features of a classifier head: an ``nn.Linear`` or a 1×1 ``nn.Conv2d``, else None."""
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
        return head.in_channels
    return None


def _has_path(model: nn.Module, path: str) -> bool:
    try:
        stage_member(model, path)
    except AttributeError:
        return False
    return True


def family_of(model: nn.Module) -> Family | None:
    """The registered family whose declaration matches ``model``'s class, layout and size, or None.

    A family matches when the model is an instance of its ``model_type`` (or of a subclass), every
    module path of its stage map and its head exists (VGG16 and VGG11 share a class but not a
    layout), and the model has as many parameters outside the head as the family's model (ResNet-18
    and -34, EfficientNet-B0, -B3 and -B4 share a class and a layout; the head may have any number
    of classes): nothing is built.
    """
    names = {type_name(cls) for cls in type(model).__mro__}
    for family in _FAMILIES.values():
        if family.model_type not in names:
            continue
        paths = [p for group in family.stages.values() for p in group]
        if not all(_has_path(model, p) for p in (*paths, family.head)):
            continue
        if _covers_container(model, paths) and _body_params(model, family.head) == _family_body(
            family, model
        ):
            return family
    return None


def _body_params(model: nn.Module, head: str) -> int:
    """Parameters of ``model`` outside its classifier ``head``."""
    in_head = {id(p) for p in model.get_submodule(head).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in in_head)


def _family_body(family: Family, model: nn.Module) -> int | None:
    """Parameters outside the head that a model of ``family`` has (None: no classifier head)."""
    features = head_features(model.get_submodule(family.head))
    if features is None:
        return None
    return family.params - (features + 1) * 1000


def _covers_container(model: nn.Module, paths: list[str]) -> bool:
    # For sequential feature extractors, the stage map must list every child of the container.
    containers = {p.rsplit(".", 1)[0] for p in paths if "." in p}
    for container in containers:
        module = model.get_submodule(container)
        if not isinstance(module, nn.Sequential | nn.ModuleList):
            continue
        children = {f"{container}.{n}" for n, _ in module.named_children()}
        if not children <= set(paths):
            return False
    return True


def _own_stage_map(model: nn.Module) -> tuple[Family | None, Mapping[str, tuple[str, ...]]] | None:
    family = family_of(model)
    if family is not None:
        return family, family.stages
    if is_resnet_like(model):
        stages = {"conv1": resnet_stem(model)}
        stages.update({_CODE_TO_PAPER[s]: (s,) for s in RESNET_STAGES})
        return None, MappingProxyType(stages)
    encoder_stages = getattr(getattr(model, "encoder", None), "stages", None)
    if isinstance(getattr(model, "embedder", None), nn.Module) and (
        isinstance(encoder_stages, nn.ModuleList) and len(encoder_stages) == len(RESNET_STAGES)
    ):
        # A Hugging Face ResNetModel of any config: embedder, encoder.stages.0..3.
        stages = {"conv1": ("embedder",)}
        stages.update({f"conv{i + 2}_x": (f"encoder.stages.{i}",) for i in range(4)})
        return None, MappingProxyType(stages)
    return None


def stage_layout(model: nn.Module) -> tuple[Family | None, Mapping[str, tuple[str, ...]]] | None:
    """The family (None for an unregistered ResNet-like model) and stage map of ``model``.

    When ``model`` itself has none, the first module of its tree (pre-order) that has one is
    used, its module paths prefixed: a backbone inside a user module, ``nn.Sequential``,
    ``DataParallel`` or ``DistributedDataParallel`` (``"module.layer1"``). None when no module has a
    stage map.
    """
    for path, sub in model.named_modules():
        found = _own_stage_map(sub)
        if found is not None:
            family, stages = found
            if not path:
                return family, stages
            prefixed = {k: tuple(f"{path}.{p}" for p in v) for k, v in stages.items()}
            return family, MappingProxyType(prefixed)
    return None


def stage_map(model: nn.Module) -> Mapping[str, tuple[str, ...]]:
    """Paper stage name -> module paths, for a ResNet-like model or a registered family's model.

    Models inside wrappers are found as :func:`stage_layout` says (paths from ``model``).

    Raises:
        ConfigError: No module of ``model`` is ResNet-like or an instance of a registered family.
    """
    found = stage_layout(model)
    if found is not None:
        return found[1]
    raise ConfigError(
        f"no stage map for {type(model).__name__}; known architectures: "
        f"{', '.join(list_architectures())}"
    )


def head_of(model: nn.Module) -> str:
    """Module path of ``model``'s classifier.

    The registered family's head; else ``fc`` when it is an ``nn.Linear`` (ResNets); else the
    module timm's ``get_classifier()`` returns; else the last ``nn.Linear`` or 1×1
    ``nn.Conv2d`` of the module tree (a classifier comes last in the models resablate meets:
    Hugging Face's ``classifier.1``, a CIFAR ResNet's ``linear``).

    Raises:
        ConfigError: The model has no Linear or 1×1 conv layer to serve as its head.
    """
    family = family_of(model)
    if family is not None:
        return family.head
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    heads = [(path, module) for path, module in model.named_modules() if head_features(module)]
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    for path, module in heads:
        if module is classifier:
            return path
    if not heads:
        raise ConfigError(
            f"cannot find the classifier head of {type(model).__name__}: no Linear or 1x1 conv "
            "layer"
        )
    return heads[-1][0]


# --- family declarations -------------------------------------------------------------------------


def _tv_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        device = torch.get_default_device()
        if device.type != "meta" or not arch.startswith("regnet"):
            return getattr(tvm, arch)(weights=None, num_classes=1000)
        # torchvision's RegNets compute their widths with tensors: build on the CPU, then move.
        with torch.device("cpu"):
            return getattr(tvm, arch)(weights=None, num_classes=1000).to(device)

    build.__name__ = f"build_torchvision_{arch}"
    return build


def _timm_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=1000)

    build.__name__ = f"build_timm_{arch}"
    return build


def _resnet_stages(stem: tuple[str, ...], count: int = 4) -> Mapping[str, tuple[str, ...]]:
    """The stem, then the first ``count`` of ``conv2_x`` .. ``conv5_x`` (``layer1`` ..)."""
    stages = {"conv1": stem}
    stages.update({paper: (code,) for paper, code in list(_PAPER_TO_CODE.items())[:count]})
    return MappingProxyType(stages)


def _sequential_stages(container: str, bounds: tuple[int, ...]) -> Mapping[str, tuple[str, ...]]:
    # bounds[i] is the first child index of stage i+1; the last bound is one past the end.
    return MappingProxyType(
        {
            f"conv{i + 1}": tuple(f"{container}.{j}" for j in range(bounds[i], bounds[i + 1]))
            for i in range(len(bounds) - 1)
        }
    )


# Parameters with the 1000-class head, as torchvision publishes them (timm's and Hugging Face's
# models of the same name have the same count); tests/test_families.py builds each to check.
_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "mobilenet_v2": 3_504_872,
    "convnext_tiny": 28_589_128,
    "regnet_y_400mf": 4_344_144,
    "regnety_016": 11_202_430,
    "mobilenetv3_large_100": 5_483_032,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "resnetv2_50": 25_549_352,
    "vit_tiny_patch16_224": 5_717_416,
    "vit_b_16": 86_567_656,
    # He et al. 2016's CIFAR ResNets with projection shortcuts (option B): 272,474 / 466,906 /
    # 661,338 / 855,770 parameters with a 10-class head
    "cifar_resnet20": 336_824,
    "cifar_resnet32": 531_256,
    "cifar_resnet44": 725_688,
    "cifar_resnet56": 920_120,
}

_TV_RESNETS = {
    # arch: (depth, torchvision weights enum)
    "resnet18": (18, "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": (34, "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": (50, "ResNet50_Weights.IMAGENET1K_V1"),
    "resnet101": (101, "ResNet101_Weights.IMAGENET1K_V1"),
    "resnet152": (152, "ResNet152_Weights.IMAGENET1K_V1"),
    "resnext50_32x4d": (50, "ResNeXt50_32X4D_Weights.IMAGENET1K_V1"),
    "resnext101_32x8d": (101, "ResNeXt101_32X8D_Weights.IMAGENET1K_V1"),
    "resnext101_64x4d": (101, "ResNeXt101_64X4D_Weights.IMAGENET1K_V1"),
    "wide_resnet50_2": (50, "Wide_ResNet50_2_Weights.IMAGENET1K_V1"),
    "wide_resnet101_2": (101, "Wide_ResNet101_2_Weights.IMAGENET1K_V1"),
}
_TIMM_RESNETS = {
    # arch: (depth, timm's default pretrained tag)
    "resnet18": (18, "resnet18.a1_in1k"),
    "resnet34": (34, "resnet34.a1_in1k"),
    "resnet50": (50, "resnet50.a1_in1k"),
    "resnet101": (101, "resnet101.a1h_in1k"),
    "resnet152": (152, "resnet152.a1h_in1k"),
}

for _source, _table, _stem, _make, _type in (
    (
        "torchvision",
        _TV_RESNETS,
        ("conv1", "bn1", "relu", "maxpool"),
        _tv_builder,
        "torchvision.models.resnet.ResNet",
    ),
    (
        "timm",
        _TIMM_RESNETS,
        ("conv1", "bn1", "act1", "maxpool"),
        _timm_builder,
        "timm.models.resnet.ResNet",
    ),
):
    for _arch, (_depth, _weights) in _table.items():
        register(
            Family(
                arch=_arch,
                source=_source,
                kind="resnet",
                depth=_depth,
                builder=_make(_arch),
                stages=_resnet_stages(_stem),
                head="fc",
                imagenet=_weights,
                residual=True,
                model_type=_type,
                params=_PARAMS[_arch],
            )
        )


def _cifar_builder(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from resablate.cifar_resnet import CifarResNet

        return CifarResNet(depth)

    build.__name__ = f"build_cifar_resnet{depth}"
    return build


# He et al. 2016, Section 4.2: the CIFAR-10 ResNets (depth 6n + 2; resablate/cifar_resnet.py),
# a 3×3 stem without max-pool and three stages (conv2_x .. conv4_x = layer1 .. layer3); no
# ImageNet weights.
for _depth in CIFAR_DEPTHS:
    register(
        Family(
            arch=f"cifar_resnet{_depth}",
            source="torchvision",
            kind="resnet",
            depth=_depth,
            builder=_cifar_builder(_depth),
            stages=_resnet_stages(("conv1", "bn1", "relu"), count=3),
            head="fc",
            imagenet=None,
            residual=True,
            model_type="resablate.cifar_resnet.CifarResNet",
            params=_PARAMS[f"cifar_resnet{_depth}"],
        )
    )


def _hf_builder(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from resablate.hf import build_resnet

        return build_resnet(depth)

    build.__name__ = f"build_hf_resnet{depth}"
    return build


# Hugging Face transformers' ResNets (microsoft/resnet-N): the stem is the embedder, the stages
# are encoder.stages.0..3, the head classifier.1 (after a Flatten).
_HF_STAGES = MappingProxyType(
    {
        "conv1": ("resnet.embedder",),
        **{
            paper: (f"resnet.encoder.stages.{int(code[-1]) - 1}",)
            for paper, code in _PAPER_TO_CODE.items()
        },
    }
)
for _depth in RESNET_DEPTHS:
    register(
        Family(
            arch=f"resnet{_depth}",
            source="hf",
            kind="resnet",
            depth=_depth,
            builder=_hf_builder(_depth),
            stages=_HF_STAGES,
            head="classifier.1",
            imagenet=f"microsoft/resnet-{_depth}",
            residual=True,
            model_type="transformers.models.resnet.modeling_resnet.ResNetForImageClassification",
            params=_PARAMS[f"resnet{_depth}"],
        )
    )

_TV_EFFICIENTNET = "torchvision.models.efficientnet.EfficientNet"
_BASELINES = {
    # arch: (kind, stage bounds over `features`, head, weights enum, model class)
    # conv(0) relu pool | conv(3) relu pool | conv(6) relu | conv(8) relu | conv(10) relu pool
    "alexnet": (
        "alexnet",
        (0, 3, 6, 8, 10, 13),
        "classifier.6",
        "AlexNet_Weights.IMAGENET1K_V1",
        "torchvision.models.alexnet.AlexNet",
    ),
    # five blocks of 2, 2, 3, 3, 3 conv+relu pairs, each closed by a max-pool
    "vgg16": (
        "vgg",
        (0, 5, 10, 17, 24, 31),
        "classifier.6",
        "VGG16_Weights.IMAGENET1K_V1",
        "torchvision.models.vgg.VGG",
    ),
    # stem conv | seven MBConv stages | final 1x1 conv (the EfficientNet paper's Table 1); B0, B3
    # and B4 share a class and a layout: family_of tells them apart by their parameter count
    **{
        f"efficientnet_b{n}": (
            "efficientnet",
            tuple(range(10)),
            "classifier.1",
            f"EfficientNet_B{n}_Weights.IMAGENET1K_V1",
            _TV_EFFICIENTNET,
        )
        for n in (0, 3, 4)
    },
    # the MobileNetV2 paper's Table 2: conv | seven bottleneck stages (1, 2, 3, 4, 3, 3, 1
    # blocks) | final 1x1 conv
    "mobilenet_v2": (
        "mobilenet",
        (0, 1, 2, 4, 7, 11, 14, 17, 18, 19),
        "classifier.1",
        "MobileNet_V2_Weights.IMAGENET1K_V1",
        "torchvision.models.mobilenetv2.MobileNetV2",
    ),
    # stem | six bottleneck stages of 1, 2, 3, 4, 2, 3 blocks | final 1x1 conv: the stages of
    # timm's mobilenetv3_large_100 (blocks.0..6); "small" has five of 1, 2, 3, 2, 3
    "mobilenet_v3_large": (
        "mobilenet",
        (0, 1, 2, 4, 7, 11, 13, 16, 17),
        "classifier.3",
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "torchvision.models.mobilenetv3.MobileNetV3",
    ),
    "mobilenet_v3_small": (
        "mobilenet",
        (0, 1, 2, 4, 7, 9, 12, 13),
        "classifier.3",
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "torchvision.models.mobilenetv3.MobileNetV3",
    ),
    # stem | four stages, each stage's downsampling layer with it (as timm groups them)
    "convnext_tiny": (
        "convnext",
        (0, 1, 2, 4, 6, 8),
        "classifier.2",
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "torchvision.models.convnext.ConvNeXt",
    ),
}
for _arch, (_kind, _bounds, _head, _weights, _type) in _BASELINES.items():
    register(
        Family(
            arch=_arch,
            source="torchvision",
            kind=_kind,
            depth=None,
            builder=_tv_builder(_arch),
            stages=_sequential_stages("features", _bounds),
            head=_head,
            imagenet=_weights,
            residual=_kind not in ("alexnet", "vgg"),
            model_type=_type,
            params=_PARAMS[_arch],
        )
    )


def _named_stages(*groups: tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    """``conv1`` .. ``convN`` for the given groups of module paths, in forward order."""
    return MappingProxyType({f"conv{i + 1}": group for i, group in enumerate(groups)})


_MBCONV_STAGES = _named_stages(
    ("conv_stem", "bn1"), *((f"blocks.{i}",) for i in range(7)), ("conv_head", "bn2")
)


def _vit_stages(
    stem: tuple[str, ...], block: str, blocks: int, norm: str
) -> Mapping[str, tuple[str, ...]]:
    """``stem``, then ``block1`` .. ``blockN`` (``block`` formats the index), ``norm`` last."""
    stages = {"stem": stem}
    stages.update({f"block{i + 1}": (block.format(i),) for i in range(blocks)})
    stages[f"block{blocks}"] += (norm,)
    return MappingProxyType(stages)


_OTHERS = (
    # (arch, source, kind, stages, head, ImageNet weights, model class)
    (
        "regnet_y_400mf",
        "torchvision",
        "regnet",
        _named_stages(("stem",), *((f"trunk_output.block{i}",) for i in range(1, 5))),
        "fc",
        "RegNet_Y_400MF_Weights.IMAGENET1K_V1",
        "torchvision.models.regnet.RegNet",
    ),
    (
        "vit_b_16",
        "torchvision",
        "vit",
        _vit_stages(
            ("conv_proj", "class_token", "encoder.pos_embedding"),
            "encoder.layers.encoder_layer_{}",
            12,
            "encoder.ln",
        ),
        "heads.head",
        "ViT_B_16_Weights.IMAGENET1K_V1",
        "torchvision.models.vision_transformer.VisionTransformer",
    ),
    (
        "resnetv2_50",
        "timm",
        "resnetv2",
        # the papers' stage names; timm's feature_info: stem, stages.0..3, the final norm last
        MappingProxyType(
            {
                "conv1": ("stem",),
                **{f"conv{i + 2}_x": (f"stages.{i}",) for i in range(3)},
                "conv5_x": ("stages.3", "norm"),
            }
        ),
        "head.fc",
        "resnetv2_50.a1h_in1k",
        "timm.models.resnetv2.ResNetV2",
    ),
    (
        "regnety_016",
        "timm",
        "regnet",
        _named_stages(("stem",), ("s1",), ("s2",), ("s3",), ("s4", "final_conv")),
        "head.fc",
        "regnety_016.tv2_in1k",
        "timm.models.regnet.RegNet",
    ),
    (
        "convnext_tiny",
        "timm",
        "convnext",
        _named_stages(("stem",), *((f"stages.{i}",) for i in range(3)), ("stages.3", "norm_pre")),
        "head.fc",
        "convnext_tiny.in12k_ft_in1k",
        "timm.models.convnext.ConvNeXt",
    ),
    (
        "efficientnet_b0",
        "timm",
        "efficientnet",
        _MBCONV_STAGES,
        "classifier",
        "efficientnet_b0.ra_in1k",
        "timm.models.efficientnet.EfficientNet",
    ),
    (
        "mobilenetv3_large_100",
        "timm",
        "mobilenet",
        _named_stages(
            ("conv_stem", "bn1"),
            *((f"blocks.{i}",) for i in range(7)),
            ("conv_head", "norm_head", "act2"),
        ),
        "classifier",
        "mobilenetv3_large_100.ra_in1k",
        "timm.models.mobilenetv3.MobileNetV3",
    ),
    (
        "vit_tiny_patch16_224",
        "timm",
        "vit",
        _vit_stages(("patch_embed", "cls_token", "pos_embed", "norm_pre"), "blocks.{}", 12, "norm"),
        "head",
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        "timm.models.vision_transformer.VisionTransformer",
    ),
)
for _arch, _source, _kind, _stages, _head, _weights, _type in _OTHERS:
    register(
        Family(
            arch=_arch,
            source=_source,
            kind=_kind,
            depth=None,
            builder=(_tv_builder if _source == "torchvision" else _timm_builder)(_arch),
            stages=_stages,
            head=_head,
            imagenet=_weights,
            residual=True,
            model_type=_type,
            params=_PARAMS[_arch],
        )
    )
