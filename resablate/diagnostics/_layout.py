"""How the diagnostics cut a model into stages and blocks (shared by gradflow and CKA).

Stages come from the registry (``resablate.families.stage_map``): the papers' names, ``conv1`` (the
stem) then ``conv2_x`` … ``conv5_x`` for ResNets, ``conv1`` … ``convN`` for AlexNet, VGG16 and
EfficientNet. The classifier head (``resablate.families.head_of``) is its own group, named by its
module path (``fc``, ``classifier.6``). A *block* is a child of a stage whose only module is a
sequential container (a ResNet stage's residual blocks, ``layer3.2``); any other stage is one block.
"""

from __future__ import annotations

from torch import nn

from resablate.families import head_of, stage_map


def stage_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Stage name -> module paths, in forward order, the classifier head last.

    Raises:
        ConfigError: The model is neither ResNet-like nor an instance of a registered family.
    """
    groups = {name: tuple(paths) for name, paths in stage_map(model).items()}
    head = head_of(model)
    groups[head] = (head,)
    return groups


def block_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Block name -> module paths, in forward order (residual blocks split out of their stage).

    Raises:
        ConfigError: The model is neither ResNet-like nor an instance of a registered family.
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
        ConfigError: The model is neither ResNet-like nor an instance of a registered family.
    """
    return {name: paths[-1] for name, paths in stage_map(model).items()}
