"""Data sets by name as uint8 tensors, a fixed validation split, and batched augmentation on the device.

Decoded images live as one uint8 N x C x H x W tensor on the training device; normalisation, flips and scaling
run there a batch at a time, so the training loop has no per-sample Python and no DataLoader.
"""

from __future__ import annotations

import functools
import gzip
import multiprocessing
import os
import shutil
import urllib.error
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.utils import download_and_extract_archive

from repro import records
from repro.config import default_data_root
from repro.datasets import DATASETS, DatasetInfo

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
VAL_SPLIT_SEED = 20230101  # fixed, not the run's seed: every run and trial tunes on the same held-out images
MAX_ZOOM = 1.25  # random scaling: zoom in by up to 25% (the paper says "scaling" without a range)


class DataError(RuntimeError):
    """Missing, truncated or corrupt data: the message names the path and what to do."""


def load(name: str, root: str | os.PathLike = "", split: str = "train", download: bool = False):
    """(images uint8 N x C x H x W, labels int64 N) of a data set's "train" or "test" split, on the CPU."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose train or test")
    root = Path(root or default_data_root())
    if DATASETS[name].torchvision:
        return torchvision_dataset(name, root, split, download)
    return OWN_READERS[name](root, split, download)


def prepare(name: str, root: str | os.PathLike = "", download: bool = False) -> None:
    """Check that both splits load (downloading them if asked) before runs are queued for a data set.

    Doing it once up front also builds the Tiny ImageNet cache once, not in every job at the same time.
    """
    for split in ("train", "test"):
        load(name, root, split, download)


def synthetic(root: Path, split: str, download: bool, n_train: int = 2048, n_test: int = 512):
    """Ten classes, each a fixed smooth random pattern plus noise: learnable in an epoch or two, for tests and
    benchmarks that must not depend on files (no root, nothing to download)."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    prototypes = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(42)), size=32,
                               mode="bilinear", align_corners=False)
    n = n_train if split == "train" else n_test
    labels = torch.randint(0, 10, (n,), generator=g)
    images = prototypes[labels] * 0.6 + torch.rand(n, 3, 32, 32, generator=g) * 0.4
    return (images * 255).round().to(torch.uint8), labels


# --- torchvision's data sets -------------------------------------------------------------------------------

def torchvision_dataset(name: str, root: Path, split: str, download: bool):
    info = DATASETS[name]
    cls, folder = getattr(torchvision.datasets, info.torchvision), info.folder
    if issubclass(cls, torchvision.datasets.MNIST):  # Fashion-MNIST, KMNIST, ...: distributed as .gz files
        _unpack_mnist_gz(name, cls, root / folder)
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except Exception as e:  # noqa: BLE001 - a truncated pickle or IDX file fails deep in numpy or pickle
        if download and download_failed(e):
            raise DataError(f"{name}: the download into {root / folder} failed ({one_line(e)}); check the "
                            f"network, or put the files there by hand") from None
        if "not found" in str(e):  # torchvision's "Dataset not found or corrupted": its md5 check failed
            raise DataError(f"{name}: no usable data under {root / folder} (missing, or failing its md5 "
                            f"check). Download it with `python -m repro.train --dataset {name} --download` or "
                            f"point --data-root / $FLEXPOOL_DATA at the folder holding {folder}/") from None
        raise DataError(f"{name}: corrupt data under {root / folder}: {type(e).__name__}: {e}. "
                        f"Delete the folder and download it again.") from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)  # MNIST N,H,W; CIFAR N,H,W,C
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def download_failed(error: Exception) -> bool:
    """torchvision's download gave up: no network, an HTTP error, or every mirror failed (FashionMNIST)."""
    return isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)) or \
        str(error).startswith("Error downloading")


def one_line(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def _unpack_mnist_gz(name: str, cls, raw: Path) -> None:
    """Unpack the .gz files that torchvision would otherwise only unpack as part of a download.

    No md5 check here: Debian's dataset-fashion-mnist holds the same data under another gzip header. gzip's own
    CRC and torchvision's IDX size checks catch a truncated or corrupt file instead.
    """
    for filename, _ in cls.resources:
        gz, out = raw / filename, raw / filename.removesuffix(".gz")
        if out.exists() or not gz.exists():
            continue
        # through a temp file of its own: two launches may unpack the same files at once
        records.atomic_write(out, functools.partial(_gunzip, name, gz))


def _gunzip(name: str, gz: Path, target) -> None:
    try:
        with gzip.open(gz, "rb") as source:
            shutil.copyfileobj(source, target)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # cut short, or bytes changed: bad CRC or deflate data
        raise DataError(f"{name}: {gz} is corrupt or truncated ({e}); delete it and download again") from None


# --- Tiny ImageNet (no torchvision class) ------------------------------------------------------------------

def tiny_imagenet(root: Path, split: str, download: bool):
    """The standard tiny-imagenet-200/ layout; val/ is the test split (the official test/ has no labels).

    Images are resized 64 -> 32 with antialiasing (paper Sec. 4) and cached as .npz beside the data, so the
    110k JPEGs are decoded once.
    """
    base = root / DATASETS["tiny_imagenet"].folder
    if not (base / "wnids.txt").exists():
        if not download:
            raise DataError(f"tiny_imagenet: {base}/wnids.txt not found. Download it with "
                            f"`python -m repro.train --dataset tiny_imagenet --download` or unpack "
                            f"tiny-imagenet-200.zip into {root}")
        try:
            download_and_extract_archive(TINY_IMAGENET_URL, str(root), md5=TINY_IMAGENET_MD5)
        except Exception as e:  # noqa: BLE001 - network, HTTP, checksum or zip errors
            raise DataError(f"tiny_imagenet: the download into {root} failed ({one_line(e)}); check the network, "
                            f"or unpack tiny-imagenet-200.zip there by hand") from None
    cache = base / "flexpool-cache" / f"{split}-32.npz"
    if cache.exists():
        try:
            with np.load(cache) as f:
                return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
        except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt from the JPEGs
            print(f"tiny_imagenet: ignoring unreadable cache {cache} ({e}); decoding the JPEGs again")
    files, labels = _tiny_imagenet_files(base, split)
    images = _decode_resize(files)
    # through a temp file of its own: two launches may build the cache at once
    records.atomic_write(cache, lambda f: np.savez(f, images=images.numpy(), labels=labels.numpy()))
    return images, labels


def _tiny_imagenet_files(base: Path, split: str):
    wnids = (base / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files = sorted((base / "train").glob("*/images/*.JPEG"))
        labels = [index[f.parent.parent.name] for f in files]
    else:
        annotations = base / "val" / "val_annotations.txt"
        if not annotations.exists():
            raise DataError(f"tiny_imagenet: {annotations} not found; the val/ split is incomplete")
        rows = sorted(line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip())
        files = [base / "val" / "images" / name for name, _ in rows]
        labels = [index[wnid] for _, wnid in rows]
    if not files:
        raise DataError(f"tiny_imagenet: no images found under {base / split}")
    return files, torch.tensor(labels, dtype=torch.int64)


def _decode_resize_one(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            # PIL's bilinear filter widens its support when shrinking: antialiased, as the paper resizes
            small = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as e:
        raise DataError(f"tiny_imagenet: cannot decode {path} ({e}); the file is corrupt or truncated") from None
    return np.asarray(small).transpose(2, 0, 1)


def _decode_resize(files: list[Path]) -> torch.Tensor:
    # forkserver: forking a process whose torch thread pools are running can deadlock the children
    workers = min(len(os.sched_getaffinity(0)), 16)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        decoded = list(pool.map(_decode_resize_one, files, chunksize=256))
    return torch.from_numpy(np.stack(decoded))


# The readers of the data sets that torchvision has no class for (repro.datasets: torchvision "").
OWN_READERS = {"tiny_imagenet": tiny_imagenet, "synthetic": synthetic}


# --- splits and batches on the device ----------------------------------------------------------------------

def train_val_split(n: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and held-out validation images: a fixed permutation, the same for every run."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def mean_std(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's per-channel mean and std in uint8 units, on the device. A loop makes them once, before it
    starts: a host-to-device copy every step would stall it."""
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * 255
    return mean, torch.tensor(info.std, device=device).view(1, -1, 1, 1) * 255


def normalize(images: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 -> float, standardised per channel by `stats` = mean_std(...) on the images' device."""
    mean, std = stats
    return (images.float() - mean) / std


AUGMENT_DRAWS = 4  # uniform numbers per image: zoom, flip, horizontal and vertical position


def augment(x: torch.Tensor, rand: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and random scaling (zoom in by 1..MAX_ZOOM, at a random position) for a whole
    float batch in one affine resampling. `rand` (N x AUGMENT_DRAWS, uniform in [0, 1)) is drawn by the caller,
    so the same numbers can be drawn ahead for a whole epoch."""
    n = x.shape[0]
    inv_zoom = 1 / (1 + rand[:, 0] * (MAX_ZOOM - 1))
    flip = torch.where(rand[:, 1] < 0.5, -1.0, 1.0)
    room = 1 - inv_zoom  # the window may move this far (normalised coordinates) and stay inside the image
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = inv_zoom * flip
    theta[:, 1, 1] = inv_zoom
    theta[:, 0, 2] = (rand[:, 2] * 2 - 1) * room
    theta[:, 1, 2] = (rand[:, 3] * 2 - 1) * room
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
