"""Checksums beside cache files: nothing in the metrics cache is loaded unless arflowbench wrote it.

Every file the project caches (converted Inception weights, trained classifiers, reference
features, torch-fidelity's reference statistics under ``<cache>/fidelity/``) has a
``<file>.sha256`` beside it, written by the project when it wrote (or, for torch-fidelity's files,
watched torch-fidelity write) the file. Before a cached file is loaded its sha256 is checked; a file
with no checksum or another content is refused with `FeatureWeightsError` naming it (delete it and
it is re-created). Files the project loads itself are read with ``torch.load(weights_only=True)``;
torch-fidelity unpickles its cache files (``weights_only=False``), so those are verified first.

The checksum guards against files planted or damaged by someone who cannot also write the
checksum (another tool's cache, a copied folder, a partial sync); it is not a signature.
The checksum is written before its file appears (both atomically), so a reader never sees a
project file without its checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from arflowbench.metrics.base import FeatureWeightsError, atomic_write, file_lock

SUFFIX = ".sha256"
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) already checked here


def checksum_path(path: Path) -> Path:
    """Where the checksum of `path` lives: ``<file>.sha256`` beside it."""
    return path.with_name(path.name + SUFFIX)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_checksum(path: Path, digest: str) -> None:
    text = f"{digest}  {path.name}\n".encode()
    atomic_write(checksum_path(path), lambda f: f.write(text))


def verify(path: str | os.PathLike) -> Path:
    """Raise `FeatureWeightsError` unless `path` matches the checksum arflowbench wrote for it."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    side = checksum_path(path)
    fix = "delete it and it is re-created"
    try:
        expected = side.read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        raise FeatureWeightsError(f"{path}: cache file with no checksum from arflowbench beside "
                                  f"it ({side.name}): not loaded; {fix}") from None
    actual = sha256_file(path)
    if actual != expected:
        raise FeatureWeightsError(f"{path}: sha256 {actual[:12]}... does not match the checksum "
                                  f"arflowbench wrote ({expected[:12]}...): not loaded; {fix}")
    _VERIFIED.add(key)
    return path


def save_verified(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically, its checksum written first."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    _write_checksum(path, sha256_bytes(data))
    atomic_write(path, lambda f: f.write(data))


def load_verified(path: str | os.PathLike) -> Any:
    """A cache file checked against its checksum, loaded with ``weights_only=True``."""
    return torch.load(verify(path), map_location="cpu", weights_only=True)


@contextmanager
def verified_fidelity_cache(folder: Path, prefix: str) -> Iterator[None]:
    """Around a torch-fidelity call that caches under `folder` with names starting `prefix`:
    refuse existing files arflowbench did not see written, then checksum the new ones. Held
    under a lock, so no other process sees a new file before its checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f"{prefix}.lock"):
        for path in sorted(folder.glob(f"{prefix}-*.pt")):
            verify(path)
        yield
        for path in sorted(folder.glob(f"{prefix}-*.pt")):
            if not checksum_path(path).is_file():
                _write_checksum(path, sha256_file(path))
