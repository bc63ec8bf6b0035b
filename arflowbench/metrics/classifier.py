"""A small CNN trained on the dataset itself: fast features for FID-style checks, and class accuracy.

Inception features cost about 0.2 s per image on a 2-core CPU; this classifier's penultimate layer
(128-d) costs microseconds, so tests and quick sweeps use it through the same torch-fidelity code
path as Inception. Numbers from the two extractors are not comparable with each other, or with
published FIDs: every result row names the extractor and its version.

The classifier is trained once per (dataset, image size, channels, extractor version, content of
the train split), deterministically (seeded init and batch order), and cached under
``<cache>/classifier/<key>.pt`` with its test accuracy in ``<key>.json`` beside it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from arflowbench.machine import torch_threads
from arflowbench.metrics.base import (
    FeatureWeightsError,
    atomic_write,
    cache_root,
    file_lock,
    sha1_file,
    tensor_digest,
)
from arflowbench.metrics.checksums import load_verified, save_verified, verify
from arflowbench.ui import count_bar

#: bump when the architecture or the training recipe changes
CLASSIFIER_VERSION = 1
FEATURE_DIM = 128

# Training recipe (part of CLASSIFIER_VERSION).
SEED = 0
WIDTH = 16
BATCH = 128
EPOCHS = 20
MIN_STEPS, MAX_STEPS = 200, 700  # tiny sets get enough steps; Fashion-MNIST stays ~1.5 epochs
LR = 2e-3


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # Batch norm: about +10 points of Fashion-MNIST accuracy at this short training budget.
    # In eval mode it uses running statistics, so features do not depend on the batch.
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers and a 128-d penultimate layer, for 8x8 to 64x64 inputs.

    The stem strides so that the rest of the network sees at most 16x16: convolutions are
    slow on a CPU, and class evidence in these small images survives the downsampling.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = WIDTH):
        super().__init__()
        self.arch = {"channels": channels, "num_classes": num_classes,
                     "image_size": image_size, "width": width}
        w, stride = width, max(1, image_size // 16)
        self.body = nn.Sequential(
            *_conv(channels, w, stride),  # (N, w, S, S), S = H / stride <= 16
            *_conv(w, 2 * w), nn.MaxPool2d(2),  # (N, 2w, S/2, S/2)
            *_conv(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(2),  # (N, 2w, 2, 2)
            nn.Flatten(),  # (N, 8w)
            nn.Linear(8 * w, FEATURE_DIM), nn.ReLU(),  # (N, 128): the feature layer
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> penultimate features (N, 128)."""
        return self.body(x.float().div(127.5).sub(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> logits (N, num_classes)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierInfo:
    """A trained, cached classifier: its weights file and the JSON record beside it."""

    path: Path
    meta: dict[str, Any]

    @property
    def test_accuracy(self) -> float:
        return float(self.meta["test_accuracy"])


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> SmallCNN:
    """Rebuild a `SmallCNN` from a file written by `dataset_classifier`."""
    try:
        blob = load_verified(path)
        model = SmallCNN(**blob["arch"])
        model.load_state_dict(blob["state_dict"])
    except (OSError, KeyError, RuntimeError) as exc:
        raise FeatureWeightsError(f"{path}: not a readable arflowbench classifier ({exc})") from None
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, num_classes) for uint8 images (N, C, H, W), batch by batch."""
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@contextmanager
def _single_thread(device: str | torch.device) -> Iterator[None]:
    """One CPU thread while training: the weights then do not depend on the core count, and
    these small convolutions gain little from threads (and lose much on a busy machine)."""
    with torch_threads(1 if torch.device(device).type == "cpu" else None):
        yield


def _train(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
           device: str | torch.device) -> tuple[SmallCNN, int]:
    """Seeded training: same data -> same weights (on CPU: any core count)."""
    n = len(images)
    steps = min(MAX_STEPS, max(MIN_STEPS, math.ceil(EPOCHS * n / BATCH)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)  # parameter init
        model = SmallCNN(images.shape[1], num_classes, images.shape[2]).to(device)
    gen = torch.Generator().manual_seed(SEED)  # batch order
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    model.train()
    order = torch.randperm(n, generator=gen)
    pos = 0
    with count_bar(f"train dataset classifier ({n} images)", steps) as advance:
        for _ in range(steps):
            if pos + BATCH > n:  # new epoch: reshuffle
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + BATCH]
            pos += BATCH
            loss = F.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            advance(1)
    return model.eval().requires_grad_(False), steps


def classifier_key(dataset: Any) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Cache key (dataset, geometry, version, train-content hash) plus the train split."""
    train = dataset.load("train")
    digest = tensor_digest(train.images, train.labels)
    c, h = train.images.shape[1], train.images.shape[2]
    key = f"{dataset.name}-c{c}-{h}px-v{CLASSIFIER_VERSION}-{digest[:8]}"
    return key, train.images, train.labels


def dataset_classifier(dataset: Any, cache_dir: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> ClassifierInfo:
    """The dataset's classifier, trained on its train split on first use and cached."""
    key, images, labels = classifier_key(dataset)
    folder = cache_root(cache_dir) / "classifier"
    path, meta_path = folder / f"{key}.pt", folder / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        verify(path)
        return ClassifierInfo(path, json.loads(meta_path.read_text()))
    with file_lock(folder / f"{key}.lock"):
        if not path.is_file():
            t0 = time.perf_counter()
            with _single_thread(device):
                model, steps = _train(images, labels, dataset.num_classes, device)
            seconds = time.perf_counter() - t0
            test = dataset.load("test")
            acc = (predict(model, test.images).argmax(1) == test.labels).float().mean().item()
            meta = {
                "dataset": dataset.name, "image_size": int(images.shape[2]),
                "channels": int(images.shape[1]), "num_classes": dataset.num_classes,
                "extractor_version": CLASSIFIER_VERSION, "feature_dim": FEATURE_DIM,
                "train_num": len(images), "train_steps": steps, "batch_size": BATCH,
                "seed": SEED, "train_seconds": round(seconds, 2),
                "test_num": len(test), "test_accuracy": acc,
            }
            blob = {"arch": model.arch, "state_dict": model.cpu().state_dict(), "meta": meta}
            save_verified(blob, path)
        meta = dict(load_verified(path)["meta"])
        meta["weights_sha1"] = sha1_file(path)
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        atomic_write(meta_path, lambda f: f.write(text.encode()))
    return ClassifierInfo(path, meta)
