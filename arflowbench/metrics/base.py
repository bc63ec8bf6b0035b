"""The metric plugin contract and the helpers every metric module shares.

A metric plugin is built as ``Metric(config)`` and scores a set of generated images::

    metric.compute(samples, labels, dataset, cache_dir=None, device="cpu") -> dict

``samples`` are uint8 ``(N, C, H, W)`` in the dataset's geometry, ``labels`` the class each image
was asked to show (or None). The returned dict is flat and JSON-serialisable; it always names the
feature extractor and its version, so a number is never detached from what measured it.

Cache files (converted Inception weights, trained classifiers, reference features) live under
`cache_root()`: the ``cache_dir`` argument, else ``$ARFLOWBENCH_CACHE``, else
``~/.cache/arflowbench``. Every cache file is written to a temporary name in the same folder and
renamed into place, so a crash never leaves a partial file under a valid name, and has a
checksum beside it (`checksums.py`): nothing is loaded from the cache that the project did not write.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from arflowbench.errors import ArflowbenchError
from arflowbench.plugins import PluginBase

CACHE_ENV = "ARFLOWBENCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/arflowbench")


class FeatureWeightsError(ArflowbenchError):
    """Feature-extractor weights are missing, corrupt, or do not match their checksum."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The metrics cache folder: `cache_dir`, else $ARFLOWBENCH_CACHE, else ~/.cache/arflowbench."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = DEFAULT_CACHE
    return root.expanduser()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Create `path` by calling ``write(file)`` on a temporary file, then renaming it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are meant to be shared
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so parallel runs train or convert a cached file only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha1_file(path: str | os.PathLike) -> str:
    """Hex sha1 of a file, read in 1 MiB blocks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Short content hash of tensors (shapes, dtypes, bytes): cache keys follow the data."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Display:
    """How a metric's value is shown: column label, direction and decimals."""

    label: str
    #: True / False: the better direction (arrows in tables); None: not a quality score
    higher_is_better: bool | None = None
    decimals: int = 3


class Metric(PluginBase):
    """Base class of metric plugins (see the module docstring for the contract).

    ``display`` declares the keys of `compute`'s result shown in the report's quality table, in
    order (other keys are kept in the row as provenance). Two metrics listed in one run must not
    display the same key.
    """

    display: ClassVar[dict[str, Display]] = {}
    #: where this metric's columns go in report tables (lower first; ties by name)
    display_order: ClassVar[int] = 100

    def __init__(self, config: PluginBase.Config | None = None):
        self.config = config if config is not None else self.Config()

    def hash_options(self) -> dict[str, Any]:
        """The options as they enter the run hash (default: as given); file options enter by
        content digest (see `Dataset.hash_options`)."""
        return self.config.model_dump(mode="json")

    def check(self, dataset: Any, sample_counts: list[int]) -> None:
        """Raise `ConfigError` for options that cannot work with `dataset` and these sample
        counts (final evaluation, evaluation points): called before training. Default: none."""

    def compute(
        self,
        samples: torch.Tensor,
        labels: torch.Tensor | None,
        dataset: Any,
        *,
        cache_dir: str | os.PathLike | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        """Score uint8 samples (N, C, H, W) against `dataset`; a flat JSON-ready dict."""
        raise NotImplementedError
