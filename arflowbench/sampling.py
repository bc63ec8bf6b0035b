"""The sampling stage: batched generation from a trained model, sample grids, NFE.

`generate` draws images for a list of labels in batches from one seeded generator (so the same
seed, labels and batch size give the same images), through the formulation's sampler with the
run's sampler settings, and turns the model's output into uint8 images with the dataset's
`decode` when it has one (latent datasets decode through their VAE), else `to_uint8`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arflowbench.config import SampleSpec
from arflowbench.data.base import to_uint8
from arflowbench.ui import sample_bar


@dataclass
class Sampled:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) the classes asked for
    nfe: int  # network evaluations per image
    batch_images_per_s: list[float]  # one per batch (the first excluded when there are several)
    seconds: float

    @property
    def images_per_s(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("nan")


def class_balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., C-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(num) % num_classes


def grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """`per_class` images of every class, class by class (one grid row per class)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def _decoder(dataset: Any):
    decode = getattr(dataset, "decode", None)
    return decode if callable(decode) else to_uint8


@torch.no_grad()
def generate(formulation, model, labels: torch.Tensor, spec: SampleSpec, dataset: Any, *,
             device: str, seed: int, batch_size: int, progress: bool = False,
             what: str = "sample") -> Sampled:
    """Generate one image per label, in batches, from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    decode = _decoder(dataset)
    out, rates, nfe, t_all = [], [], 0, time.perf_counter()
    with sample_bar(what, len(labels), progress) as bar:
        for i in range(0, len(labels), batch_size):
            t0 = time.perf_counter()
            chunk = labels[i : i + batch_size].to(device)
            r = formulation.sample(model, chunk, spec.steps, spec.sampler, spec.cfg_scale, g,
                                   rtol=spec.rtol, atol=spec.atol)
            out.append(decode(r.images).cpu())
            rates.append(len(chunk) / (time.perf_counter() - t0))
            nfe = r.nfe
            bar(min(i + batch_size, len(labels)), nfe, rates[-1])
    if len(rates) > 1:
        rates = rates[1:]  # warm-up batch
    return Sampled(torch.cat(out), labels.cpu(), nfe, rates, time.perf_counter() - t_all)


def save_grid(images: torch.Tensor, per_row: int, path: Path, min_side: int = 32) -> None:
    """uint8 (N, C, H, W) -> PNG grid, one class per row, upscaled so tiny images stay visible."""
    from torchvision.utils import save_image

    scale = max(1, min_side // images.shape[-1])
    imgs = images.float().div(255)
    if scale > 1:
        imgs = torch.nn.functional.interpolate(imgs, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(imgs, path, nrow=per_row, padding=2, pad_value=1.0)
