"""A user's images in class-per-folder layout, resized to a chosen resolution.

Layout: ``root/<class>/*.png|jpg|...`` (one split, deterministically divided: every
`test_every`-th image of each class is test), or ``root/train/<class>/...`` and
``root/test/<class>/...``. Class ids follow the sorted folder names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from arflowbench.data.base import Dataset, ImageSet, PixelConfig
from arflowbench.errors import DataError, DataNotFoundError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


class ImageFolder(Dataset):
    """Class-per-folder images, resized (bicubic, center crop to square) to `image_size`."""

    name = "imagefolder"
    version = 1

    class Config(PixelConfig):
        root: str = Field(description="folder with one sub-folder per class")
        image_size: int = Field(32, ge=4)
        channels: Literal[1, 3] = 3
        test_every: int = Field(10, ge=2)

    @classmethod
    def looked_for(cls, data_root: Path | None = None) -> list[str]:
        return ["the folder the matrix names in data.options.root"]

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def root(self) -> Path:
        root = Path(self.config.root).expanduser()
        if not root.is_absolute() and self.data_root is not None:
            root = self.data_root / root
        return root

    def _class_dirs(self, base: Path) -> list[Path]:
        return sorted(p for p in base.iterdir() if p.is_dir())

    def _split_dirs(self) -> dict[str, Path] | None:
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return {"train": self.root / "train", "test": self.root / "test"}
        return None

    def check_available(self) -> None:
        if not self.root.is_dir():
            raise DataNotFoundError(f"imagefolder: root {self.root} does not exist")
        splits = self._split_dirs()
        base = (splits or {"train": self.root})["train"]
        classes = self._class_dirs(base)
        if not classes:
            raise DataError(f"imagefolder: {base} has no class sub-folders")
        for cdir in classes:  # a class without images would be a label never seen
            if not self._files(cdir):
                raise DataError(f"imagefolder: class folder {cdir} holds no images "
                                f"({', '.join(sorted(EXTENSIONS))}): add images or remove it")
        if splits:  # checked before training, not when the test split is first loaded
            names = {d.name for d in classes}
            extra = sorted(d.name for d in self._class_dirs(splits["test"]) if d.name not in names)
            if extra:
                raise DataError(f"imagefolder: test classes {extra} are not classes of the train "
                                f"split ({', '.join(sorted(names))})")

    @staticmethod
    def _files(cdir: Path) -> list[Path]:
        return sorted(p for p in cdir.iterdir() if p.suffix.lower() in EXTENSIONS)

    @property
    def num_classes(self) -> int:
        self.check_available()
        base = (self._split_dirs() or {"train": self.root})["train"]
        return len(self._class_dirs(base))

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image

        mode = "L" if self.channels == 1 else "RGB"
        try:
            with Image.open(path) as im:
                return self._square(im.convert(mode))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"imagefolder: cannot decode {path} ({exc})") from None

    def _square(self, im) -> torch.Tensor:
        """A PIL image center-cropped, resized, as uint8 (C, H, W)."""
        from PIL import Image

        side = min(im.size)
        left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
        im = im.crop((left, top, left + side, top + side))
        im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.reshape(self.image_size, self.image_size, self.channels).permute(2, 0, 1)

    def _load(self, split: str) -> ImageSet:
        self.check_available()
        splits = self._split_dirs()
        base = splits[split] if splits else self.root
        names = [d.name for d in self._class_dirs(splits["train"] if splits else self.root)]
        images, labels = [], []
        for cdir in self._class_dirs(base):
            if cdir.name not in names:
                raise DataError(f"imagefolder: class {cdir.name!r} of split {split!r} is not a "
                                f"class of the train split ({', '.join(names)})")
            cls_id = names.index(cdir.name)
            files = self._files(cdir)
            if splits is None:  # one folder: deterministic split within each class
                files = [f for i, f in enumerate(files)
                         if (i % self.config.test_every == 0) == (split == "test")]
            for f in files:
                images.append(self._read(f))
                labels.append(cls_id)
        if not images:
            raise DataError(f"imagefolder: no images for split {split!r} under {base}")
        return ImageSet(torch.stack(images), torch.tensor(labels), self.num_classes)
