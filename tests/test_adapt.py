"""FlexPool and SAC in torchvision and timm models (repro.adapt), and the lazy FlexPool layer they build on."""

import copy
import io
import operator

import onnxruntime
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from repro.adapt import GlobalPoolError, replace_global_pool, with_sac
from repro.pooling import FlexPool2d, LazyFlexPool2d, regularization


class SqueezeExcitedMobileNet(nn.Module):
    """MobileNetV3's layers, whose squeeze-and-excitation blocks each hold an nn.AdaptiveAvgPool2d(1), under a
    global pool written in forward() as `pool` writes it."""

    def __init__(self, pool):
        super().__init__()
        mobilenet = torchvision.models.mobilenet_v3_small(num_classes=10)
        self.features, self.classifier, self.pool = mobilenet.features, mobilenet.classifier, pool

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(num_classes=10),
    "timm_resnet18": lambda: timm.create_model("resnet18", pretrained=False, num_classes=10),
    # global pools written in forward(): F.adaptive_avg_pool2d, x.mean([2, 3]) (twice)
    "densenet121": lambda: torchvision.models.densenet121(num_classes=10),
    "mnasnet0_5": lambda: torchvision.models.mnasnet0_5(num_classes=10),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
    "mobilenet_v3_small_mean": lambda: SqueezeExcitedMobileNet(lambda x: x.mean((2, 3))),
}
TRACED = {"densenet121", "mnasnet0_5", "shufflenet_v2_x0_5", "mobilenet_v3_small_mean"}
SIZES = (224, 64)
LAST_CHANNELS = {"resnet18": 512, "mobilenet_v3_small": 576, "efficientnet_b0": 1280, "convnext_tiny": 768,
                 "timm_resnet18": 512, "densenet121": 1024, "mnasnet0_5": 1280, "shufflenet_v2_x0_5": 1024,
                 "mobilenet_v3_small_mean": 576}


def build(name: str) -> nn.Module:
    """The model in eval mode with BatchNorm statistics of one random batch: with fresh ones (mean 0, var 1)
    MobileNetV3's and EfficientNet's outputs are ~1e-12, too small for a comparison to mean anything."""
    torch.manual_seed(0)
    model = MODELS[name]()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def flexpools(model: nn.Module) -> list[FlexPool2d]:
    return [m for m in model.modules() if isinstance(m, FlexPool2d)]


def assert_same_outputs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 1e-3
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module", params=list(MODELS))
def original(request):
    return request.param, build(request.param)


@pytest.mark.parametrize("size", SIZES)
def test_conversion_keeps_outputs_mode_and_batchnorm_statistics(original, size):
    name, reference = original
    model = copy.deepcopy(reference).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = replace_global_pool(model, torch.randn(1, 3, size, size))
    # a pool module is swapped in place; one written in forward() in a traced copy with the same layers
    assert converted is model if name not in TRACED else isinstance(converted, torch.fx.GraphModule)
    assert all(m.training for m in converted.modules())
    after = converted.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    [pool] = flexpools(converted)
    assert pool.weight.shape == (LAST_CHANNELS[name], size // 32, size // 32)
    x = torch.randn(2, 3, size, size)
    assert_same_outputs(converted.eval()(x), reference(x))


@pytest.mark.parametrize("size", SIZES)
def test_converted_model_trains_and_its_state_dict_reloads(original, size):
    _, reference = original
    example = torch.randn(1, 3, size, size)
    model = replace_global_pool(copy.deepcopy(reference), example, softmax=size == 64).train()  # both forms
    [pool] = flexpools(model)
    start = pool.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 2])
    for _ in range(2):
        loss = F.cross_entropy(model(x), y) + 1e-3 * regularization(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert not torch.equal(pool.weight, start)
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    fresh = replace_global_pool(copy.deepcopy(reference), example, softmax=size == 64)
    fresh.load_state_dict(torch.load(io.BytesIO(saved.getvalue())))
    torch.testing.assert_close(fresh(x), model.eval()(x))


@pytest.fixture(scope="module")
def small(request):
    model = replace_global_pool(build(request.param), torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        flexpools(model)[0].weight.uniform_(0, 0.5)  # no longer average pooling: the output depends on the layer
    return model


@pytest.mark.parametrize("small", ["mobilenet_v3_small"], indirect=True)
def test_compiled_model_gives_the_same_outputs(small):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(torch.compile(small)(x), small(x))


@pytest.mark.parametrize("small", ["mobilenet_v3_small", "shufflenet_v2_x0_5"], indirect=True)
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(small, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    torch.onnx.export(small, (x,), tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    [output] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_same_outputs(torch.from_numpy(output), small(x))


# --- global pools written in forward() ----------------------------------------------------------------------

class WrittenPool(nn.Module):
    """A convolution (and a max pool), then `pool` written in forward(): the model's output is what it gives."""

    def __init__(self, pool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.downsample = nn.MaxPool2d(2)
        self.pool = pool

    def forward(self, x):
        return self.pool(self.downsample(self.conv(x)))


WRITTEN = {
    "F.adaptive_avg_pool2d(x, 1)": lambda x: F.adaptive_avg_pool2d(x, 1),
    "F.adaptive_avg_pool2d(x, (1, 1))": lambda x: F.adaptive_avg_pool2d(x, (1, 1)),
    "torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)": lambda x: torch.flatten(F.adaptive_avg_pool2d(x, 1), 1),
    "x.mean((2, 3))": lambda x: x.mean((2, 3)),
    "x.mean([-2, -1], keepdim=True)": lambda x: x.mean([-2, -1], keepdim=True),
    "torch.mean(x, dim=(2, 3))": lambda x: torch.mean(x, dim=(2, 3)),
    "torch.mean(x, (3, 2), True)": lambda x: torch.mean(x, (3, 2), True),
}


@pytest.mark.parametrize("written", list(WRITTEN))
def test_global_pool_written_in_forward_becomes_a_flexpool_with_its_output_shape(written):
    model = WrittenPool(WRITTEN[written]).eval()
    x = torch.randn(2, 3, 22, 30)  # 10 x 14 after the convolution and the max pool
    with torch.no_grad():
        expected = model(x)
        converted = replace_global_pool(model, x[:1])
        [pool] = flexpools(converted)
        assert pool.weight.shape == (8, 10, 14)
        torch.testing.assert_close(converted(x), expected)  # the same shape: keepdim as it was
        pool.weight.uniform_()  # the FlexPool, not the old pool, now gives the output (flattened where it was)
        torch.testing.assert_close(converted(x), pool(model.downsample(model.conv(x))).reshape(expected.shape))


class SqueezeExcited(nn.Module):
    """Squeeze-and-excitation written in forward(): its pool is a global average pool too, but what it gives goes
    back into the feature map; `pool` is the model's own global pool."""

    def __init__(self, pool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.excite = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)
        self.pool = pool

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.excite(x.mean((2, 3), keepdim=True)))
        return self.fc(self.pool(x))


def test_the_pool_feeding_the_classifier_is_replaced_not_a_squeeze_and_excitation_pool():
    model = SqueezeExcited(lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)).eval()
    x = torch.randn(2, 3, 32, 32)
    converted = replace_global_pool(model, x[:1])
    [flex] = [node for node in converted.graph.nodes if node.target == "flexpool"]
    assert flex.args[0].target is operator.mul  # the excited map, so after the squeeze-and-excitation
    assert [node.target for node in converted.graph.nodes if node.op == "call_method"] == ["mean", "flatten"]  # SE's
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


def test_sac_heads_on_a_traced_model_hang_on_its_stages_by_their_names():
    model = replace_global_pool(MODELS["shufflenet_v2_x0_5"](), torch.randn(1, 3, 64, 64))
    model = with_sac(model, ["stage2", "stage3"], (0.1, 0.2, 0.7), num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    model(x)
    assert [p.weight.shape for p in flexpools(model)] == [(1024, 2, 2), (48, 8, 8), (96, 4, 4)]
    model.loss(model(x), y).backward()
    assert all(p.grad.abs().sum() > 0 for p in model.heads.parameters())


# --- models it cannot convert --------------------------------------------------------------------------------

class DropoutInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return F.dropout(self.conv(x).mean((2, 3)), 0.5, self.training)


class TwoPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool_a = nn.AdaptiveAvgPool2d(1)
        self.pool_b = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.conv(x)
        return self.pool_a(x) + self.pool_b(x)


class SharedPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)) + self.pool(self.conv(x[:, :, ::2, ::2]))


@pytest.mark.parametrize("model, message", [
    (WrittenPool(lambda x: x.mean(1)),  # over channels
     r"no global average pool module .* found 'downsample' \(MaxPool2d\)\. forward\(\) itself has no global"),
    (WrittenPool(lambda x: F.adaptive_avg_pool2d(x, (1, 2))), r"forward\(\) itself has no global average pool"),
    (WrittenPool(lambda x: x.mean((1, 2, 3))), r"forward\(\) itself has no global average pool"),
    (WrittenPool(lambda x: x.mean(3).mean(2)), r"forward\(\) itself has no global average pool"),
    (WrittenPool(lambda x: x.mean((2, 3)) if x.sum() > 0 else x.amax((2, 3))),
     r"'downsample' \(MaxPool2d\)\. torch\.fx cannot trace forward\(\) of WrittenPool .*\(TraceError: symbolic"),
    (WrittenPool(lambda x: x.mean((2, 3)) + F.adaptive_avg_pool2d(x, 1).flatten(1)),
     r"several global average pools in WrittenPool: 'mean' \(Tensor\.mean\), 'adaptive_avg_pool2d' \(torch\."),
    (SqueezeExcited(lambda x: x.amax((2, 3))),
     r"in forward\(\) of SqueezeExcited feeds its output: after 'mean' .*, 'mul' still gives a 1 x 8 x 30 x 30"),
    (SqueezeExcitedMobileNet(lambda x: x.amax((2, 3))),
     r"several global .* 'features\.1\.block\.1\.avgpool' .*\. forward\(\) itself has no global average pool"),
    (DropoutInForward(), r"forward\(\) of DropoutInForward reads self\.training"),
    (torchvision.models.vgg11(), r"found .*'avgpool' \(AdaptiveAvgPool2d\(\(7, 7\)\)\)"),
    (TwoPools(), r"several global average pools .*'pool_a' .*'pool_b'"),
    (SharedPool(), r"'pool' ran 2 times in one forward pass"),
])
def test_unconvertible_model_gets_one_line_saying_why(model, message):
    with pytest.raises(GlobalPoolError, match=message) as error:
        replace_global_pool(model, torch.randn(1, 3, 32, 32))
    assert "\n" not in str(error.value)
    assert not flexpools(model)


class TwoInputs(nn.Module):
    """An image and a per-image scale, both required; its global pool a module or written in forward()."""

    def __init__(self, pool):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, 8, 3), pool, nn.Linear(8, 2)

    def forward(self, x, scale):
        return self.fc(self.pool(self.conv(x) * scale).flatten(1))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(1), lambda x: x.mean((2, 3))], ids=["module", "forward"])
def test_a_model_with_several_inputs_takes_a_tuple_of_examples(pool):
    torch.manual_seed(0)
    model = TwoInputs(pool).eval()
    x, scale = torch.randn(2, 3, 16, 16), torch.tensor([2.0, 3.0]).view(2, 1, 1, 1)
    expected = model(x, scale)
    converted = replace_global_pool(model, (x[:1], scale[:1]))
    assert len(flexpools(converted)) == 1
    assert_same_outputs(converted(x, scale), expected)


@pytest.mark.parametrize("model, example, message", [
    ("resnet18", torch.randn(1, 3, 32, 32), r"the model must be a torch\.nn\.Module, got str$"),
    (lambda x: x.mean((2, 3)), torch.randn(1, 3, 32, 32), r"got the function <lambda>: pass the model it makes"),
    (torchvision.models.resnet18, torch.randn(1, 3, 32, 32), r"got the function resnet18: pass the model it makes"),
    (torchvision.models.ResNet, torch.randn(1, 3, 32, 32), r"got the class ResNet: pass a model made of it"),
    (torchvision.models.resnet18(), [torch.randn(1, 3, 32, 32)], r"example_input must be a tensor .*; got list$"),
    (torchvision.models.resnet18(), None, r"example_input must be a tensor .*; got None$"),
    (torchvision.models.resnet18(), (torch.randn(1, 3, 32, 32), 2), r"; got tuple \(Tensor, int\)$"),
    (torchvision.models.resnet18(), torch.randn(1, 1, 32, 32),
     r"^ResNet does not run on the example input of shape 1 x 1 x 32 x 32 \(RuntimeError: .* to have 3 channels"),
    (torchvision.models.densenet121(), torch.randn(1, 1, 32, 32),  # its pool is written in forward()
     r"^DenseNet does not run on the example input of shape 1 x 1 x 32 x 32 \(RuntimeError: .* to have 3 chann"),
    (TwoInputs(nn.AdaptiveAvgPool2d(1)), torch.randn(1, 3, 32, 32),
     r"TwoInputs does not run .* \(TypeError: .*missing 1 required positional argument: 'scale'\)$"),
])
def test_a_wrong_model_or_example_input_gets_one_line_naming_it(model, example, message):
    with pytest.raises(GlobalPoolError, match=message) as error:
        replace_global_pool(model, example)
    assert "\n" not in str(error.value)


# --- SAC heads -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [MODELS["resnet18"], MODELS["timm_resnet18"]], ids=["torchvision", "timm"])
def test_sac_heads_on_the_three_last_stages_of_resnet18(make):
    """Three heads as in the paper: SAC on layer2 and layer3, the model's own (after layer4) last."""
    torch.manual_seed(0)
    model = with_sac(make(), ["layer2", "layer3"], (0.1, 0.2, 0.7), num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    model(x)  # sizes the lazy heads
    assert [p.weight.shape for p in flexpools(model)] == [(128, 8, 8), (256, 4, 4)]
    outputs = model(x)
    assert [o.shape for o in outputs] == [(2, 10)] * 3
    loss = model.loss(outputs, y)
    expected = sum(w * F.cross_entropy(o, y) for w, o in zip((0.1, 0.2, 0.7), outputs))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.heads.parameters())
    # the first head's loss alone reaches the stages up to layer2, and no further
    model.zero_grad()
    F.cross_entropy(model(x)[0], y).backward()
    assert model.model.layer2[0].bn2.weight.grad.abs().sum() > 0  # not conv1: timm zero-inits this bn's weight
    assert model.model.layer3[0].conv1.weight.grad is None


def test_sac_model_state_dict_loads_into_a_fresh_one_before_its_first_forward():
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    model = with_sac(MODELS["resnet18"](), ["layer3"], (0.3, 0.7), num_classes=10, pool="flex-softmax").eval()
    expected = model(x)
    fresh = with_sac(MODELS["resnet18"](), ["layer3"], (0.3, 0.7), num_classes=10, pool="flex-softmax").eval()
    fresh.load_state_dict(model.state_dict())
    for a, b in zip(fresh(x), expected):
        torch.testing.assert_close(a, b)


def test_sac_with_average_pool_heads():
    model = with_sac(MODELS["resnet18"](), ["layer1"], (0.5, 0.5), num_classes=10, pool="avg")
    outputs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outputs] == [(2, 10), (2, 10)] and not flexpools(model)


@pytest.mark.parametrize("stages, weights, message", [
    (["layer9"], (0.5, 0.5), r"no module 'layer9' in ResNet; .*e\.g\. conv1, bn1, .*layer4"),
    (["layer2", "layer3"], (0.3, 0.7), r"2 stages need 3 loss weights"),
])
def test_sac_bad_stages_or_weights_get_one_line(stages, weights, message):
    with pytest.raises(ValueError, match=message) as error:
        with_sac(MODELS["resnet18"](), stages, weights, num_classes=10)
    assert "\n" not in str(error.value)


# --- LazyFlexPool2d ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("keepdim", [False, True])
def test_lazy_flexpool_takes_its_shape_from_the_first_input_and_becomes_a_flexpool(softmax, keepdim):
    pool = LazyFlexPool2d(softmax=softmax, keepdim=keepdim)
    assert "softmax" in repr(pool)
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(pool(x), x.mean(dim=(2, 3), keepdim=keepdim))
    assert type(pool) is FlexPool2d
    torch.testing.assert_close(pool.weight, FlexPool2d(5, 3, 4, softmax=softmax).weight)
    assert regularization(nn.Sequential(pool)).item() == pytest.approx(0.0, abs=1e-6)
    torch.optim.SGD(pool.parameters(), lr=0.1)  # the optimizer comes after the dry forward


def test_lazy_flexpool_state_dict_round_trips_also_into_an_uninitialised_one():
    trained = LazyFlexPool2d(keepdim=True)
    x = torch.randn(2, 5, 3, 4)
    trained(x)
    with torch.no_grad():
        trained.weight.uniform_()
    expected = trained(x)
    fresh = LazyFlexPool2d(keepdim=True)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh(x), expected)  # the loaded weights, not reset by the first forward
    sized = FlexPool2d(5, 3, 4, keepdim=True)
    sized.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(sized(x), expected)


def test_lazy_flexpool_refuses_a_later_input_of_another_shape():
    pool = LazyFlexPool2d()
    pool(torch.randn(2, 5, 3, 4))
    with pytest.raises(ValueError, match=r"\(N, 5, 3, 4\).*\(2, 5, 4, 4\)"):
        pool(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got \(2, 5\)"):
        LazyFlexPool2d()(torch.randn(2, 5))
