"""Reading generated samples from .npz files and PNG folders, and rejecting bad ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arflowbench.errors import DataError
from arflowbench.metrics.evaluate import load_samples_file, load_samples_labels


def _rng_images(shape) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape,expected", [
    ((5, 8, 8, 3), (5, 3, 8, 8)),  # ADM: (N, H, W, C)
    ((5, 8, 8, 1), (5, 1, 8, 8)),
    ((5, 8, 8), (5, 1, 8, 8)),  # grayscale without a channel axis
])
def test_npz_layouts(tmp_path, shape, expected):
    arr = _rng_images(shape)
    path = tmp_path / "samples.npz"
    np.savez(path, arr)
    out = load_samples_file(path)
    assert out.dtype == torch.uint8 and tuple(out.shape) == expected
    back = out.permute(0, 2, 3, 1).numpy().reshape(arr.shape)
    assert np.array_equal(back, arr)


def test_npz_labels(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, _rng_images((4, 8, 8, 1)), np.array([0, 1, 2, 3]))
    assert load_samples_labels(path).tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "nolabels.npz", _rng_images((4, 8, 8, 1)))
    assert load_samples_labels(tmp_path / "nolabels.npz") is None


def test_npz_wrong_dtype(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match="dtype float32, expected uint8"):
        load_samples_file(path)


def test_npz_wrong_shape(tmp_path):
    path = tmp_path / "chw.npz"
    np.savez(path, _rng_images((4, 3, 8, 8)))  # channels-first
    with pytest.raises(DataError, match=r"shape \(4, 3, 8, 8\).*channels-first"):
        load_samples_file(path)
    np.savez(path, _rng_images((4, 8)))
    with pytest.raises(DataError, match=r"shape \(4, 8\)"):
        load_samples_file(path)


def test_npz_missing_array_and_file(tmp_path):
    path = tmp_path / "named.npz"
    np.savez(path, images=_rng_images((2, 8, 8)))
    with pytest.raises(DataError, match="no 'arr_0'"):
        load_samples_file(path)
    with pytest.raises(DataError, match="does not exist"):
        load_samples_file(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_samples_file(tmp_path / "junk.npz")


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_png_folder(tmp_path, mode, channels):
    arr = _rng_images((3, 8, 8, 3) if mode == "RGB" else (3, 8, 8))
    for i, a in enumerate(arr):
        Image.fromarray(a, mode=mode).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    out = load_samples_file(tmp_path)
    assert tuple(out.shape) == (3, channels, 8, 8)
    assert np.array_equal(out.permute(0, 2, 3, 1).numpy().reshape(arr.shape), arr)


def test_png_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no .png files"):
        load_samples_file(tmp_path)
    Image.fromarray(_rng_images((8, 8))).save(tmp_path / "a.png")
    Image.fromarray(_rng_images((9, 9))).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="differs"):
        load_samples_file(tmp_path)


def test_npy_file(tmp_path):
    arr = _rng_images((3, 8, 8))
    np.save(tmp_path / "s.npy", arr)
    assert tuple(load_samples_file(tmp_path / "s.npy").shape) == (3, 1, 8, 8)
    assert load_samples_labels(tmp_path / "s.npy") is None
