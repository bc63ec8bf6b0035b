"""Fashion-MNIST (60k train + 10k test, 28x28, 10 classes), padded to 32x32 by default.

Read from the original IDX .gz files in, in order: ``--data-root``, ``$ARFLOWBENCH_DATA``,
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
With 32x32 and patch 4 an image is 64 tokens: the paper's ImageNet-128-latent geometry.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from pydantic import Field

from arflowbench.data.base import Dataset, ImageSet, PixelConfig, resolve_root
from arflowbench.errors import DataError, DataNotFoundError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NATIVE_SIZE = 28


def read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file (optionally gzipped) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: truncated or corrupt file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    count = 1
    for d in dims:
        count *= d
    if len(body) != count:
        raise DataError(f"{path}: truncated IDX file ({len(body)} of {count} bytes)")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


class FashionMNIST(Dataset):
    """Zalando's Fashion-MNIST, zero-padded from 28x28 to `pad_to` (default 32)."""

    name = "fashion-mnist"
    version = 1

    class Config(PixelConfig):
        pad_to: int = Field(32, ge=NATIVE_SIZE, description="output size after zero padding")

    channels = 1
    num_classes = 10

    @property
    def image_size(self) -> int:
        return self.config.pad_to

    def _find_dir(self) -> Path:
        for d in resolve_root(self.data_root, DEBIAN_DIR):
            for cand in (d, d / "fashion-mnist", d / "FashionMNIST" / "raw"):
                if all((cand / f).exists() for pair in FILES.values() for f in pair):
                    return cand
        tried = ", ".join(str(p) for p in resolve_root(self.data_root, DEBIAN_DIR))
        raise DataNotFoundError(
            f"fashion-mnist data not found (looked in {tried}): install the Debian package "
            "`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), or download the four "
            "IDX .gz files (e.g. torchvision.datasets.FashionMNIST(root, download=True)) and pass "
            "--data-root or set $ARFLOWBENCH_DATA"
        )

    def check_available(self) -> None:
        self._find_dir()

    @classmethod
    def looked_for(cls, data_root: Path | None = None) -> list[str]:
        return [str(p) for p in resolve_root(data_root, DEBIAN_DIR)]

    def _load(self, split: str) -> ImageSet:
        root = self._find_dir()
        img_file, lbl_file = FILES[split]
        images = read_idx(root / img_file)  # (N, 28, 28)
        labels = read_idx(root / lbl_file).long()  # (N,)
        pad = self.config.pad_to - NATIVE_SIZE
        lo = pad // 2
        out = torch.zeros(len(images), 1, self.config.pad_to, self.config.pad_to, dtype=torch.uint8)
        out[:, 0, lo : lo + NATIVE_SIZE, lo : lo + NATIVE_SIZE] = images
        return ImageSet(out, labels, self.num_classes)
