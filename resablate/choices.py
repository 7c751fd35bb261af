"""Closed sets of values the library accepts, importable without torch.

Each set is owned here and re-exported by the module that gives it meaning
(``resablate.families.SOURCES``, ``resablate.freezing.BN_POLICIES``); the command line builds its
choices from these tuples without paying for importing torch at start-up.
"""

from __future__ import annotations

#: Where architectures come from.
SOURCES = ("torchvision", "timm")
#: BatchNorm policies of frozen stages: ``frozen`` keeps the running statistics, ``train`` lets
#: them update.
BN_POLICIES = ("frozen", "train")
#: Metrics a lesion study measures (``resablate.diagnostics.lesion.METRICS``).
LESION_METRICS = ("accuracy", "f1", "loss")
