"""FlexPool and SAC in other people's networks (torchvision, timm, your own): one call each.

    model = replace_global_pool(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    model = with_sac(model, ["layer2", "layer3"], weights=(0.1, 0.2, 0.7), num_classes=1000)
    model(torch.randn(1, 3, 224, 224))              # sizes the SAC heads; build the optimizer after this
    loss = model.loss(model(x), y)                  # Eq. 3 (+ reg * pooling.regularization(model) for Eq. 2)

Torch only: timm's pooling module is recognised by its class name, so timm is not needed to import this.
A global pool written in forward() (DenseNet's F.adaptive_avg_pool2d, MNASNet's and ShuffleNet's x.mean) is found
by tracing forward() with torch.fx; such a model comes back as a torch.fx.GraphModule.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from repro.models import SimpleAuxiliaryClassifier, sac_loss
from repro.pooling import FlexPool2d


class GlobalPoolError(ValueError):
    """The model's global average pool cannot be found or replaced; the message is one line saying why."""


def _is_global_avg_pool(module: nn.Module) -> bool:
    if type(module).__name__ == "SelectAdaptivePool2d":  # timm's; pool_type "avg" holds an AdaptiveAvgPool2d
        module = module.pool
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _keepdim(pool: nn.Module) -> bool:
    """Whether the pool module gives N x C x 1 x 1, not N x C as timm's SelectAdaptivePool2d(flatten=True) does."""
    return not isinstance(getattr(pool, "flatten", None), nn.Flatten)


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
            f"{type(model).__name__}; found {others or 'no pooling modules at all'}")
    depth = min(name.count(".") for name, _ in found)
    outermost = [(name, m) for name, m in found if name.count(".") == depth]
    if len(outermost) > 1:
        raise _several(model, [_describe(name, m) for name, m in outermost])
    return outermost[0][0]


def _several(model: nn.Module, descriptions: list[str]) -> GlobalPoolError:
    return GlobalPoolError(f"several global average pools in {type(model).__name__}: {', '.join(descriptions)}; "
                           f"replace the right one by hand with FlexPool2d or LazyFlexPool2d")


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


class _ForwardTracer(fx.Tracer):
    """Traces the model's own forward() only. Its submodules stay single calls: they keep their forward hooks
    (SAC's), their own control flow does not stop tracing, and pools inside them (squeeze-and-excitation)
    are not candidates."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced forward() and keeps what each node gives as a tensor on the meta device: its shape and
    dtype, no data. (fx's ShapeProp prints a traceback where a trace does not run; here that only means falling
    back to the pool modules.)"""

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        node.meta["value"] = result.to("meta") if isinstance(result, torch.Tensor) else None
        return result


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip()}".splitlines()[0]


def _untraceable(model: nn.Module, what: str, error: Exception) -> GlobalPoolError:
    return GlobalPoolError(f"torch.fx {what} forward() of {type(model).__name__} to look for a pool written there "
                           f"({_reason(error)})")


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _ForwardTracer().trace(model)
    except Exception as error:  # whatever stops symbolic tracing (TraceError, TypeError, ...) has one meaning here
        raise _untraceable(model, "cannot trace", error) from error
    return fx.GraphModule(model, graph, type(model).__name__)


def _trace_with_shapes(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    traced = _trace(model)
    try:
        with _dry_run(model):
            _ShapeRecorder(traced).run(*inputs)
    except Exception as error:  # the trace does not run as forward() does, e.g. a layer writes into a list it gets
        raise _untraceable(model, "cannot run its trace of", error) from error
    return traced


def _mean_arguments(input, dim=None, keepdim=False, *, dtype=None):
    """torch.mean's and Tensor.mean's signature, to read a traced call's arguments by name."""
    return input, dim, keepdim, dtype


def _adaptive_arguments(input, output_size):
    return input, output_size


def _arguments(signature, node: fx.Node) -> tuple | None:
    """The traced call's arguments through `signature`, or None where they do not fit it (e.g. numpy's axis=)."""
    try:
        return signature(*node.args, **node.kwargs)
    except TypeError:
        return None


def _module_pool(node: fx.Node, traced: fx.GraphModule) -> tuple[fx.Node, bool] | None:
    module = traced.get_submodule(node.target)
    if not _is_global_avg_pool(module):
        return None
    return node.all_input_nodes[0], _keepdim(module)


def _adaptive_pool(node: fx.Node) -> tuple[fx.Node, bool] | None:
    x, size = _arguments(_adaptive_arguments, node) or (None, None)
    return (x, True) if size in (1, (1, 1), [1, 1]) else None


def _mean_pool(node: fx.Node) -> tuple[fx.Node, bool] | None:
    x, dim, keepdim, dtype = _arguments(_mean_arguments, node) or (None, None, False, None)
    dims = dim if isinstance(dim, (tuple, list)) else [dim]
    over_h_and_w = all(isinstance(d, int) for d in dims) and sorted(d % 4 for d in dims) == [2, 3]
    return (x, bool(keepdim)) if over_h_and_w and dtype is None else None


def _shape(node) -> tuple | None:
    """The shape of what a node gave in the dry run if that was a tensor, else None."""
    value = node.meta.get("value") if isinstance(node, fx.Node) else None
    return None if value is None else tuple(value.shape)


def _as_global_pool(node: fx.Node, traced: fx.GraphModule) -> tuple[fx.Node, bool] | None:
    """(its input, keepdim) if `node` averages an N x C x H x W map over all of H and W, else None: a mean over
    channels, over H alone or of a 3-D tensor is none."""
    if node.op == "call_module":
        found = _module_pool(node, traced)
    elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        found = _adaptive_pool(node)
    elif (node.op, node.target) in (("call_method", "mean"), ("call_function", torch.mean)):
        found = _mean_pool(node)
    else:
        return None
    shape = _shape(found[0]) if found else None
    return found if shape is not None and len(shape) == 4 else None


def _is_feature_map(node: fx.Node) -> bool:
    """A computed N x C x H x ... tensor with more than one position: what convolutions work on, and what a
    global pool ends."""
    shape = _shape(node)
    return node.op.startswith("call") and shape is not None and len(shape) >= 3 and math.prod(shape[2:]) > 1


def _describe_node(node: fx.Node, traced: fx.GraphModule) -> str:
    if node.op == "call_module":
        return _describe(node.target, traced.get_submodule(node.target))
    target = node.target
    written = f"Tensor.{target}" if node.op == "call_method" else f"{target.__module__}.{target.__name__}"
    return f"{node.name!r} ({written})"


def _final_pool(traced: fx.GraphModule) -> fx.Node | None:
    """The global average pool in forward() (shapes from the dry run) that feeds the output: after it, nothing
    gives a feature map any more, only flatten, dropout, linear layers and the like. A pool whose result goes back
    into a feature map, like squeeze-and-excitation's, is not it. None where forward() has no global pool."""
    nodes = list(traced.graph.nodes)
    pools = [n for n in nodes if _as_global_pool(n, traced)]
    last_map = max((i for i, n in enumerate(nodes) if _is_feature_map(n)), default=-1)
    final = [n for n in nodes[last_map + 1:] if n in pools]
    if pools and not final:
        last = nodes[last_map]
        raise GlobalPoolError(
            f"no global average pool in forward() of {type(traced).__name__} feeds its output: after "
            f"{', '.join(_describe_node(n, traced) for n in pools)}, {last.name!r} still gives a "
            f"{' x '.join(map(str, _shape(last)))} feature map (a pool inside a block, like squeeze-and-excitation's, "
            f"is not the model's global pool); put a FlexPool2d there by hand")
    if len(final) > 1:
        raise _several(traced, [_describe_node(n, traced) for n in final])
    return final[0] if final else None


def _reads_training(model: nn.Module, traced: fx.GraphModule) -> bool:
    """Whether forward() reads self.training (e.g. F.dropout(x, training=self.training)): its traced copy would
    keep the mode it was traced in, whatever .train() and .eval() say later."""
    model.training = not model.training
    try:
        return _trace(model).code != traced.code
    finally:
        model.training = not model.training


def _replace_traced_pool(model: nn.Module, traced: fx.GraphModule, node: fx.Node, inputs: tuple,
                         softmax: bool) -> fx.GraphModule:
    name = type(model).__name__
    if _reads_training(model, traced):
        raise GlobalPoolError(f"forward() of {name} reads self.training, which a torch.fx trace would freeze; put "
                              f"a FlexPool2d there by hand")
    if hasattr(traced, "flexpool"):
        raise GlobalPoolError(f"{name} has an attribute 'flexpool' already, the name its FlexPool2d would get")
    x, keepdim = _as_global_pool(node, traced)
    flex = FlexPool2d(*_shape(x)[1:], softmax=softmax, keepdim=keepdim)
    flex.to(inputs[0].device, x.meta["value"].dtype).train(model.training)
    traced.add_submodule("flexpool", flex)
    with traced.graph.inserting_before(node):
        node.replace_all_uses_with(traced.graph.call_module("flexpool", (x,)))
    traced.graph.erase_node(node)
    traced.recompile()
    return traced


def _replace_pool_module(model: nn.Module, name: str, inputs: tuple, softmax: bool) -> nn.Module:
    pool = model.get_submodule(name)
    pooled = []
    handle = pool.register_forward_hook(lambda module, args, output: pooled.append(args[0]))
    try:
        with _dry_run(model):
            model(*inputs)
    finally:
        handle.remove()
    if len(pooled) != 1:
        raise GlobalPoolError(f"the global pool {name!r} ran {len(pooled)} times in one forward pass; a FlexPool "
                              f"needs exactly one feature map size")
    x = pooled[0]
    if x.dim() != 4:
        raise GlobalPoolError(f"the global pool {name!r} gets input of shape {tuple(x.shape)}, not N x C x H x W")
    flex = FlexPool2d(*x.shape[1:], softmax=softmax, keepdim=_keepdim(pool)).to(x.device, x.dtype)
    flex.train(pool.training)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, flex)
    return model


def _pool_module_name(model: nn.Module, not_in_forward: str) -> str:
    try:
        return find_global_pool(model)
    except GlobalPoolError as error:
        raise GlobalPoolError(f"{error}. {not_in_forward}") from None


def _kind(value) -> str:
    """What a wrong argument is, for its one-line error: 'list', 'None', 'tuple (Tensor, int)', ..."""
    if isinstance(value, tuple):
        return f"tuple ({', '.join(type(v).__name__ for v in value)})"
    return "None" if value is None else type(value).__name__


def _instead_of_a_module(model) -> str:
    name = getattr(model, "__name__", "")
    if isinstance(model, type):
        return f"the class {name}: pass a model made of it, e.g. {name}(...)"
    if callable(model):  # a model builder, or a lambda
        return f"the function {name}: pass the model it makes, or a module that computes it"
    return _kind(model)


def _checked_inputs(model, example_input) -> tuple:
    """forward()'s positional inputs, once the model has run on them; GlobalPoolError, one line, where the model is
    no module or does not run on them, so that no error further on is taken for a property of the model."""
    if not isinstance(model, nn.Module):
        raise GlobalPoolError(f"the model must be a torch.nn.Module, got {_instead_of_a_module(model)}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise GlobalPoolError(f"example_input must be a tensor (e.g. one image, 1 x C x H x W, at the resolution the "
                              f"model trains at), or a tuple of them for a forward() that takes several; got "
                              f"{_kind(example_input)}")
    try:
        with _dry_run(model):
            model(*inputs)
    except Exception as error:  # noqa: BLE001 - whatever forward() raises says what it wanted instead
        shapes = ", ".join(" x ".join(map(str, x.shape)) or "a scalar" for x in inputs)
        raise GlobalPoolError(f"{type(model).__name__} does not run on the example input of shape {shapes} "
                              f"({_reason(error)})") from None
    return inputs


def replace_global_pool(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
                        softmax: bool = False) -> nn.Module:
    """Swap the model's global average pool for a FlexPool2d sized by a forward pass of `example_input` (one
    image is enough; its resolution is the one the model will be trained at; a tuple of tensors for a forward()
    that takes several inputs).

    forward() is traced with torch.fx (its submodules not traced into) and the global average pool that feeds the
    output is taken: a pool module (nn.AdaptiveAvgPool2d(1), timm's SelectAdaptivePool2d('avg')) is swapped in
    place and the model itself returned; a pool written as F.adaptive_avg_pool2d(x, 1) or a mean over dims 2, 3
    is replaced in the traced copy, a torch.fx.GraphModule that shares the model's layers, which is returned: use
    it instead of the model. Where forward() cannot be traced or has no global pool, the outermost pool module is
    swapped. The FlexPool gives the output shape the pool gave (N x C x 1 x 1 or N x C), so at initialisation the
    model computes what it computed before. Raises GlobalPoolError, one line, where there is no such pool, or
    several, or where the swap would not be faithful: a pool module that does not run exactly once in a forward
    pass, a forward() that reads self.training (a trace would freeze the mode); and where `model` is no module or
    does not run on `example_input`.
    """
    inputs = _checked_inputs(model, example_input)
    try:
        traced = _trace_with_shapes(model, inputs)
    except GlobalPoolError as untraceable:
        return _replace_pool_module(model, _pool_module_name(model, str(untraceable)), inputs, softmax)
    node = _final_pool(traced)
    if node is None:
        name = _pool_module_name(model, "forward() itself has no global average pool either (F.adaptive_avg_pool2d("
                                        "x, 1) or a mean over dims 2, 3 of an N x C x H x W map)")
        return _replace_pool_module(model, name, inputs, softmax)
    if node.op == "call_module":
        return _replace_pool_module(model, node.target, inputs, softmax)
    return _replace_traced_pool(model, traced, node, inputs, softmax)


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
        self.heads = nn.ModuleList(SimpleAuxiliaryClassifier(pool, num_classes) for _ in self.stages)
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
