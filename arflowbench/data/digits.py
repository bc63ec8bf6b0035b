"""scikit-learn's 8x8 digits: 1,797 images, 10 classes, shipped inside the wheel (offline)."""

from __future__ import annotations

import torch
from pydantic import field_validator

from arflowbench.data.base import Dataset, ImageSet, PixelConfig

#: every TEST_EVERY-th image (in file order) is the test split; the rest is train
TEST_EVERY = 5


class Digits(Dataset):
    """The embedded quickstart dataset: 8x8 grayscale digits, values 0..16 scaled to 0..255."""

    name = "digits"
    version = 1

    @classmethod
    def looked_for(cls, data_root=None) -> list[str]:
        return ["embedded (scikit-learn's digits, offline)"]

    class Config(PixelConfig):
        @field_validator("flip")
        @classmethod
        def _no_flip(cls, flip: bool) -> bool:
            if flip:
                raise ValueError("digits does not offer flip = true: a mirrored digit is not a "
                                 "digit of its class (2, 3, 4, 5, 7, 9 ...), and the class-accuracy "
                                 "metric would score such samples as wrong")
            return flip

    channels = 1
    image_size = 8
    num_classes = 10

    def _load(self, split: str) -> ImageSet:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float()  # (N, 8, 8) in [0, 16]
        images = (images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]  # (N, 1, 8, 8)
        labels = torch.from_numpy(bunch.target).long()
        is_test = torch.arange(len(labels)) % TEST_EVERY == 0
        keep = is_test if split == "test" else ~is_test
        return ImageSet(images[keep].contiguous(), labels[keep].contiguous(), self.num_classes)
