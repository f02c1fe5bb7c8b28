"""Train torchvision's ResNet-18 with FlexPool (one replace_global_pool call) on Fashion-MNIST, beside the
unconverted network with its average pool, on a CPU: `python -m repro.finetune --help`.

Both runs start from the same random initialisation (no pretrained weights are downloaded) and see the same
batches, so the pool is the only difference. Fashion-MNIST's 28x28 grey images are upsampled to 64x64 and
repeated to 3 channels: the network stays exactly torchvision's, and its 32x downsampling leaves a 2x2 map
for FlexPool to weigh (at 28 px it would be 1x1, where FlexPool only rescales channels).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

from repro import data, records
from repro.adapt import replace_global_pool
from repro.config import Parser, default_data_root
from repro.datasets import DATASETS

SIZE = 64
LEARNING_RATE = 0.05
EVAL_BATCH = 500


def inputs(images: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 N x 1 x 28 x 28 -> normalised float N x 3 x SIZE x SIZE (`stats`: data.mean_std, made once a loop)."""
    x = data.normalize(images, stats)
    return F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)


def make_model(seed: int, flex: bool, softmax: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    return replace_global_pool(model, torch.zeros(1, 3, SIZE, SIZE), softmax) if flex else model


def train(model, images, labels, steps: int, batch_size: int, seed: int) -> None:
    """SGD with Nesterov momentum and a one-cycle schedule; batches drawn at random with a seeded generator."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    stats = data.mean_std(DATASETS["fashion_mnist"], images.device)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(inputs(images[idx], stats)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    stats = data.mean_std(DATASETS["fashion_mnist"], images.device)
    correct = sum((model(inputs(images[i:i + EVAL_BATCH], stats)).argmax(1) == labels[i:i + EVAL_BATCH]).sum().item()
                  for i in range(0, len(labels), EVAL_BATCH))
    return correct / len(labels)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    return records.command(lambda: compare(argv), bad_input=(data.DataError,))


def compare(argv) -> int:
    parser = Parser(
        prog="python -m repro.finetune",
        description="Train torchvision's ResNet-18 on Fashion-MNIST twice on the CPU, from the same random "
                    "initialisation and with the same batches: once as it is (global average pool) and once "
                    "converted by repro.adapt.replace_global_pool (FlexPool). Prints both test accuracies. "
                    f"Images are upsampled to {SIZE}x{SIZE} and repeated to 3 channels. A few minutes on 2 cores "
                    "at the defaults.")
    parser.add_argument("--data-root", default=default_data_root(),
                        help="folder holding FashionMNIST/raw/ (default: $FLEXPOOL_DATA, else ./data)")
    parser.add_argument("--steps", type=positive, default=300, help="training steps per model (default 300)")
    parser.add_argument("--batch-size", type=positive, default=12, help="images per step (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default 0)")
    parser.add_argument("--softmax", action="store_true",
                        help="FlexPool's softmax form (the authors' code) instead of the plain weights")
    parser.add_argument("--test-images", type=int, default=2000, metavar="N",
                        help="evaluate on the first N test images, the same for both models (default 2000; "
                             "0 = all 10000)")
    args = parser.parse_args(argv)
    images, labels = data.load("fashion_mnist", args.data_root, "train")
    test_images, test_labels = data.load("fashion_mnist", args.data_root, "test")
    if args.test_images:
        test_images, test_labels = test_images[:args.test_images], test_labels[:args.test_images]
    pool = "FlexPool, softmax form" if args.softmax else "FlexPool"
    print(f"ResNet-18 (torchvision, random init) on Fashion-MNIST at {SIZE} px: {args.steps} steps of "
          f"{args.batch_size}, seed {args.seed}, {len(test_labels)} test images")
    for name, flex in (("average pool (unconverted)", False), (f"{pool} (converted)", True)):
        started = time.perf_counter()
        model = make_model(args.seed, flex, args.softmax)
        train(model, images, labels, args.steps, args.batch_size, args.seed)
        result = accuracy(model, test_images, test_labels)
        print(f"  {name:<34} test accuracy {result:.2%}   ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
