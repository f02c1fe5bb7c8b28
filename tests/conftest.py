"""Tiny data sets written in the real on-disk formats, so torchvision's and the project's real readers run; the
SLURM tests only on request, on a local cluster."""

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from tests.helpers import N_TEST, N_TRAIN, ROOT, SLURM_OPT_IN

SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests marked slurm install SLURM (apt-get, as root) and start its daemons on this machine: a researcher's
    plain `pytest` must not, so they run only when asked (CI asks, in .ci/run)."""
    if os.environ.get(SLURM_OPT_IN) == "1":
        return
    skip = pytest.mark.skip(reason=f"installs and starts a local SLURM cluster: run with {SLURM_OPT_IN}=1")
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(skip)


def _labels(n: int, classes: int) -> list[int]:
    return [i % classes for i in range(n)]


def write_cifar(root: Path, name: str, monkeypatch) -> None:
    """CIFAR python pickles; torchvision's md5 table is pointed at these files, so its integrity check runs."""
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(0)

    def batch(filename, n, first=0):
        labels = [(first + i) % classes for i in range(n)]
        data = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: labels}
        (folder / filename).write_bytes(pickle.dumps(data))
        return [filename, hashlib.md5((folder / filename).read_bytes()).hexdigest()]

    per_batch = N_TRAIN // len(cls.train_list)
    train = [batch(f, per_batch, i * per_batch) for i, (f, _) in enumerate(cls.train_list)]
    test = [batch(f, N_TEST) for f, _ in cls.test_list]
    meta_key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(classes)]}))
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    meta_md5 = hashlib.md5((folder / cls.meta["filename"]).read_bytes()).hexdigest()
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path) -> None:
    """IDX files, gzipped as distributed."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)))))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.array(_labels(n, 10)))))


def write_tiny_imagenet(root: Path, classes: int = 4, per_class: int = 5) -> None:
    """The tiny-imagenet-200/ layout with 64x64 JPEGs."""
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)

    def jpeg(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG")

    for w in wnids:
        for k in range(per_class):
            jpeg(base / "train" / w / "images" / f"{w}_{k}.JPEG")
    rows = []
    for k in range(classes * 2):
        jpeg(base / "val" / "images" / f"val_{k}.JPEG")
        rows.append(f"val_{k}.JPEG\t{wnids[k % classes]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """All four data sets, tiny, in their real formats."""
    root = tmp_path / "data"
    write_cifar(root, "cifar10", monkeypatch)
    write_cifar(root, "cifar100", monkeypatch)
    write_fashion_mnist(root)
    write_tiny_imagenet(root)
    return root


@pytest.fixture
def real_fashion_mnist(tmp_path) -> Path:
    """The real Fashion-MNIST from ../shared/data, laid out as torchvision expects; skips when absent."""
    source = SHARED_DATA / "fashion-mnist"
    if not (source / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real Fashion-MNIST not found in {source}")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in source.glob("*.gz"):
        (raw / f.name).symlink_to(f)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def slurm():
    """A running local cluster (slurm/local-cluster.sh); started here (and stopped afterwards) unless it already
    ran."""
    script = ROOT / "slurm" / "local-cluster.sh"
    state = subprocess.run([script, "status"], check=False, capture_output=True, text=True).stdout
    was_running = "slurmctld: running" in state
    if not was_running:
        if os.geteuid() != 0:
            pytest.skip("the local SLURM needs root to install and start")
        if not shutil.which("sbatch") and not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and there is no apt-get to install it")
        started = subprocess.run([script, "start"], check=False, capture_output=True, text=True, timeout=900)
        assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not was_running:
        subprocess.run([script, "stop"], check=True, timeout=300)
