"""`validate --estimate`: what a matrix will cost, before it runs.

Per cell: parameters; training FLOPs per image, counted by `torch.utils.flop_counter` on one
real training step of the cell's formulation on a small batch (forward and backward); sampling
FLOPs per image, counted on one short real sampling call (guidance included) and scaled to the
cell's NFE; the images each stage processes (training: steps x batch, counted once per shared
training; sampling: the grid, every evaluation point and the final evaluation). Hours follow
from a stated peak FLOP/s and MFU. The counts run on CPU with the cell's own model, so an XL
model takes seconds and some GB of memory. For backends with a growing KV cache (softmax in
ARFlow) the short sampling call undercounts later steps: the estimate is a lower bound there.

A cell whose data is not prepared yet (`Resolved.data_missing`: an ImageNet latent cache checked
on a laptop) is counted on random model-space data of the dataset's declared geometry (channels,
side, classes): FLOPs do not depend on the values. A training's count is kept per train_id, so
cells sharing one (a guidance sweep) count it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arflowbench.metrics.throughput import count_flops
from arflowbench.resolve import Resolved
from arflowbench.trainer import step_generator

#: sampler steps of the short counted sampling call
_COUNT_STEPS = 2
#: training FLOPs per image, per train_id (a deterministic function of it)
_TRAIN_FLOPS: dict[str, float] = {}
#: the last model built, by train_id: cells sharing a training are counted on one build (an
#: XL model takes a while to initialise on a CPU)
_LAST_MODEL: dict[str, torch.nn.Module] = {}


class GeometryData:
    """Stands in for a training split that is not on this machine: `per_class` items of every
    class, drawn as Gaussian model-space tensors of shape (C, H, W) (the `take` protocol of
    data/base.py)."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, per_class: int):
        self.shape, self.num_classes = shape, num_classes
        self.labels = torch.arange(num_classes).repeat_interleave(per_class)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def take(self, idx: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((*idx.shape, *self.shape), generator=g)  # (*idx.shape, C, H, W)


@dataclass(frozen=True)
class CellCost:
    params: int
    train_flops_per_image: float
    sample_flops_per_image: float  # at the cell's NFE, guidance included
    train_images: int  # 0 when the cell reuses a training counted before
    sample_images: int

    @property
    def train_flops(self) -> float:
        return self.train_flops_per_image * self.train_images

    @property
    def sample_flops(self) -> float:
        return self.sample_flops_per_image * self.sample_images

    def hours(self, peak_flops: float, mfu: float) -> float:
        return (self.train_flops + self.sample_flops) / (peak_flops * mfu) / 3600


def sampled_images(res: Resolved) -> int:
    """Images the cell generates: grid, evaluation points and final evaluation."""
    s, e = res.spec.sample, res.spec.eval
    points = len(e.at) * (e.at_num_samples or e.num_samples)
    return res.dataset.num_classes * s.grid_per_class + points + e.num_samples


@torch.no_grad()
def _sample_flops_per_image(res: Resolved, model) -> float:
    s = res.spec.sample
    labels = torch.zeros(1, dtype=torch.long)
    out = {}

    def call() -> None:
        out["r"] = res.formulation.sample(model, labels, _COUNT_STEPS, s.sampler, s.cfg_scale,
                                          torch.Generator().manual_seed(0),
                                          rtol=s.rtol, atol=s.atol)

    flops = count_flops(call)
    nfe_per_step = out["r"].nfe / _COUNT_STEPS
    return flops / max(out["r"].nfe, 1) * nfe_per_step * s.steps


def _train_flops_per_image(res: Resolved, model) -> float:
    """One training item's forward and backward, counted (the smallest real batch)."""
    if res.train_id in _TRAIN_FLOPS:
        return _TRAIN_FLOPS[res.train_id]
    ds = res.dataset
    batch = res.formulation.images_per_item
    data = (GeometryData((ds.channels, ds.image_size, ds.image_size), ds.num_classes, batch)
            if res.data_missing else ds.load("train"))
    g = step_generator(0, 0)
    x, y = res.formulation.make_batch(data, batch, g)
    model.train()
    train = count_flops(lambda: res.formulation.training_loss(model, x, y, g)["loss"].backward())
    model.zero_grad(set_to_none=True)
    model.eval()
    _TRAIN_FLOPS[res.train_id] = train / batch
    return train / batch


def cell_cost(res: Resolved, *, count_training: bool = True) -> CellCost:
    """Count one cell's FLOPs (see the module docstring)."""
    if res.train_id not in _LAST_MODEL:
        _LAST_MODEL.clear()
        torch.manual_seed(0)
        _LAST_MODEL[res.train_id] = res.build_model("cpu")
    model = _LAST_MODEL[res.train_id]
    per_image = _train_flops_per_image(res, model)
    t = res.spec.train
    return CellCost(params=res.param_count, train_flops_per_image=per_image,
                    sample_flops_per_image=_sample_flops_per_image(res, model),
                    train_images=t.steps * t.batch_size if count_training else 0,
                    sample_images=sampled_images(res))


def fmt_flops(f: float) -> str:
    for div, unit in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if f >= div:
            return f"{f / div:.3g} {unit}FLOP"
    return f"{f:.3g} FLOP"
