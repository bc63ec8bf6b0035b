"""Datasets (digits, Fashion-MNIST, image folders), the model-range conversions and the
class-grouped sequence sampler."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arflowbench.data import fashion_mnist
from arflowbench.data.base import DATA_ENV, ImageSet, to_model_range, to_uint8
from arflowbench.data.fashion_mnist import FashionMNIST, read_idx
from arflowbench.data.imagefolder import ImageFolder
from arflowbench.data.sequences import ClassGroupedSampler, sample_images
from arflowbench.errors import ConfigError, DataError
from arflowbench.plugins import DATASET


# ---------------------------------------------------------------------------------- digits
def test_digits_geometry_and_splits(digits):
    train, test = digits.load("train"), digits.load("test")
    for split in (train, test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 8, 8)
        assert split.num_classes == digits.num_classes == 10
        assert set(split.labels.tolist()) == set(range(10))
    assert (digits.channels, digits.image_size) == (1, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert digits.load("train") is train  # cached


def test_digits_train_and_test_partition_the_whole_set(digits):
    """Every one of sklearn's 1,797 images lands in exactly one split (as a multiset of
    (pixels, label) rows, since the raw set contains duplicate images)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()

    def rows(images: np.ndarray, labels: np.ndarray) -> Counter:
        return Counter((img.tobytes(), int(y)) for img, y in zip(images, labels))

    def back_to_raw(split: ImageSet) -> np.ndarray:
        # 0..16 was scaled by 255/16 and rounded; steps of ~16 make the inverse exact
        return (split.images[:, 0].double() * 16 / 255).round().numpy().astype(np.int64)

    train, test = digits.load("train"), digits.load("test")
    assert len(train) + len(test) == len(bunch.images) == 1797
    raw = rows(bunch.images.astype(np.int64), bunch.target)
    assert rows(back_to_raw(train), train.labels.numpy()) + \
        rows(back_to_raw(test), test.labels.numpy()) == raw


def test_unknown_split_is_a_data_error(digits):
    with pytest.raises(DataError, match="unknown split 'valid'"):
        digits.load("valid")


def test_imageset_validates_its_tensors():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(DataError, match="one entry per image"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2)


def test_model_range_round_trip():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = to_model_range(x)
    assert y.dtype == torch.float32
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    assert torch.equal(to_uint8(y), x)
    # out-of-range model outputs are clamped, not wrapped around
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_sample_images_is_seeded(digits_train):
    a = sample_images(digits_train, 16, torch.Generator().manual_seed(3))
    b = sample_images(digits_train, 16, torch.Generator().manual_seed(3))
    assert a[0].shape == (16, 1, 8, 8) and a[1].shape == (16,)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------------------------- sequences
def _toy_set(counts: list[int]) -> ImageSet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.uint8).reshape(-1, 1, 1, 1)  # image i has value i
    return ImageSet(images.expand(-1, 1, 2, 2).contiguous(), labels, len(counts))


def test_class_grouped_sampler_same_class(digits_train):
    sampler = ClassGroupedSampler(digits_train, 5, same_class=True)
    idx, labels = sampler.indices(64, torch.Generator().manual_seed(0))
    assert idx.shape == (64, 5) and labels.shape == (64,)
    for row, y in zip(idx, labels):
        assert len(set(row.tolist())) == 5
        assert set(digits_train.labels[row].tolist()) == {int(y)}
    assert len(set(labels.tolist())) > 1  # classes are drawn, not fixed
    x, y = sampler.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 5, 1, 8, 8) and x.dtype == torch.uint8 and y.shape == (8,)


def test_class_grouped_sampler_any_class(digits_train):
    sampler = ClassGroupedSampler(digits_train, 5, same_class=False)
    idx, labels = sampler.indices(64, torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 5 for row in idx)
    assert torch.equal(labels, digits_train.labels[idx[:, 0]])  # label of the first image
    mixed = sum(len(set(digits_train.labels[row].tolist())) > 1 for row in idx)
    assert mixed > 32  # with 10 classes almost every row mixes classes


def test_class_grouped_sampler_is_deterministic(digits_train):
    sampler = ClassGroupedSampler(digits_train, 3)
    a = sampler.indices(10, torch.Generator().manual_seed(7))
    b = sampler.indices(10, torch.Generator().manual_seed(7))
    c = sampler.indices(10, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_class_grouped_sampler_skips_empty_classes_and_checks_S():
    data = _toy_set([5, 3, 0, 4])  # class 2 has no images
    sampler = ClassGroupedSampler(data, 3)
    _, labels = sampler.indices(200, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == {0, 1, 3}
    with pytest.raises(ConfigError) as exc:
        ClassGroupedSampler(data, 4)
    assert "images_per_sequence=4" in str(exc.value) and "(3 images)" in str(exc.value)
    # without the class constraint only the dataset size limits S
    assert ClassGroupedSampler(data, 12, same_class=False).indices(2, torch.Generator())[0].shape == (2, 12)
    with pytest.raises(ConfigError, match="13 > dataset size 12"):
        ClassGroupedSampler(data, 13, same_class=False)
    with pytest.raises(ConfigError, match=">= 1"):
        ClassGroupedSampler(data, 0)


# ---------------------------------------------------------------------------------- fashion-mnist
def _write_idx(path: Path, array: np.ndarray, *, truncate: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.uint8).tobytes()
    data = header + (body[:-truncate] if truncate else body)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_fashion(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    """Tiny Fashion-MNIST-shaped IDX files with random content."""
    rng = np.random.default_rng(0)
    raw = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img_file, lbl_file = fashion_mnist.FILES[split]
        raw[split] = rng.integers(1, 256, (n, 28, 28))  # no zeros: the border must come from padding
        _write_idx(root / img_file, raw[split])
        _write_idx(root / lbl_file, np.arange(n) % 10)
    return raw


def _check_padded(images: torch.Tensor, raw: torch.Tensor, pad_to: int) -> None:
    lo = (pad_to - 28) // 2
    assert images.shape == (len(raw), 1, pad_to, pad_to)
    assert torch.equal(images[:, 0, lo:lo + 28, lo:lo + 28], raw)
    border = images.clone()
    border[:, :, lo:lo + 28, lo:lo + 28] = 0
    assert int(border.count_nonzero()) == 0


@pytest.fixture
def no_fashion_data(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(DATA_ENV, str(empty))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "missing")
    return empty


def test_fashion_mnist_missing_data_says_what_to_install(no_fashion_data):
    ds = FashionMNIST()
    with pytest.raises(DataError) as exc:
        ds.check_available()
    assert "dataset-fashion-mnist" in str(exc.value) and str(no_fashion_data) in str(exc.value)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        ds.load("train")


def test_fashion_mnist_from_env_dir_is_padded_and_centered(no_fashion_data):
    raw = _fake_fashion(no_fashion_data)
    ds = FashionMNIST()
    train = ds.load("train")
    _check_padded(train.images, torch.from_numpy(raw["train"]).to(torch.uint8), 32)
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5] and train.num_classes == 10
    assert len(ds.load("test")) == 4
    odd = FashionMNIST(FashionMNIST.Config(pad_to=31))  # odd padding: one more column after
    _check_padded(odd.load("test").images, torch.from_numpy(raw["test"]).to(torch.uint8), 31)
    assert DATASET.validate_options("fashion-mnist", {}) == {"pad_to": 32, "flip": False}
    with pytest.raises(ConfigError, match="pad_to"):
        DATASET.validate_options("fashion-mnist", {"pad_to": 20})


def test_fashion_mnist_data_root_wins_over_env(no_fashion_data, tmp_path):
    root = tmp_path / "explicit" / "fashion-mnist"  # the sub-folder layout is found too
    root.mkdir(parents=True)
    _fake_fashion(root, n_train=3)
    assert len(FashionMNIST(data_root=tmp_path / "explicit").load("train")) == 3


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip_and_truncation(tmp_path, suffix):
    arr = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    _write_idx(tmp_path / f"ok{suffix}", arr)
    assert read_idx(tmp_path / f"ok{suffix}").tolist() == arr.tolist()
    _write_idx(tmp_path / f"cut{suffix}", arr, truncate=7)
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(tmp_path / f"cut{suffix}")
    (tmp_path / "junk").write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "junk")


def test_read_idx_truncated_gzip_stream(tmp_path):
    _write_idx(tmp_path / "full.gz", np.arange(2000).reshape(20, 100))
    blob = (tmp_path / "full.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")


def test_read_idx_truncated_header(tmp_path):
    (tmp_path / "hdr").write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0]))
    with pytest.raises(DataError, match="hdr"):
        read_idx(tmp_path / "hdr")


@pytest.mark.skipif(not all((fashion_mnist.DEBIAN_DIR / f).exists()
                            for pair in fashion_mnist.FILES.values() for f in pair),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_full_dataset(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    ds = FashionMNIST()
    train, test = ds.load("train"), ds.load("test")
    assert (len(train), len(test)) == (60000, 10000)
    raw = read_idx(fashion_mnist.DEBIAN_DIR / fashion_mnist.FILES["test"][0])
    _check_padded(test.images, raw, 32)
    assert train.images.shape == (60000, 1, 32, 32)
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    # the 28x28 content really uses its own border rows somewhere (so the check above is not vacuous)
    assert int(train.images[:, 0, 2, :].max()) > 0


# ---------------------------------------------------------------------------------- imagefolder
COLORS = {"apple": (255, 0, 0), "banana": (0, 0, 255), "cherry": (0, 255, 0)}


def _write_pngs(folder: Path, color: tuple[int, int, int], n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        # non-square on purpose: the loader center-crops then resizes
        Image.new("RGB", (14, 10), color).save(folder / f"img{i:02d}.png")


def test_imagefolder_flat_layout_split_deterministically(tmp_path):
    counts = {"banana": 5, "apple": 9, "cherry": 4}
    for cls, n in counts.items():
        _write_pngs(tmp_path / "imgs" / cls, COLORS[cls], n)
    (tmp_path / "imgs" / "banana" / "notes.txt").write_text("not an image")
    cfg = ImageFolder.Config(root="imgs", image_size=8, channels=3, test_every=4)
    ds = ImageFolder(cfg, data_root=tmp_path)  # relative root is taken under data_root
    ds.check_available()
    train, test = ds.load("train"), ds.load("test")
    assert ds.num_classes == 3 and train.num_classes == 3
    assert train.images.shape[1:] == (3, 8, 8) and train.images.dtype == torch.uint8
    names = sorted(counts)  # class ids follow the sorted folder names
    for cid, cls in enumerate(names):
        n_test = len(range(0, counts[cls], 4))
        assert int((test.labels == cid).sum()) == n_test
        assert int((train.labels == cid).sum()) == counts[cls] - n_test
        pixels = train.images[train.labels == cid]
        expected = torch.tensor(COLORS[cls], dtype=torch.uint8)[None, :, None, None]
        assert torch.equal(pixels, expected.expand_as(pixels))
    again = ImageFolder(cfg, data_root=tmp_path).load("test")
    assert torch.equal(again.labels, test.labels) and torch.equal(again.images, test.images)


def test_imagefolder_train_test_layout_grayscale(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("apple", "banana"):
            _write_pngs(tmp_path / split / cls, COLORS[cls], n)
    ds = DATASET.get("imagefolder")(ImageFolder.Config(root=str(tmp_path), image_size=4, channels=1))
    train, test = ds.load("train"), ds.load("test")
    assert train.images.shape == (6, 1, 4, 4) and test.images.shape == (4, 1, 4, 4)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert ds.num_classes == 2 and (ds.channels, ds.image_size) == (1, 4)
    # red and blue have different luminance: the classes stay distinguishable in grayscale
    assert int(train.images[0, 0, 0, 0]) != int(train.images[-1, 0, 0, 0])


def test_imagefolder_test_split_missing_a_class_keeps_train_ids(tmp_path):
    for cls in ("apple", "banana", "cherry"):
        _write_pngs(tmp_path / "train" / cls, COLORS[cls], 2)
    for cls in ("apple", "cherry"):  # no banana in test
        _write_pngs(tmp_path / "test" / cls, COLORS[cls], 1)
    ds = ImageFolder(ImageFolder.Config(root=str(tmp_path), image_size=4))
    assert ds.load("train").labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.load("test").labels.tolist() == [0, 2]


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(ImageFolder.Config(root=str(tmp_path / "nope"))).check_available()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(ImageFolder.Config(root=str(tmp_path / "empty"))).check_available()
    _write_pngs(tmp_path / "one" / "apple", COLORS["apple"], 1)  # the only image goes to test
    with pytest.raises(DataError, match="no images for split 'train'"):
        ImageFolder(ImageFolder.Config(root=str(tmp_path / "one"))).load("train")
