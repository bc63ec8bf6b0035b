"""Dataset plugins: whole splits held in memory as uint8 tensors.

A dataset plugin is built as ``Dataset(config, data_root)`` and returns an `ImageSet` per split.
Images are ``(N, C, H, W)`` uint8 in [0, 255]; models see them through `to_model_range`.
The datasets here are small (digits, Fashion-MNIST, a user's folder), so holding a split in
memory keeps sampling exact and deterministic without loader workers.

Float data (latents): samplers draw training items through ``split.take(idx, g)``; an `ImageSet`
returns its uint8 rows (and leaves `g` untouched), while a set that supplies model-space floats
(e.g. `data.latents.LatentSet`: labels, num_classes, ``__len__``, ``class_counts`` and ``take``)
returns float tensors, drawn from `g`, which `to_model_range` passes through unchanged. The way
back is `Dataset.decode`: model-space samples -> uint8 images of shape `Dataset.pixel_shape`
(``to_uint8`` by default; the latents dataset runs its VAE decoder).

Random horizontal flips (pixel datasets' ``flip`` option, off by default): the train split's
`ImageSet` mirrors each drawn image with probability `FLIP_P`, drawn from the training step's
generator in `take`, so a batch stays a pure function of (seed, step). Each image is drawn on its
own: the S images of an ARFlow sequence are flipped independently (as the public code picks the
cached latent of the image or of its flip per image). With ``flip = false`` `take` draws nothing
and batches are exactly those of a dataset without the option. Test splits are never flipped, and
``ImageSet.images`` (what metrics read) is never flipped either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from arflowbench.errors import DataError
from arflowbench.plugins import PluginBase

DATA_ENV = "ARFLOWBENCH_DATA"
#: probability that a drawn training image is mirrored when flips are on (SiT, ARFlow: 0.5)
FLIP_P = 0.5


class PixelConfig(BaseModel):
    """Options every pixel dataset's `Config` has (subclass it)."""

    model_config = {"extra": "forbid", "frozen": True}
    flip: bool = Field(False, description="random horizontal flips of training images, "
                       "p = 0.5 per image, drawn from the training step's generator")


@dataclass(frozen=True)
class ImageSet:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,); `flip`: `take` mirrors each
    drawn image with probability `FLIP_P` (see the module docstring)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    flip: bool = False

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

    def take(self, idx: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """Training items at `idx` (any shape): uint8 (*idx.shape, C, H, W). Without `flip`, `g`
        is untouched; with it, one draw per item from `g` decides its mirroring."""
        items = self.images[idx]  # (*idx.shape, C, H, W)
        if not self.flip:
            return items
        if g is None:
            raise ValueError("flipped training items need the training step's generator")
        mirror = torch.rand(idx.shape, generator=g) < FLIP_P  # (*idx.shape,)
        return torch.where(mirror[..., None, None, None], items.flip(-1), items)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is already in model space (latents)."""
    if images.is_floating_point():
        return images
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class Dataset(PluginBase):
    """Base class of dataset plugins."""

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: the splits hold pixel images that metrics can read (`ImageSet.images`); False for
    #: datasets of model-space floats (latents), which metrics must score against a reference
    has_pixel_images: ClassVar[bool] = True

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

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images `decode` returns (what metrics compare samples against)."""
        return (self.channels, self.image_size, self.image_size)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples (N, channels, image_size, image_size) -> uint8 (N, *pixel_shape).
        The one hook between sampling and metrics: pixel datasets map [-1, 1] to [0, 255]."""
        return to_uint8(x)

    def hash_options(self) -> dict:
        """The options as they enter the run hash (default: as given). A plugin whose options
        name files replaces the paths by content digests, so a moved folder keeps its run ids;
        the paths stay in the recorded spec."""
        return self.config.model_dump(mode="json")

    def record_info(self) -> dict:
        """JSON-ready facts a run record should carry about this data (e.g. the VAE)."""
        return {}

    def check_available(self) -> None:
        """Raise DataError with install instructions if the data is missing."""

    @classmethod
    def looked_for(cls, data_root: Path | None = None) -> list[str]:
        """Where this dataset's files are looked for, in order (`arflowbench ls datasets`)."""
        return ["the folder the matrix names in data.options"]

    def load(self, split: str) -> ImageSet:
        """The split as an `ImageSet` (cached in memory)."""
        if split not in self.splits:
            raise DataError(f"{self.name}: unknown split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._cache:
            data = self._load(split)
            if split == "train" and isinstance(self.config, PixelConfig) and self.config.flip:
                data = replace(data, flip=True)
            self._cache[split] = data
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
