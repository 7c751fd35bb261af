"""Closed sets of values the library accepts, importable without torch.

Each set is owned here and re-exported by the module that gives it meaning
(``resablate.families.SOURCES``, ``resablate.freezing.BN_POLICIES``); the command line builds its
choices from these tuples without paying for importing torch at start-up.
"""

from __future__ import annotations

#: Where architectures come from (``hf``: Hugging Face transformers, extra ``resablate[hf]``).
SOURCES = ("torchvision", "timm", "hf")
#: Freeze plans named by the ResNet/AlexNet/VGG16 stages (``resablate.freezing.FREEZE_PLANS``;
#: a family with more stages has more, see ``freezing.freeze_plans``).
FREEZE_PLANS = ("none", "conv1", "conv1-2", "conv1-3", "conv1-4", "all")
#: BatchNorm policies of frozen stages: ``frozen`` keeps the running statistics, ``train`` lets
#: them update.
BN_POLICIES = ("frozen", "train")
#: Metrics a lesion study measures (``resablate.diagnostics.lesion.METRICS``).
LESION_METRICS = ("accuracy", "f1", "loss")
