"""Dataset plugins: whole splits held in memory as uint8 tensors.

A dataset plugin is built as ``Dataset(config, data_root)`` and returns an `ImageSet` per split.
Images are ``(N, C, H, W)`` uint8 in [0, 255]; models see them through `to_model_range`.
The datasets here are small (digits, Fashion-MNIST, a user's folder), so holding a split in
memory keeps sampling exact and deterministic without loader workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from arflowbench.errors import DataError
from arflowbench.plugins import PluginBase

DATA_ENV = "ARFLOWBENCH_DATA"


@dataclass(frozen=True)
class ImageSet:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class Dataset(PluginBase):
    """Base class of dataset plugins."""

    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, config=None, data_root: str | os.PathLike | None = None):
        self.config = config if config is not None else self.Config()
        self.data_root = Path(data_root) if data_root else None
        self._cache: dict[str, ImageSet] = {}

    # Geometry, known without loading (used to validate specs before any work).
    @property
    def channels(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise DataError with install instructions if the data is missing."""

    def load(self, split: str) -> ImageSet:
        """The split as an `ImageSet` (cached in memory)."""
        if split not in self.splits:
            raise DataError(f"{self.name}: unknown split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split]

    def _load(self, split: str) -> ImageSet:
        raise NotImplementedError


def resolve_root(data_root: Path | None, *defaults: Path) -> list[Path]:
    """Candidate directories: the explicit root, then $ARFLOWBENCH_DATA, then the defaults."""
    out = []
    if data_root is not None:
        out.append(Path(data_root))
    if os.environ.get(DATA_ENV):
        out.append(Path(os.environ[DATA_ENV]))
    out.extend(defaults)
    return out
