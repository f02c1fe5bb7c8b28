import gzip
import shutil

import pytest
import torch

from repro import data, train
from tests.helpers import N_TEST, N_TRAIN


@pytest.mark.parametrize("name,channels,size,classes", [
    ("cifar10", 3, 32, 10), ("cifar100", 3, 32, 100), ("fashion_mnist", 1, 28, 10),
])
def test_torchvision_loaders_read_real_formats(data_root, name, channels, size, classes):
    images, labels = data.load(name, data_root, "train")
    assert images.shape == (N_TRAIN, channels, size, size) and images.dtype == torch.uint8
    assert labels.tolist() == [i % classes for i in range(N_TRAIN)]
    test_images, _ = data.load(name, data_root, "test")
    assert test_images.shape == (N_TEST, channels, size, size)


def test_cifar_pixels_are_laid_out_channel_first(data_root):
    import pickle

    batch = pickle.loads((data_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    images, _ = data.load("cifar10", data_root, "test")
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values of a 32x32 image
    assert torch.equal(images[3, 1].flatten(), torch.as_tensor(batch["data"][3, 1024:2048]))


def test_tiny_imagenet_layout_resized_and_cached(data_root):
    images, labels = data.load("tiny_imagenet", data_root, "train")
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert sorted(labels.tolist()) == sorted([i for i in range(4) for _ in range(5)])
    test_images, test_labels = data.load("tiny_imagenet", data_root, "test")
    assert test_images.shape == (8, 3, 32, 32)
    # val_annotations.txt gives val_k the class k % 4 (the files are read in name order)
    assert test_labels.tolist() == [k % 4 for k in range(8)]
    cache = data_root / "tiny-imagenet-200" / "flexpool-cache" / "train-32.npz"
    assert cache.exists()
    again, _ = data.load("tiny_imagenet", data_root, "train")
    assert torch.equal(again, images)


def test_missing_data_names_path_and_remedy(tmp_path):
    for name in ("cifar10", "cifar100", "fashion_mnist", "tiny_imagenet"):
        with pytest.raises(data.DataError, match=f"{tmp_path}.*--download"):
            data.load(name, tmp_path, "train")


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset 'mnist'"):
        data.load("mnist", "", "train")


def test_corrupt_fashion_mnist_gz(data_root):
    gz = data_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:50])
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load("fashion_mnist", data_root, "train")


def flip_middle(path) -> None:
    """Corrupt a file as a bad disk or a broken copy does: its middle third's bytes inverted, its length kept."""
    content = bytearray(path.read_bytes())
    third = len(content) // 3
    content[third:2 * third] = bytes(b ^ 0xFF for b in content[third:2 * third])
    path.write_bytes(bytes(content))


def test_gz_with_bytes_flipped_is_named_corrupt_and_leaves_no_file(data_root):
    raw = data_root / "FashionMNIST" / "raw"
    flip_middle(raw / "train-images-idx3-ubyte.gz")
    before = sorted(raw.iterdir())
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte.gz is corrupt or truncated .*; delete it"):
        data.load("fashion_mnist", data_root, "train")
    assert sorted(raw.iterdir()) == before  # no unpacked file, not even half of one


def test_corrupt_data_fails_a_run_in_one_line_without_a_record(tmp_path, data_root, capsys):
    """The run did not start: no failed record, which a launch would skip without --retry-failed."""
    gz = data_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    intact = gz.read_bytes()
    flip_middle(gz)
    argv = ["--dataset", "fashion_mnist", "--data-root", str(data_root), "--epochs", "1", "--batch-size", "8",
            "--lr", "0.01", "--results-dir", str(tmp_path / "results"), "--wandb", "disabled"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fashion_mnist: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "train-images-idx3-ubyte.gz is corrupt or truncated" in err and "delete it" in err
    assert not list((tmp_path / "results").rglob("*.json"))
    gz.write_bytes(intact)
    assert train.main(argv) == 0


def test_two_launches_unpacking_at_once_both_load(data_root, monkeypatch):
    """Another launch unpacks the same files while this one is writing them: both must end with intact files."""
    copy = shutil.copyfileobj
    raw = data_root / "FashionMNIST" / "raw"

    def another_launch_unpacks_meanwhile(source, target, *args):
        monkeypatch.setattr(shutil, "copyfileobj", copy)
        assert len(data.load("fashion_mnist", data_root, "train")[1]) == N_TRAIN
        copy(source, target, *args)

    monkeypatch.setattr(shutil, "copyfileobj", another_launch_unpacks_meanwhile)
    images, labels = data.load("fashion_mnist", data_root, "train")
    assert images.shape == (N_TRAIN, 1, 28, 28) and len(labels) == N_TRAIN
    assert not [p for p in raw.iterdir() if p.suffix not in ("", ".gz")]


def test_truncated_idx_file(data_root):
    raw = data_root / "FashionMNIST" / "raw"
    unpacked = gzip.decompress((raw / "train-images-idx3-ubyte.gz").read_bytes())
    (raw / "train-images-idx3-ubyte").write_bytes(unpacked[:100])
    with pytest.raises(data.DataError, match="corrupt"):
        data.load("fashion_mnist", data_root, "train")


def test_corrupt_cifar_batch(data_root):
    batch = data_root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(data.DataError, match="cifar10"):
        data.load("cifar10", data_root, "train")


def test_corrupt_jpeg_is_named(data_root):
    bad = data_root / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(data.DataError, match="val_3.JPEG"):
        data.load("tiny_imagenet", data_root, "test")


def test_validation_split_is_fixed_and_disjoint():
    train, val = data.train_val_split(1000, 0.1)
    assert len(val) == 100 and len(train) == 900
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(data.train_val_split(1000, 0.1)[1], val)


def test_augment_keeps_shape_and_flips(monkeypatch):
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    rand = torch.tensor([[0.3, 0.1, 0.9, 0.2], [0.7, 0.8, 0.5, 0.5]])  # sample 0 is flipped, 1 is not
    assert data.augment(x, rand).shape == x.shape
    monkeypatch.setattr(data, "MAX_ZOOM", 1.0)  # no scaling: every sample is the image or its mirror
    out = data.augment(x, rand)
    torch.testing.assert_close(out[0], x[0].flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-4, rtol=0)
