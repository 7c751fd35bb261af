"""How the diagnostics cut a model into stages and blocks (shared by gradflow and CKA).

Stages come from the registry (``resablate.families.stage_map``): the papers' names, ``conv1`` (the
stem) then ``conv2_x`` … ``conv5_x`` for ResNets, ``conv1`` … ``convN`` for AlexNet, VGG16 and
EfficientNet. A model without named stages (a user's CIFAR ResNet, a Hugging Face or timm model
outside the registry) is cut at its top-level children that hold parameters, named by their
paths (``conv1``, ``layer1``, ...). The classifier head (``resablate.families.head_of``) is its
own group, named by its module path (``fc``, ``classifier.6``). A *block* is a child of a stage
whose only module is a sequential container (a ResNet stage's residual blocks, ``layer3.2``); any
other stage is one block.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from resablate.families import head_of, stage_layout


def _stages(model: nn.Module) -> Mapping[str, tuple[str, ...]]:
    """The model's named stages, else its top-level children with parameters (head excluded)."""
    layout = stage_layout(model)
    if layout is not None:
        return layout[1]
    head = head_of(model).split(".")[0]
    return {
        name: (name,)
        for name, child in model.named_children()
        if name != head and any(True for _ in child.parameters())
    }


def stage_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Stage name -> module paths, in forward order, the classifier head last.

    Raises:
        ConfigError: The model has no classifier head.
    """
    groups = {name: tuple(paths) for name, paths in _stages(model).items()}
    head = head_of(model)
    groups[head] = (head,)
    return groups


def block_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Block name -> module paths, in forward order (residual blocks split out of their stage).

    Raises:
        ConfigError: The model has no classifier head.
    """
    groups: dict[str, tuple[str, ...]] = {}
    for name, paths in stage_groups(model).items():
        module = model.get_submodule(paths[0])
        if len(paths) == 1 and isinstance(module, nn.Sequential) and len(module) > 0:
            for child, _ in module.named_children():
                groups[f"{paths[0]}.{child}"] = (f"{paths[0]}.{child}",)
        else:
            groups[name] = paths
    return groups


def stage_output_modules(model: nn.Module) -> dict[str, str]:
    """Stage name -> path of the module whose output is the stage's output (no head).

    Raises:
        ConfigError: The model has no classifier head (needed to leave it out).
    """
    return {name: paths[-1] for name, paths in _stages(model).items()}
