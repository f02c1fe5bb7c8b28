"""FlexPool and SAC in other people's networks (torchvision, timm, your own): one call each.

    model = replace_global_pool(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    model = with_sac(model, ["layer2", "layer3"], weights=(0.1, 0.2, 0.7), num_classes=1000)
    model(torch.randn(1, 3, 224, 224))              # sizes the SAC heads; build the optimizer after this
    loss = model.loss(model(x), y)                  # Eq. 3 (+ reg * pooling.regularization(model) for Eq. 2)

Torch only: timm's pooling module is recognised by its class name, so timm is not needed to import this.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from repro.pooling import FlexPool2d, LazyFlexPool2d


class GlobalPoolError(ValueError):
    """The model's global average pool cannot be found or replaced; the message is one line saying why."""


def _is_global_avg_pool(module: nn.Module) -> bool:
    if type(module).__name__ == "SelectAdaptivePool2d":  # timm's; pool_type "avg" holds an AdaptiveAvgPool2d
        module = module.pool
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _describe(name: str, module: nn.Module) -> str:
    size = getattr(module, "output_size", None)
    return f"{name!r} ({type(module).__name__}{'' if size is None else f'({size})'})"


def find_global_pool(model: nn.Module) -> str:
    """The module name of the model's global average pool: the outermost nn.AdaptiveAvgPool2d(1) or timm
    SelectAdaptivePool2d('avg'). Deeper ones (squeeze-and-excitation blocks, the pool inside timm's) are not it."""
    found = [(name, m) for name, m in model.named_modules() if name and _is_global_avg_pool(m)]
    if not found:
        others = ", ".join(_describe(name, m) for name, m in model.named_modules()
                           if name and "Pool" in type(m).__name__)
        raise GlobalPoolError(
            "no global average pool module (nn.AdaptiveAvgPool2d(1) or timm's SelectAdaptivePool2d('avg')) in "
            f"{type(model).__name__}; found {others or 'no pooling modules at all'}. A pool written in forward() "
            "(e.g. F.adaptive_avg_pool2d or x.mean) cannot be replaced: put a FlexPool2d there by hand")
    depth = min(name.count(".") for name, _ in found)
    outermost = [(name, m) for name, m in found if name.count(".") == depth]
    if len(outermost) > 1:
        names = ", ".join(_describe(name, m) for name, m in outermost)
        raise GlobalPoolError(f"several global average pools in {type(model).__name__}: {names}; replace the "
                              f"right one by hand with FlexPool2d or LazyFlexPool2d")
    return outermost[0][0]


@contextlib.contextmanager
def _dry_run(model: nn.Module):
    """Eval mode and no autograd (BatchNorm statistics stay as they are), then every module's mode as before."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def replace_global_pool(model: nn.Module, example_input: torch.Tensor, softmax: bool = False) -> nn.Module:
    """Swap the model's global average pool for a FlexPool2d sized by a forward pass of `example_input` (one
    image is enough; its resolution is the one the model will be trained at). Returns the model, changed in place.

    The FlexPool gives the output shape the pool gave (N x C x 1 x 1, or N x C where timm's pool flattens), so
    at initialisation the model computes what it computed before. Raises GlobalPoolError if there is no pool
    module, or more than one, or if it does not run exactly once in a forward pass.
    """
    name = find_global_pool(model)
    pool = model.get_submodule(name)
    inputs = []
    handle = pool.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    try:
        with _dry_run(model):
            model(example_input)
    finally:
        handle.remove()
    if len(inputs) != 1:
        raise GlobalPoolError(f"the global pool {name!r} ran {len(inputs)} times in one forward pass; a FlexPool "
                              f"needs exactly one feature map size")
    x = inputs[0]
    if x.dim() != 4:
        raise GlobalPoolError(f"the global pool {name!r} gets input of shape {tuple(x.shape)}, not N x C x H x W")
    flattens = isinstance(getattr(pool, "flatten", None), nn.Flatten)  # timm's SelectAdaptivePool2d(flatten=True)
    flex = FlexPool2d(*x.shape[1:], softmax=softmax, keepdim=not flattens).to(x.device, x.dtype)
    flex.train(pool.training)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, flex)
    return model


def sac_head(pool: str, num_classes: int) -> nn.Sequential:
    """A Simple Auxiliary Classifier (paper Sec. 3.2): global pool, then one linear layer, both sized by the
    first forward pass. pool: "flex" | "flex-softmax" | "avg"."""
    if pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(num_classes))
    if pool in ("flex", "flex-softmax"):
        return nn.Sequential(LazyFlexPool2d(softmax=pool == "flex-softmax"), nn.LazyLinear(num_classes))
    raise ValueError(f"unknown pool {pool!r}; choose from flex, flex-softmax, avg")


def sac_loss(outputs, labels: torch.Tensor, weights) -> torch.Tensor:
    """Eq. 3: sum over heads of lambda_i * cross-entropy, the heads' logits in order, the model's own last."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} heads but {len(weights)} loss weights")
    return sum(w * F.cross_entropy(h.float(), labels) for w, h in zip(weights, outputs))


class SACModel(nn.Module):
    """A backbone with SAC heads on named stages (forward hooks, so any backbone whose stages are modules).

    forward returns a tuple: the heads' logits in the order of `stages`, then the backbone's own output.
    """

    def __init__(self, model: nn.Module, stages, weights, num_classes: int, pool: str = "flex"):
        super().__init__()
        self.stages = list(stages)
        self.weights = tuple(weights)
        if len(self.weights) != len(self.stages) + 1:
            raise ValueError(f"{len(self.stages)} stages need {len(self.stages) + 1} loss weights (one per SAC "
                             f"head, then the model's own), got {len(self.weights)}")
        self.model = model
        self.heads = nn.ModuleList(sac_head(pool, num_classes) for _ in self.stages)
        self._features = None  # stage outputs, collected only during our own forward
        for i, stage in enumerate(self.stages):
            try:
                module = model.get_submodule(stage)
            except AttributeError:
                top = ", ".join(name for name, _ in model.named_children())
                raise ValueError(f"no module {stage!r} in {type(model).__name__}; stages are module names, "
                                 f"e.g. {top}") from None
            module.register_forward_hook(functools.partial(self._keep, i))

    def _keep(self, i: int, module, args, output) -> None:
        if self._features is not None:
            self._features[i] = output

    def forward(self, x: torch.Tensor) -> tuple:
        self._features = {}
        try:
            logits = self.model(x)
            features = self._features
        finally:
            self._features = None
        missing = [stage for i, stage in enumerate(self.stages) if i not in features]
        if missing:
            raise RuntimeError(f"stages {missing} did not run in the forward pass")
        return (*(head(features[i]) for i, head in enumerate(self.heads)), logits)

    def loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 3 with this model's weights."""
        return sac_loss(outputs, labels, self.weights)


def with_sac(model: nn.Module, stages, weights, num_classes: int, pool: str = "flex") -> SACModel:
    """SAC heads on the named stages of `model` (e.g. ["layer2", "layer3"] of a torchvision ResNet), Eq. 3
    `weights` one per head with the model's own last, e.g. (0.1, 0.2, 0.7). The heads are lazy: run one forward
    pass before building the optimizer."""
    return SACModel(model, stages, weights, num_classes, pool)
