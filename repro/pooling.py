"""FlexPool: global pooling with a learned weight per channel and position (paper Sec. 3.1, Fig. 1).

Depends on nothing but torch, so it can be copied into any network, e.g. as a torchvision ResNet's `avgpool`:

    model = torchvision.models.resnet18(num_classes=10)
    model.avgpool = FlexPool2d(512, 7, 7, keepdim=True)   # 224x224 input: 7x7 last feature map
    model.avgpool = LazyFlexPool2d(keepdim=True)          # or: sized by the first forward pass

repro.adapt finds and replaces a model's global pool for you, and attaches SAC heads to any backbone.
"""

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter


class FlexPool2d(nn.Module):
    """Sum over H, W of weight * input, with a trainable (C, H, W) weight initialised to 1/(H*W).

    At initialisation this is exactly global average pooling. `softmax=True` is the form of the authors' public
    code: a softmax over the H*W weights of each channel, so every channel's weights stay a convex combination
    (initialised uniform, hence also average pooling at the start).
    `keepdim=True` returns N x C x 1 x 1, like nn.AdaptiveAvgPool2d(1), for networks that flatten afterwards.
    """

    def __init__(self, channels: int, height: int, width: int, softmax: bool = False, keepdim: bool = False):
        super().__init__()
        self.softmax = softmax
        self.keepdim = keepdim
        self.weight = nn.Parameter(torch.empty(channels, height, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Back to average pooling: 1/(H*W) everywhere, or equal logits (uniform softmax) in the softmax form."""
        _, h, w = self.weight.shape
        with torch.no_grad():
            self.weight.fill_(0.0 if self.softmax else 1.0 / (h * w))

    def pooling_weights(self) -> torch.Tensor:
        """The (C, H, W) weights actually applied to the feature map."""
        if not self.softmax:
            return self.weight
        c, h, w = self.weight.shape
        return self.weight.reshape(c, h * w).softmax(dim=1).reshape(c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.weight.shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"FlexPool2d expects input of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        weights = self.pooling_weights().to(x.dtype)
        pooled = (x * weights).sum(dim=(2, 3))
        return pooled[:, :, None, None] if self.keepdim else pooled

    def regularization(self) -> torch.Tensor:
        """Eq. 2: sum over channels of (sum over H, W of the weights - 1)^2, zero while each channel averages."""
        return ((self.pooling_weights().sum(dim=(1, 2)) - 1) ** 2).sum()

    def extra_repr(self) -> str:
        c, h, w = self.weight.shape
        return f"{c}, {h}, {w}, softmax={self.softmax}"


class LazyFlexPool2d(LazyModuleMixin, FlexPool2d):
    """A FlexPool2d that takes C, H, W from its first input, like nn.LazyLinear, and then becomes a FlexPool2d.

    Run one forward pass (e.g. on an example batch) before building the optimizer. Later inputs of another
    shape are refused, as by FlexPool2d. A state_dict loads into it before or after that first pass.
    """

    cls_to_become = FlexPool2d
    weight: UninitializedParameter

    def __init__(self, softmax: bool = False, keepdim: bool = False):
        super().__init__(0, 1, 1, softmax, keepdim)  # a placeholder weight, replaced just below
        self.weight = UninitializedParameter()

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():  # not when a loaded state_dict has sized it already
            if x.dim() != 4:
                raise ValueError(f"LazyFlexPool2d expects input of shape (N, C, H, W), got {tuple(x.shape)}")
            self.weight.materialize(tuple(x.shape[1:]))
            self.reset_parameters()

    def extra_repr(self) -> str:
        return f"softmax={self.softmax}, keepdim={self.keepdim}"


def regularization(model: nn.Module) -> torch.Tensor:
    """Eq. 2 summed over every FlexPool in a model (the main pool and the SAC heads alike)."""
    terms = [m.regularization() for m in model.modules() if isinstance(m, FlexPool2d)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
