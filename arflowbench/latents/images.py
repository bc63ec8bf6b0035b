"""The image side of latent caching: the class-per-folder listing and ADM's center crop.

Layout: ``root/<class>/<image>``; class ids follow the sorted folder names (ImageNet's synset
folders give the usual 0..999 ids), images are taken in sorted order inside each class, hidden
files and folders are skipped. Images are converted to RGB (grayscale, palette and CMYK files
are common in ImageNet; an alpha channel is dropped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arflowbench.data.imagefolder import EXTENSIONS
from arflowbench.errors import DataError


@dataclass(frozen=True)
class FolderListing:
    """Every image of a class-per-folder tree, in cache order."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to root, "class/name.jpg"
    labels: tuple[int, ...]

    def digest(self) -> str:
        """sha256 of the relative paths and file sizes: a changed folder cannot resume a cache."""
        h = hashlib.sha256()
        for rel in self.files:
            h.update(f"{rel}\t{(self.root / rel).stat().st_size}\n".encode())
        return h.hexdigest()


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def list_images(root: str | Path) -> FolderListing:
    """The listing of `root`; DataError when it is missing, flat, or has an empty class."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if loose:
        raise DataError(f"{root}: images must sit in one sub-folder per class, found "
                        f"{loose[0].name} at the top level")
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    files, labels = [], []
    for label, cdir in enumerate(class_dirs):
        found = sorted(p.name for p in cdir.iterdir()
                       if _visible(p) and p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not found:
            raise DataError(f"class folder {cdir} holds no images ({', '.join(sorted(EXTENSIONS))})")
        files += [f"{cdir.name}/{name}" for name in found]
        labels += [label] * len(found)
    return FolderListing(root, tuple(p.name for p in class_dirs), tuple(files), tuple(labels))


def adm_center_crop(image, size: int):
    """ADM's crop (guided-diffusion's image_datasets): halve with a box filter while the short
    side is at least 2 * size, scale the short side to `size` (bicubic), then center-crop."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (size, size, 3), ADM-cropped; DataError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(adm_center_crop(im.convert("RGB"), size))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from None
    if arr.shape != (size, size, 3):  # cannot happen with PIL's crop; guards future edits
        raise DataError(f"{path}: cropped to {arr.shape}, expected {(size, size, 3)}")
    return arr


def _check_header(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            im.size  # noqa: B018
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from None


def check_headers(paths: Iterable[Path], workers: int = 4) -> None:
    """Open every file's header before any encoding starts (the first bad file is reported)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(_check_header, paths):
            pass


def read_batch(paths: list[Path], size: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """uint8 (B, size, size, 3) in `paths` order, decoded by the pool's threads (PIL releases
    the GIL while decoding)."""
    return np.stack(list(pool.map(lambda p: read_image(p, size), paths)))
