"""The sampling stage: batched generation from a trained model, sample grids, NFE.

`generate` draws images for a list of labels through the formulation's sampler with the run's
sampler settings, and turns the model's output into uint8 images with the dataset's `decode`
when it has one (latent datasets decode through their VAE), else `to_uint8`.

Sample i is drawn from its own generator, seeded by (seed, i) (`sample_seed`, through a
`RowNoise`): the sample set depends neither on the batch size nor on the number of ranks. In a
data-parallel cell the ranks generate their shards of every round of world x batch_size samples
and rank 0 gathers them into one uint8 array (the only copy of the whole set; each rank holds
one batch at a time besides), writes the ADM-style ``.npz`` (`save_npz`) and scores it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arflowbench.config import SampleSpec
from arflowbench.data.base import to_uint8
from arflowbench.distributed import World, shard
from arflowbench.formulations.base import RowNoise
from arflowbench.ui import sample_bar

#: bump when the sampled images of a run change (feeds the run hash, not the training's)
#: 2: sample i from its own generator seeded by (seed, i) (was: one generator per call)
SAMPLING_VERSION = 2


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


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample i of a run whose sampling seed is `seed`."""
    return (seed * 2**32 + i) % 2**63


@torch.no_grad()
def generate(formulation, model, labels: torch.Tensor, spec: SampleSpec, dataset: Any, *,
             device: str, seed: int, batch_size: int, progress: bool = False,
             what: str = "sample", world: World | None = None) -> Sampled:
    """Generate one image per label, sample i from a generator seeded by (seed, i), in rounds of
    world.size x `batch_size`. Rank 0 returns every image; other ranks an empty array."""
    world = world or World()
    if len(labels) < world.size:  # too few to give every rank one: each does all, alone
        world = World(world.rank, 1)
    decode = _decoder(dataset)
    n, out, rates, nfe, t_all = len(labels), None, [], 0, time.perf_counter()
    round_size = world.size * batch_size
    with sample_bar(what, n, progress and world.is_main) as bar:
        for lo in range(0, n, round_size):
            t0 = time.perf_counter()
            m = min(round_size, n - lo)
            mine = [lo + j for j in shard(m, world)]  # this rank's sample indices, >= 1 of them
            chunk = labels[mine].to(device)
            noise = RowNoise([sample_seed(seed, i) for i in mine])
            r = formulation.sample(model, chunk, spec.steps, spec.sampler, spec.cfg_scale, noise,
                                   rtol=spec.rtol, atol=spec.atol)
            imgs = decode(r.images)  # (b, C, H, W) uint8
            nfe = r.nfe
            parts = world.gather(_pad(imgs, -(-m // world.size)))
            if parts is not None:
                if out is None:
                    out = torch.empty((n, *imgs.shape[1:]), dtype=torch.uint8)
                for rank, part in enumerate(parts):  # rank order = index order
                    a, b = (lo + k for k in _bounds(m, rank, world.size))
                    out[a:b] = part[: b - a]
            rates.append(m / (time.perf_counter() - t0))
            if bar:
                bar(lo + m, nfe, rates[-1])
    if len(rates) > 1:
        rates = rates[1:]  # warm-up round
    images = out if out is not None else torch.empty(0, dtype=torch.uint8)
    return Sampled(images, labels.cpu(), nfe, rates, time.perf_counter() - t_all)


def _bounds(m: int, rank: int, size: int) -> tuple[int, int]:
    """`shard`'s range of rank `rank` as (start, stop)."""
    return m * rank // size, m * (rank + 1) // size


def _pad(imgs: torch.Tensor, rows: int) -> torch.Tensor:
    """`imgs` (b, ...) padded with zero rows to (rows, ...): gathered shards have one shape."""
    if len(imgs) == rows:
        return imgs
    return torch.cat([imgs, imgs.new_zeros((rows - len(imgs), *imgs.shape[1:]))])


def npz_name(images: torch.Tensor) -> str:
    """ADM's file name of a sample batch: samples_NxHxWxC.npz."""
    n, c, h, w = images.shape
    return f"samples_{n}x{h}x{w}x{c}.npz"


def save_npz(images: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """The ADM-style sample batch: arr_0 uint8 (N, H, W, C), arr_1 int64 (N,) labels; written to a
    temporary file and renamed, so a reader never sees half of one."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        # a view: numpy writes a non-contiguous array in buffered chunks, no second full copy
        np.savez(tmp, images.permute(0, 2, 3, 1).numpy(), labels.numpy().astype(np.int64))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_grid(images: torch.Tensor, per_row: int, path: Path, min_side: int = 32) -> None:
    """uint8 (N, C, H, W) -> PNG grid, one class per row, upscaled so tiny images stay visible."""
    from torchvision.utils import save_image

    scale = max(1, min_side // images.shape[-1])
    imgs = images.float().div(255)
    if scale > 1:
        imgs = torch.nn.functional.interpolate(imgs, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(imgs, path, nrow=per_row, padding=2, pad_value=1.0)
