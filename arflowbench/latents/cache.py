"""Reading a latent cache (see `prepare.py` for the layout): memory-mapped shards, gathered rows.

Nothing is read into memory up front but the index and the labels: a 1.28M-image ImageNet cache
at 256 px is about 84 GB of float32 moments, so rows are gathered from memory-mapped shards on
demand (the OS page cache keeps the hot ones).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from arflowbench.errors import DataError
from arflowbench.latents.prepare import FORMAT, FORMAT_VERSION, INDEX, partial_dir

#: memory-mapped shards kept open at once (Python's mmap keeps a duplicated descriptor each)
MAX_OPEN_SHARDS = 256


class LatentCache:
    """A finished cache folder: index, labels and lazily memory-mapped shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        index = self.path / INDEX
        if not index.is_file():
            hint = ("its preparation is unfinished: rerun the same `arflowbench prepare latents` "
                    "command to resume it" if partial_dir(self.path.absolute()).is_dir()
                    else "make one with `arflowbench prepare latents`")
            raise DataError(f"{self.path} is not a latent cache (no {INDEX}); {hint}")
        raw = index.read_bytes()
        try:
            self.index: dict[str, Any] = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{index}: unreadable ({exc})") from None
        if self.index.get("format") != FORMAT or self.index.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{index}: format {self.index.get('format')!r} version "
                            f"{self.index.get('format_version')!r}, expected {FORMAT!r} {FORMAT_VERSION}")
        #: names this cache's content (its index lists VAE digest, files digest and shards)
        self.index_sha256 = hashlib.sha256(raw).hexdigest()
        self._shards: dict[int, np.ndarray] = {}
        self._starts = np.asarray([s["start"] for s in self.index["shards"]], dtype=np.int64)

    # ------------------------------------------------------------------ what it holds
    @property
    def size(self) -> int:
        """Pixel side of the encoded images."""
        return int(self.index["size"])

    @property
    def vae(self) -> dict[str, Any]:
        return self.index["vae"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return tuple(int(v) for v in self.index["latent_shape"])  # type: ignore[return-value]

    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    def __len__(self) -> int:
        return int(self.index["num_images"])

    @cached_property
    def labels(self) -> np.ndarray:
        """int64 (N,) class ids."""
        labels = np.load(self.path / self.index["labels"], allow_pickle=False)
        if labels.shape != (len(self),):
            raise DataError(f"{self.path}: labels have shape {labels.shape}, index says {len(self)}")
        return labels.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ rows
    def _shard(self, k: int) -> np.ndarray:
        if k in self._shards:
            self._shards[k] = self._shards.pop(k)  # most recently used last
        else:
            if len(self._shards) >= MAX_OPEN_SHARDS:  # each memory map holds a file descriptor
                self._shards.pop(next(iter(self._shards)))
            entry = self.index["shards"][k]
            c, h, w = self.latent_shape
            want = (entry["count"], 2, 2 * c, h, w)
            try:
                arr = np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{self.path / entry['file']}: unreadable shard ({exc})") from None
            if arr.shape != want or arr.dtype != np.float32:
                raise DataError(f"{self.path / entry['file']}: {arr.dtype} {arr.shape}, index says "
                                f"float32 {want}")
            self._shards[k] = arr
        return self._shards[k]

    def moments(self, idx: np.ndarray, flip: np.ndarray) -> np.ndarray:
        """float32 (M, 2C, h, w) moments of images `idx` (M,), of their flip where `flip` (M,)."""
        idx = np.asarray(idx, dtype=np.int64)
        flip = np.asarray(flip, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range [0, {len(self)})")
        c, h, w = self.latent_shape
        out = np.empty((len(idx), 2 * c, h, w), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1  # (M,)
        for k in np.unique(shard_of):
            rows = np.nonzero(shard_of == k)[0]
            local = idx[rows] - self._starts[k]
            out[rows] = self._shard(int(k))[local, flip[rows]]  # fancy indexing copies the rows
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}  # memory maps are reopened in a worker process, not pickled
        return state
