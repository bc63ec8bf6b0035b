"""Scoring samples against a reference named on the command line (``arflowbench eval --reference``).

A reference is one of:

- a dataset name: its split, through `evaluate.evaluate_samples` (as ``--dataset``);
- an image ``.npz`` (``arr_0`` uint8 NHWC, ADM's sample layout) or a folder of PNGs;
- an ADM reference batch (guided-diffusion's evaluator format, e.g.
  ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` reference images plus precomputed Inception
  pool statistics ``mu`` (2048,) and ``sigma`` (2048, 2048); ``mu_s``/``sigma_s`` are sFID's spatial
  statistics. ``mu``/``sigma`` are used as they are for FID, so the number is the one the
  published tables were computed against. The features come from torch-fidelity's FID Inception,
  the TF-1.x network ADM's evaluator runs (`inception.py`); the reference images, when present,
  give KID and precision/recall.

What is not computed, and said so in the result: Inception Score (the offline FID Inception
weights have no logits layer: ``inception_score`` is None with the reason) and sFID (the spatial
``mixed_6/conv`` features are not extracted).

Feature extraction (samples, and reference images whose features are not cached yet) draws a
bar counting the images (`ui.count_bar`), quiet with ``--no-progress`` and off a terminal.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arflowbench import ui
from arflowbench.errors import ConfigError, DataError
from arflowbench.metrics.base import cache_root, tensor_digest
from arflowbench.metrics.checksums import load_verified, save_verified
from arflowbench.metrics.evaluate import (
    PRC_NEIGHBORHOOD,
    _Images,
    load_samples_file,
    resolve_kid_subset_size,
)

IS_UNAVAILABLE = "the offline FID Inception weights have no logits layer (no Inception Score)"
SFID_UNAVAILABLE = "spatial (mixed_6/conv) features are not extracted (no sFID)"
#: feature layer per extractor in torch-fidelity's naming
LAYERS = {"inception": "2048", "classifier": "penultimate"}

Features = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> float (N, D)


@dataclass(frozen=True)
class Reference:
    """Reference images and/or precomputed Inception statistics."""

    label: str
    images: torch.Tensor | None  # uint8 (N, C, H, W)
    mu: np.ndarray | None = None  # float64 (D,)
    sigma: np.ndarray | None = None  # float64 (D, D)
    has_spatial: bool = False  # mu_s / sigma_s present (sFID, not computed here)

    @property
    def kind(self) -> str:
        return "adm-batch" if self.mu is not None else "images"


def load_reference(path: str | os.PathLike) -> Reference:
    """An image .npz/.npy or PNG folder, or an ADM reference batch; DataError if it holds
    neither images nor statistics, or statistics of the wrong shape."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".npy":
        return Reference(str(path), load_samples_file(path))
    if not path.is_file():
        raise DataError(f"reference {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            mu = data["mu"] if "mu" in keys else None
            sigma = data["sigma"] if "sigma" in keys else None
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    if (mu is None) != (sigma is None):
        raise DataError(f"{path}: has {'mu' if sigma is None else 'sigma'} without "
                        f"{'sigma' if sigma is None else 'mu'}; an ADM reference batch has both")
    if mu is None and "arr_0" not in keys:
        raise DataError(f"{path}: neither reference images (arr_0) nor Inception statistics "
                        f"(mu, sigma); keys: {', '.join(sorted(keys)) or 'none'}")
    if mu is not None:
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise DataError(f"{path}: mu or sigma holds NaN or infinity")
    images = load_samples_file(path) if "arr_0" in keys else None
    return Reference(str(path), images, mu, sigma, has_spatial="mu_s" in keys)


def torch_fidelity_features(extractor: str = "inception", cache_dir: str | os.PathLike | None = None,
                            device: str = "cpu", batch_size: int = 64) -> tuple[Features, dict]:
    """A feature function through torch-fidelity's extractor, and what identifies it."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from arflowbench.metrics.features import prepare_extractor

    if extractor != "inception":
        raise ConfigError(f"extractor {extractor!r} is trained on a dataset: use it with a dataset "
                          "reference (--reference NAME); files are scored with 'inception'")
    spec = prepare_extractor(extractor, None, cache_dir, device)
    cuda = torch.device(device).type == "cuda"
    model = create_feature_extractor(spec.tf_name, [LAYERS[extractor]], cuda=cuda, verbose=False,
                                     feature_extractor_weights_path=str(spec.weights_path))

    def features(images: torch.Tensor) -> torch.Tensor:
        # our bar (quiet with --no-progress or off a terminal), not torch-fidelity's tqdm
        with ui.count_bar(f"{extractor} features", len(images)) as advance:
            data = _Images(images, advance)
            out = get_featuresdict_from_dataset(data, model, batch_size, cuda, True, False)
        return out[LAYERS[extractor]]  # (N, 2048)

    info = {"feature_extractor": extractor, "extractor_version": spec.version,
            "weights_tag": spec.weights_tag, **spec.info}
    return features, info


def _reference_features(ref: Reference, features: Features, info: dict,
                        cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Reference features, cached on disk by image content and extractor (atomic write)."""
    assert ref.images is not None
    name = "-".join(str(p) for p in (Path(ref.label).stem, len(ref.images), tensor_digest(ref.images),
                                     info.get("feature_extractor"), info.get("extractor_version"),
                                     info.get("weights_tag")))
    path = cache_root(cache_dir) / "reference" / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".pt")
    if path.is_file():
        return load_verified(path)
    feats = features(ref.images).float().cpu()
    save_verified(feats, path)
    return feats


def _stats(feats: torch.Tensor) -> dict[str, np.ndarray]:
    f = feats.double().numpy()
    return {"mu": f.mean(axis=0), "sigma": np.cov(f, rowvar=False)}


def evaluate_reference(samples: torch.Tensor, ref: Reference, *, features: Features | None = None,
                       info: dict | None = None, extractor: str = "inception",
                       kid_subset_size: int | None = None, kid_subsets: int = 100,
                       reference_features: bool = True, cache_dir: str | os.PathLike | None = None,
                       device: str = "cpu", batch_size: int = 64, seed: int = 2020) -> dict[str, Any]:
    """FID against `ref` (its precomputed statistics as they are, when it has them), KID and
    precision/recall when it has images (and `reference_features`). `features` replaces the
    torch-fidelity extractor (tests); `info` then names it."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if not isinstance(samples, torch.Tensor) or samples.dtype != torch.uint8 or samples.dim() != 4:
        raise DataError("samples must be uint8 (N, C, H, W)")
    n = len(samples)
    if n < PRC_NEIGHBORHOOD + 1:
        raise DataError(f"need at least {PRC_NEIGHBORHOOD + 1} samples, got {n}")
    if ref.images is not None and samples.shape[1:] != ref.images.shape[1:]:
        raise DataError(f"samples have shape (C, H, W) = {tuple(samples.shape[1:])}, reference "
                        f"{ref.label} has {tuple(ref.images.shape[1:])}")
    use_ref_images = ref.images is not None and (reference_features or ref.mu is None)
    kid_size = resolve_kid_subset_size(kid_subset_size, n, len(ref.images)) if use_ref_images else None
    if ref.mu is not None and extractor != "inception":
        raise ConfigError(f"{ref.label} holds Inception statistics: score it with the 'inception' "
                          f"extractor, not {extractor!r}")
    if features is None:
        features, info = torch_fidelity_features(extractor, cache_dir, device, batch_size)
    info = dict(info or {"feature_extractor": "custom", "extractor_version": 0})

    sample_feats = features(samples.cpu()).float().cpu()  # (N, D)
    ref_feats = _reference_features(ref, features, info, cache_dir) if use_ref_images else None
    ref_stats = {"mu": ref.mu, "sigma": ref.sigma} if ref.mu is not None else _stats(ref_feats)
    if len(ref_stats["mu"]) != sample_feats.shape[1]:
        raise DataError(f"{ref.label}: statistics are {len(ref_stats['mu'])}-d, the extractor gives "
                        f"{sample_feats.shape[1]}-d features")
    fid = fid_statistics_to_metric(_stats(sample_feats), ref_stats, verbose=False)[KEY_METRIC_FID]
    out: dict[str, Any] = {
        "fid": float(fid), "kid_mean": None, "kid_std": None, "precision": None, "recall": None,
        "class_accuracy": None, "inception_score": None, "inception_score_note": IS_UNAVAILABLE,
        "sfid": None, **({"sfid_note": SFID_UNAVAILABLE} if ref.has_spatial else {}),
        "eval_num_samples": n, "reference": ref.label, "reference_kind": ref.kind,
        "reference_num": None if ref.images is None else len(ref.images),
        "fid_reference_statistics": "precomputed" if ref.mu is not None else "computed",
        "kid_subset_size": kid_size, "kid_subsets": kid_subsets if use_ref_images else None,
        **info,
    }
    if ref_feats is not None:
        kid = kid_features_to_metric(sample_feats, ref_feats, kid_subsets=kid_subsets,
                                     kid_subset_size=kid_size, rng_seed=seed, verbose=False)
        prc = prc_features_to_metric(sample_feats, ref_feats, prc_neighborhood=PRC_NEIGHBORHOOD,
                                     save_cpu_ram=True, verbose=False)
        out.update(kid_mean=float(kid[KEY_METRIC_KID_MEAN]), kid_std=float(kid[KEY_METRIC_KID_STD]),
                   precision=float(prc[KEY_METRIC_PRECISION]), recall=float(prc[KEY_METRIC_RECALL]))
    return out


def evaluate_file(samples_path: str | os.PathLike, reference: str | None = None,
                  dataset: str | None = None, *, extractor: str = "inception", split: str = "test",
                  kid_subset_size: int | None = None, reference_features: bool = True,
                  data_root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
    """`arflowbench eval`: samples file against ``--reference`` (dataset name, image file or
    folder, ADM batch) or ``--dataset``. Everything is loaded and checked before features run."""
    from arflowbench.metrics.evaluate import evaluate_samples, load_samples_labels
    from arflowbench.plugins import DATASET

    if (reference is None) == (dataset is None):
        raise ConfigError("pass one reference: --reference (dataset name, image .npz or folder, "
                          "ADM reference batch) or --dataset NAME")
    samples_path = Path(samples_path)
    images = load_samples_file(samples_path)
    if dataset is None and Path(reference).exists():
        return evaluate_reference(images, load_reference(reference), extractor=extractor,
                                  kid_subset_size=kid_subset_size, reference_features=reference_features,
                                  cache_dir=cache_dir, device=device)
    if dataset is None and reference not in DATASET.names():
        raise DataError(f"reference {reference!r} is neither a file, a folder nor a dataset "
                        f"(datasets: {', '.join(DATASET.names())})")
    labels = load_samples_labels(samples_path) if samples_path.suffix == ".npz" else None
    ds = DATASET.get(dataset or reference)(None, data_root)
    ds.check_available()
    return evaluate_samples(images, labels, ds, extractor=extractor, reference_split=split,
                            kid_subset_size=kid_subset_size, cache_dir=cache_dir, device=device)
