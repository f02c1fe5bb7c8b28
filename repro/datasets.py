"""The data sets, one entry each: everything the suite says about a data set, from its loader's torchvision class
to its label in a table. Adding one is adding an entry here (and, for a file format no entry has yet, its reader
in repro.data).

No torch here: the configuration, the launcher's plans and the analysis read it on machines without it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    label: str  # as tables, figures and the results page name it
    num_classes: int
    in_channels: int
    size: int  # the side of the square images the network sees
    mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    train_images: int  # in the whole training split: an epoch, for the bench's projections
    folder: str  # where its files lie under the data root
    torchvision: str = ""  # the torchvision.datasets class that reads (and downloads) it; "" = repro.data's own
    paper_name: str = ""  # what the paper calls it, where that differs from the label
    in_tables: bool = True  # a row of the paper's Tables 1 and 2


DATASETS = {  # the paper's row order
    "cifar10": DatasetInfo("CIFAR10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50_000,
                           "cifar-10-batches-py", torchvision="CIFAR10"),
    "fashion_mnist": DatasetInfo("Fashion-MNIST", 10, 1, 28, (0.2860,), (0.3530,), 60_000, "FashionMNIST/raw",
                                 torchvision="FashionMNIST"),
    "cifar100": DatasetInfo("CIFAR100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50_000,
                            "cifar-100-python", torchvision="CIFAR100"),
    # Resized from 64x64 to 32x32, as the paper trains it.
    "tiny_imagenet": DatasetInfo("Tiny ImageNet", 200, 3, 32, (0.4807, 0.4485, 0.3980), (0.2538, 0.2455, 0.2601),
                                 100_000, "tiny-imagenet-200", paper_name="ImageNet"),
    # Generated, no files: for tests and benchmarks that must not depend on a download.
    "synthetic": DatasetInfo("synthetic", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 2048, "",
                             in_tables=False),
}


def table_datasets() -> tuple[str, ...]:
    """The data sets of the paper's tables, in its row order. A function, so an entry added at run time counts."""
    return tuple(name for name, info in DATASETS.items() if info.in_tables)
