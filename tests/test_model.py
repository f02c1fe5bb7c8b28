import pytest
import torch
import torch.nn.functional as F
import torchvision

from repro.config import RunConfig
from repro.datasets import DATASETS
from repro.models import resnet20
from repro.pooling import FlexPool2d, regularization
from repro.train import loss_fn


@pytest.mark.parametrize("softmax", [False, True])
def test_flexpool_equals_average_pooling_at_init(softmax):
    x = torch.randn(5, 8, 7, 7)
    pool = FlexPool2d(8, 7, 7, softmax=softmax)
    torch.testing.assert_close(pool(x), x.mean(dim=(2, 3)))


def test_flexpool_weights_get_gradients_and_are_used():
    pool = FlexPool2d(4, 3, 3)
    x = torch.randn(2, 4, 3, 3)
    pool(x).sum().backward()
    torch.testing.assert_close(pool.weight.grad, x.sum(0))
    with torch.no_grad():
        pool.weight.zero_()
        pool.weight[:, 0, 0] = 1.0
    torch.testing.assert_close(pool(x), x[:, :, 0, 0])


def test_regularization_is_eq2():
    pool = FlexPool2d(3, 2, 2)
    with torch.no_grad():
        pool.weight.copy_(torch.arange(12.0).view(3, 2, 2) / 10)
    expected = sum((sum(pool.weight[c].flatten().tolist()) - 1) ** 2 for c in range(3))
    assert pool.regularization().item() == pytest.approx(expected)
    assert FlexPool2d(3, 2, 2).regularization().item() == pytest.approx(0.0, abs=1e-12)


def test_model_regularization_sums_every_flexpool_including_sac_heads():
    model = resnet20(10, pool="flex", sac=True)
    pools = [m for m in model.modules() if isinstance(m, FlexPool2d)]
    assert [tuple(p.weight.shape) for p in pools] == [(64, 8, 8), (16, 32, 32), (32, 16, 16)]
    with torch.no_grad():
        for p in pools:
            p.weight.mul_(2)
    # each channel's weights now sum to 2: (2 - 1)^2 per channel
    assert regularization(model).item() == pytest.approx(64 + 16 + 32, rel=1e-5)


def test_wrong_input_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(N, 64, 8, 8\).*\(2, 64, 7, 7\)"):
        FlexPool2d(64, 8, 8)(torch.randn(2, 64, 7, 7))


def test_drop_in_for_torchvision_resnet_avgpool():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    reference = model(x)
    model.avgpool = FlexPool2d(512, 2, 2, keepdim=True)
    torch.testing.assert_close(model(x), reference)
    model(x).sum().backward()
    assert model.avgpool.weight.grad.abs().sum() > 0


def test_resnet20_parameter_count():
    # He et al. 2016 report 0.27M for ResNet-20 (option A shortcuts, 10 classes)
    assert sum(p.numel() for p in resnet20(10).parameters()) == 269_722
    # FlexPool adds C*H*W = 64*8*8 weights
    assert sum(p.numel() for p in resnet20(10, pool="flex").parameters()) == 269_722 + 64 * 64


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashion_mnist", "tiny_imagenet"])
@pytest.mark.parametrize("pool", ["avg", "flex", "flex-softmax"])
def test_output_shapes(dataset, pool):
    info = DATASETS[dataset]
    x = torch.randn(2, info.in_channels, info.size, info.size)
    model = resnet20(info.num_classes, info.in_channels, info.size, pool=pool, dropout=0.25)
    assert model(x).shape == (2, info.num_classes)
    heads = resnet20(info.num_classes, info.in_channels, info.size, pool=pool, sac=True)(x)
    assert [h.shape for h in heads] == [(2, info.num_classes)] * 3
    if pool == "flex":
        last = 7 if dataset == "fashion_mnist" else 8
        assert model.pool.weight.shape == (64, last, last)


def test_dropout_sits_before_the_classifier():
    model = resnet20(10, dropout=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.stem(x)
    for stage in model.stages:
        features = stage(features)
    pooled = model.pool(features)
    torch.testing.assert_close(model(x), model.fc(pooled))
    model.dropout.train()  # only the dropout in training mode: BatchNorm stays fixed
    torch.manual_seed(0)
    expected = model.fc(F.dropout(pooled, 0.25))
    torch.manual_seed(0)
    torch.testing.assert_close(model(x), expected)


def test_sac_loss_is_eq3_with_configurable_weights():
    torch.manual_seed(0)
    heads = tuple(torch.randn(6, 10) for _ in range(3))
    labels = torch.randint(0, 10, (6,))
    ce = [F.cross_entropy(h, labels).item() for h in heads]
    model = resnet20(10, pool="avg", sac=True)
    paper = loss_fn(heads, labels, model, RunConfig(sac=True))
    assert paper.item() == pytest.approx(0.1 * ce[0] + 0.2 * ce[1] + 0.7 * ce[2], rel=1e-6)
    authors = loss_fn(heads, labels, model, RunConfig(sac=True, sac_weights=(0.01, 0.11, 0.88)))
    assert authors.item() == pytest.approx(0.01 * ce[0] + 0.11 * ce[1] + 0.88 * ce[2], rel=1e-6)


def test_loss_adds_weighted_regulariser():
    model = resnet20(10, pool="flex")
    with torch.no_grad():
        model.pool.weight.mul_(3)  # every channel sums to 3: 64 * (3 - 1)^2 = 256
    logits, labels = torch.randn(4, 10), torch.arange(4)
    loss = loss_fn(logits, labels, model, RunConfig(pool="flex", reg=0.5))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item() + 0.5 * 256, rel=1e-5)
