"""An evaluation reference named by a file in a run spec (the `fidelity` metric's ``reference``).

Checked before any work, cheaply (headers only, never the 10 GB of an ADM batch's images):
the path exists and is readable, an ``.npz`` holds reference images (``arr_0`` uint8 NHWC) or
Inception statistics (``mu``, ``sigma``) or both, a PNG folder holds PNGs, and the images have
the geometry the samples will be decoded to. The run hash takes the reference by *content*
(`reference_digest`), not by path: moving the file keeps run ids, replacing it changes them.
Scoring goes through `reference.load_reference` / `reference.evaluate_reference`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from arflowbench.errors import DataError, DataMissingError

#: (path, size, mtime_ns) -> sha256: a cell resolves its spec more than once
_DIGESTS: dict[tuple[str, int, int], str] = {}


def reference_path(text: str, data_root: str | os.PathLike | None) -> Path:
    """A relative reference path is read under the data root (``--data-root``) when one is
    given, as the latent cache is; else under the working directory."""
    path = Path(text).expanduser()
    if not path.is_absolute() and data_root is not None:
        path = Path(data_root) / path
    return path


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")


def reference_digest(path: Path) -> str:
    """sha256 of the file, or of a PNG folder's (name, file digest) list."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in _pngs(path):
            h.update(f"{p.name}\t{_file_sha256(p)}\n".encode())
        return h.hexdigest()
    return _file_sha256(path)


def _npz_header(path: Path) -> tuple[set[str], tuple[int, ...] | None, str | None]:
    """Member names and arr_0's shape and dtype, read from the .npy header inside the .npz."""
    with zipfile.ZipFile(path) as z:
        names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        if "arr_0" not in names:
            return names, None, None
        with z.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
    return names, tuple(shape), str(dtype)


def _image_shape(path: Path) -> tuple[set[str], tuple[int, int, int] | None]:
    """(keys, (C, H, W) of the reference images or None) without loading the images."""
    if path.is_dir():
        files = _pngs(path)
        if not files:
            raise DataError(f"reference {path}: a folder without .png files")
        from PIL import Image

        try:
            with Image.open(files[0]) as im:
                w, h = im.size
                channels = 1 if im.mode in ("L", "1", "LA") else 3
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"reference {files[0]}: cannot read as an image ({exc})") from None
        return {"arr_0"}, (channels, h, w)
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
            keys: set[str] = {"arr_0"}
        else:
            keys, shape, dtype = _npz_header(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"reference {path}: cannot read as .npz/.npy ({exc})") from None
    if shape is None:
        return keys, None
    if dtype != "uint8" or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise DataError(f"reference {path}: arr_0 is {dtype} {shape}, expected uint8 "
                        "(N, H, W, C) with C in {1, 3} (ADM's layout)")
    c = shape[3] if len(shape) == 4 else 1
    return keys, (c, shape[1], shape[2])


def check_reference(path: Path, pixel_shape: tuple[int, int, int] | None) -> str:
    """Validate the reference at `path` for samples of `pixel_shape` (C, H, W; None: unknown
    yet); return its content digest. DataMissingError when it does not exist (it may be
    fetched later, on the machine that runs), DataError when it is unusable."""
    if not path.exists():
        raise DataMissingError(f"evaluation reference {path} does not exist",
                               "put the image .npz, PNG folder or ADM reference batch there "
                               "(relative paths are read under --data-root)")
    if not os.access(path, os.R_OK):
        raise DataError(f"reference {path} is not readable")
    keys, shape = _image_shape(path)
    stats = {"mu", "sigma"} <= keys
    if ("mu" in keys) != ("sigma" in keys):
        raise DataError(f"reference {path}: has {'mu' if 'mu' in keys else 'sigma'} without "
                        f"{'sigma' if 'mu' in keys else 'mu'}; an ADM reference batch has both")
    if shape is None and not stats:
        raise DataError(f"reference {path}: neither images (arr_0) nor Inception statistics "
                        f"(mu, sigma); keys: {', '.join(sorted(keys)) or 'none'}")
    if shape is not None and pixel_shape is not None and tuple(shape) != tuple(pixel_shape):
        raise DataError(f"reference {path}: images of shape (C, H, W) = {shape}, the samples "
                        f"will be {tuple(pixel_shape)}")
    return reference_digest(path)
