"""The CIFAR ResNets of He et al. 2016 (Section 4.2): ResNet-20, -32, -44, -56 (depth 6n + 2).

A 3×3 convolution with 16 filters (stem, no max-pool), three stages of ``n`` BasicBlocks with
16, 32 and 64 filters on 32×32, 16×16 and 8×8 maps (stride 2 at the first block of stages 2 and
3), global average pooling and a linear head: 6n + 2 weighted layers. Where a stage changes the
shape, the shortcut is a projection (1×1 convolution + BatchNorm, the paper's option B), so each
block is torchvision's own :class:`~torchvision.models.resnet.BasicBlock` and the model is a
torchvision :class:`~torchvision.models.resnet.ResNet`: surgery, freezing, counting and packing
treat it as any torchvision ResNet. (The paper's CIFAR numbers use option A, zero-padded identity
shortcuts, which has no parameters: option B adds 2,752 parameters at every depth.)

The stages are ``layer1`` .. ``layer3`` in the code and ``conv2_x`` .. ``conv4_x`` at the user
surface (:mod:`resablate.families`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

WIDTHS = (16, 32, 64)


class CifarResNet(ResNet):
    """A CIFAR ResNet of ``depth = 6n + 2`` layers (see the module docstring).

    Attributes:
        conv1, bn1, relu: The stem (3×3, 16 filters, stride 1).
        layer1, layer2, layer3: The three stages of ``n`` BasicBlocks.
        avgpool, fc: Global average pooling and the linear head.
    """

    def __init__(self, depth: int, num_classes: int = 1000) -> None:
        """Build the network with He initialisation (torchvision's ResNet init).

        Raises:
            ValueError: ``depth`` is not ``6n + 2`` for some ``n >= 1``.
        """
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56), not {depth}")
        blocks = (depth - 2) // 6
        nn.Module.__init__(self)
        # The attributes torchvision's ResNet._make_layer reads: it builds the stages, with a
        # 1×1 conv + BN projection where the shape changes.
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = WIDTHS[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(BasicBlock, WIDTHS[0], blocks)
        self.layer2 = self._make_layer(BasicBlock, WIDTHS[1], blocks, stride=2)
        self.layer3 = self._make_layer(BasicBlock, WIDTHS[2], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(WIDTHS[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
