"""Score generated images against a dataset split: FID, KID, precision/recall, class accuracy.

Everything goes through one call of ``torch_fidelity.calculate_metrics`` (input1 = samples,
input2 = reference split) with our registered feature extractor. The reference features are
cached by torch-fidelity (temporary file + rename) under ``<cache>/fidelity/`` with a name built
from the dataset, split, resolution, extractor, extractor version, weights tag and a hash of the
reference images themselves, so a changed dataset or extractor can never hit a stale cache.

KID subset size: by default 1000, or half the smaller set below 2000 images (recorded in the
result); an explicit value larger than either set is an error naming both numbers (never
silently changed).

Progress: one bar per input counts the images torch-fidelity pulls through `_Images`
(`ui.counters`: quiet with ``--no-progress`` and off a terminal). torch-fidelity's own tqdm
output stays off: it writes to stderr, which a cell keeps for its failure record.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arflowbench import ui
from arflowbench.errors import ConfigError, DataError
from arflowbench.metrics.base import cache_root, tensor_digest
from arflowbench.metrics.checksums import verified_fidelity_cache
from arflowbench.metrics.classifier import dataset_classifier, load_classifier, predict
from arflowbench.metrics.features import check_extractor, prepare_extractor

DEFAULT_KID_SUBSET = 1000
PRC_NEIGHBORHOOD = 3
REFERENCE_SEED = 0


class _Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) tensor as the torch Dataset torch-fidelity iterates; `pulled(n)`, when
    given, hears of every batch of n images its DataLoader fetches (a progress bar)."""

    def __init__(self, images: torch.Tensor, pulled: Callable[[int], None] | None = None):
        self.images = images
        self.pulled = pulled

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        # the DataLoader fetches whole batches here; torch-fidelity's own look at input[0]
        # goes through __getitem__ and is not counted
        if self.pulled is not None:
            self.pulled(len(indices))
        return [self.images[i] for i in indices]


def check_samples(samples: torch.Tensor, dataset: Any) -> torch.Tensor:
    """Validate uint8 (N, C, H, W) samples against the dataset's decoded geometry
    (``dataset.pixel_shape``: the latents dataset decodes to RGB at the cache's size).

    Grayscale datasets accept RGB samples whose three channels are equal (PNG writers often
    store gray images that way) and keep one channel.
    """
    if not isinstance(samples, torch.Tensor) or samples.dtype != torch.uint8 or samples.dim() != 4:
        what = f"{samples.dtype} {tuple(samples.shape)}" if isinstance(samples, torch.Tensor) \
            else type(samples).__name__
        raise DataError(f"samples must be a uint8 tensor (N, C, H, W), got {what}")
    samples = samples.detach().cpu()
    shape = tuple(getattr(dataset, "pixel_shape", (dataset.channels, dataset.image_size,
                                                    dataset.image_size)))
    if shape[0] == 1 and samples.shape[1] == 3 and bool((samples == samples[:, :1]).all()):
        samples = samples[:, :1]
    if tuple(samples.shape[1:]) != shape:
        raise DataError(
            f"samples have shape (C, H, W) = {tuple(samples.shape[1:])}, dataset "
            f"{dataset.name!r} has {shape}"
        )
    return samples


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be integers of shape ({n},), got {labels.dtype} "
                        f"{tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got "
                        f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def reference_images(dataset: Any, split: str, num: int | None = None) -> torch.Tensor:
    """The reference split, or a fixed seeded subset of `num` images of it (in split order)."""
    images = dataset.load(split).images
    if num is not None:
        if num < 1:
            raise ConfigError(f"reference_num must be >= 1, got {num}")
        if num < len(images):
            gen = torch.Generator().manual_seed(REFERENCE_SEED)
            idx = torch.randperm(len(images), generator=gen)[:num].sort().values
            images = images[idx]
    return images


def resolve_kid_subset_size(requested: int | None, n_samples: int, n_reference: int) -> int:
    """Explicit sizes are checked, never changed. None picks 1000, or half the smaller set when
    that has fewer than 2000 images: subsets as large as a whole set would all be that set,
    and kid_std would be a meaningless 0."""
    limit = min(n_samples, n_reference)
    if requested is None:
        return max(2, min(DEFAULT_KID_SUBSET, limit // 2))
    if requested < 2:
        raise ConfigError(f"kid_subset_size must be >= 2, got {requested}")
    if requested > limit:
        raise ConfigError(
            f"kid_subset_size {requested} is larger than the {n_samples} samples / "
            f"{n_reference} reference images: pass kid_subset_size <= {limit} or more samples"
        )
    return requested


def _cache_name(*parts: Any) -> str:
    # torch-fidelity uses this as a file-name prefix: keep it to safe characters
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(str(p) for p in parts))


def evaluate_samples(
    samples: torch.Tensor,
    labels: torch.Tensor | None,
    dataset: Any,
    extractor: str = "inception",
    reference_split: str = "test",
    kid_subset_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    *,
    kid_subsets: int = 100,
    reference_num: int | None = None,
    cache_reference: bool = True,
    seed: int = 2020,
) -> dict[str, Any]:
    """FID, KID, precision/recall (and class accuracy when `labels` are given) of uint8 samples.

    `reference_num` limits the reference split to a fixed seeded subset (Inception on a CPU
    runs at a few images per second). Precision is the fraction of samples inside the
    reference manifold, recall the fraction of reference images inside the samples' manifold.
    """
    import torch_fidelity

    check_extractor(extractor)
    samples = check_samples(samples, dataset)
    n = len(samples)
    if n < PRC_NEIGHBORHOOD + 1:
        raise DataError(f"need at least {PRC_NEIGHBORHOOD + 1} samples, got {n}")
    if labels is not None:
        labels = _check_labels(labels, n, dataset.num_classes)
    if batch_size < 1 or kid_subsets < 1:
        raise ConfigError(f"batch_size and kid_subsets must be >= 1, got {batch_size} and "
                          f"{kid_subsets}")
    reference = reference_images(dataset, reference_split, reference_num)
    kid_size = resolve_kid_subset_size(kid_subset_size, n, len(reference))

    spec = prepare_extractor(extractor, dataset, cache_dir, device)
    size = dataset.image_size
    ref_name = _cache_name(dataset.name, reference_split, f"{size}px", f"n{len(reference)}",
                           tensor_digest(reference)[:8], extractor, f"v{spec.version}",
                           spec.weights_tag)
    dev = torch.device(device)
    kwargs = dict(
        fid=True, kid=True, prc=True,
        feature_extractor=spec.tf_name, feature_extractor_weights_path=str(spec.weights_path),
        batch_size=batch_size, cuda=dev.type == "cuda",
        kid_subset_size=kid_size, kid_subsets=kid_subsets, prc_neighborhood=PRC_NEIGHBORHOOD,
        cache=cache_reference, cache_root=str(cache_root(cache_dir) / "fidelity"),
        input2_cache_name=ref_name if cache_reference else None,
        save_cpu_ram=True,  # no DataLoader worker processes: the images are already in memory
        rng_seed=seed, verbose=False,
    )
    # torch-fidelity unpickles its cache files: only ones checksummed by us are let through
    guard = (verified_fidelity_cache(cache_root(cache_dir) / "fidelity", ref_name)
             if cache_reference else contextlib.nullcontext())
    with ui.counters() as counter, guard:
        # the bars advance as torch-fidelity pulls images: feature extraction of the samples,
        # then of the reference (its statistics); a cached reference is never pulled, no bar
        kwargs.update(
            input1=_Images(samples, counter(f"{extractor} features: samples", n, lazy=True)),
            input2=_Images(reference, counter(f"{extractor} features: reference "
                                              f"{reference_split}", len(reference), lazy=True)))
        if dev.type == "cuda" and dev.index is not None:
            with torch.cuda.device(dev.index):
                raw = torch_fidelity.calculate_metrics(**kwargs)
        else:
            raw = torch_fidelity.calculate_metrics(**kwargs)

    out: dict[str, Any] = {
        "fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision": float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(raw[torch_fidelity.KEY_METRIC_RECALL]),
        "feature_extractor": extractor,
        "extractor_version": spec.version,
        "eval_num_samples": n,
        "reference_split": reference_split,
        "reference_num": len(reference),
        "kid_subset_size": kid_size,
        "kid_subsets": kid_subsets,
        **spec.info,
    }
    if labels is not None:
        out.update(class_accuracy(samples, labels, dataset, cache_dir, device))
    return out


def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, dataset: Any,
                   cache_dir: str | os.PathLike | None = None, device: str = "cpu",
                   batch_size: int = 512) -> dict[str, Any]:
    """How often the dataset classifier recognises the requested class in each sample."""
    samples = check_samples(samples, dataset)
    labels = _check_labels(labels, len(samples), dataset.num_classes)
    info = dataset_classifier(dataset, cache_dir, device)
    model = load_classifier(info.path, device)
    pred = predict(model, samples, batch_size).argmax(1)
    return {
        "class_accuracy": float((pred == labels).float().mean()),
        "classifier_test_accuracy": info.test_accuracy,
    }


def _npz_array(path: Path, key: str) -> np.ndarray | None:
    """`key` of an .npz file (a .npy file holds only "arr_0"), or None if absent."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):  # a .npy file
            return data if key == "arr_0" else None
        with data:
            arr = data[key] if key in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read as .npz/.npy ({exc})") from None
    if arr is not None and not isinstance(arr, np.ndarray):  # numpy returns a non-.npy member raw
        raise DataError(f"{path}: {key} is not a .npy array")
    return arr


def load_samples_file(path: str | os.PathLike) -> torch.Tensor:
    """Generated images as uint8 (N, C, H, W) from an ADM-style .npz or a folder of PNGs.

    .npz (or .npy): ``arr_0`` uint8 (N, H, W, C) with C in {1, 3}, or (N, H, W) grayscale.
    Folder: every ``*.png`` in it (sorted by name), all of one size; grayscale if all are.
    """
    path = Path(path)
    if path.is_dir():
        return _load_png_folder(path)
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist")
    arr = _npz_array(path, "arr_0")
    if arr is None:
        raise DataError(f"{path}: no 'arr_0' array (expected ADM-style np.savez(path, images))")
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: arr_0 has dtype {arr.dtype}, expected uint8 in [0, 255]")
    if arr.ndim == 3:
        arr = arr[..., None]  # (N, H, W, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = " (channels-first? expected channels-last)" if arr.ndim == 4 and \
            arr.shape[1] in (1, 3) else ""
        raise DataError(f"{path}: arr_0 has shape {arr.shape}, expected (N, H, W, C) with C in "
                        f"{{1, 3}} or (N, H, W){hint}")
    if arr.shape[0] == 0:
        raise DataError(f"{path}: arr_0 holds no images")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def load_samples_labels(path: str | os.PathLike) -> torch.Tensor | None:
    """The class labels ADM stores as ``arr_1`` in a samples .npz, or None."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        return None
    arr = _npz_array(path, "arr_1")
    if arr is None:
        return None
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: arr_1 (labels) has dtype {arr.dtype} shape {arr.shape}, "
                        "expected integers (N,)")
    return torch.from_numpy(arr.astype(np.int64))


def _load_png_folder(folder: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise DataError(f"{folder}: no .png files")
    modes, arrays = [], []
    try:
        for p in files:
            with Image.open(p) as im:  # reads the header only
                modes.append(im.mode)
        gray = all(m in ("L", "1", "LA") for m in modes)
        for p in files:
            with Image.open(p) as im:  # closed at once: a folder may hold 50k images
                arrays.append(np.asarray(im.convert("L" if gray else "RGB")))
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or not a PNG
        raise DataError(f"{p}: cannot decode as an image ({exc})") from None
    first = arrays[0].shape
    for p, a in zip(files, arrays):
        if a.shape != first:
            raise DataError(f"{p}: size {a.shape[:2]} differs from {files[0].name}'s {first[:2]}")
    stack = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    if stack.ndim == 3:
        stack = stack[..., None]
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
