"""ResNet20 for 32x32 images (He et al. 2016, Sec. 4.2) with a choice of global pool and optional SAC heads."""

import torch
import torch.nn.functional as F
from torch import nn

from repro.pooling import FlexPool2d, LazyFlexPool2d

STAGE_CHANNELS = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """Two 3x3 convs; the shortcut is He et al.'s option A (identity, with stride-2 subsampling and zero-padded
    channels where the shape changes), which keeps ResNet20 at ~0.27 M parameters."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_pool(kind: str, channels: int | None = None, size: int | None = None) -> nn.Module:
    """A global pool to N x C; FlexPools without `channels` and `size` are sized by their first input."""
    if kind == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind in ("flex", "flex-softmax"):
        softmax = kind == "flex-softmax"
        return LazyFlexPool2d(softmax) if channels is None else FlexPool2d(channels, size, size, softmax)
    raise ValueError(f"unknown pool {kind!r}; choose from avg, flex, flex-softmax")


def sac_loss(outputs, labels: torch.Tensor, weights, label_smoothing: float = 0.0) -> torch.Tensor:
    """Eq. 3: sum over heads of lambda_i * cross-entropy, the heads' logits in order, the model's own last.
    Every head must have a weight: an untrained head would still count in the model."""
    if len(outputs) != len(weights):
        raise ValueError(f"the model gives {len(outputs)} head(s) but the loss has {len(weights)} weight(s): "
                         "every head must be trained")
    return sum(w * F.cross_entropy(h.float(), labels, label_smoothing=label_smoothing)
               for w, h in zip(weights, outputs))


class SimpleAuxiliaryClassifier(nn.Module):
    """A SAC head (paper Sec. 3.2): the stage's feature map pooled to one value per channel, then one linear
    layer to the classes. No convolution and nothing else. Without `channels` and `size` (a stage of someone
    else's network, repro.adapt) both layers are sized by the first forward pass."""

    def __init__(self, pool: str, num_classes: int, channels: int | None = None, size: int | None = None):
        super().__init__()
        self.pool = make_pool(pool, channels, size)
        self.fc = nn.LazyLinear(num_classes) if channels is None else nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: a 3x3 stem, 3 stages x 3 basic blocks (16/32/64 channels), global pool, classifier.

    forward returns the logits; with `sac=True` a tuple (stage 1 head, stage 2 head, final head), the last
    being the model's prediction.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 32, pool: str = "avg",
                 sac: bool = False, dropout: float = 0.0):
        super().__init__()
        # The backbone (stem, stages, classifier) is built and initialised before anything else draws random
        # numbers, so at one seed it starts identical in all eight columns of both tables: paired comparisons
        # across columns then differ only by the pool, the dropout and the SAC heads.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages, channels = [], 16
        for i, width in enumerate(STAGE_CHANNELS):
            blocks = [BasicBlock(channels if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(BLOCKS_PER_STAGE)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        init_weights(self)
        sizes = [input_size, (input_size + 1) // 2, (input_size + 3) // 4]  # 3x3 stride-2 convs round up
        self.pool = make_pool(pool, STAGE_CHANNELS[-1], sizes[-1])
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(
            SimpleAuxiliaryClassifier(pool, num_classes, STAGE_CHANNELS[i], sizes[i]) for i in range(2)
        ) if sac else None
        if self.heads is not None:
            init_weights(self.heads)

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None):
        """`dropout_mask` (N x 64, already scaled by 1/(1-p)) replaces the dropout layer's own random draw:
        the training loop draws masks from a stream of their own, so a compiled step trains like eager."""
        x = self.stem(x)
        aux = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if self.heads is not None and i < len(self.heads):
                aux.append(self.heads[i](x))
        features = self.pool(x)
        features = self.dropout(features) if dropout_mask is None else features * dropout_mask
        logits = self.fc(features)
        return (*aux, logits) if self.heads is not None else logits


def init_weights(module: nn.Module) -> None:
    """He et al.'s initialisation as in the standard CIFAR ResNet20 (akamaster/pytorch_resnet_cifar10):
    kaiming normal, fan_in, on every conv and linear weight."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def resnet20(num_classes: int, in_channels: int = 3, input_size: int = 32, pool: str = "avg", sac: bool = False,
             dropout: float = 0.0) -> ResNet20:
    """The paper's backbone. pool: "avg" | "flex" | "flex-softmax"; FlexPools are sized to their feature map
    (8x8 at the end for 32x32 inputs, 7x7 for 28x28 Fashion-MNIST)."""
    return ResNet20(num_classes, in_channels, input_size, pool, sac, dropout)
