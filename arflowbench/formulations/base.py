"""The formulation contract: a formulation owns the probability path, the training target and
the sampler. The trainer only sees `make_batch` and `training_loss`.

- ``make_batch(data, batch_size, g) -> (x, y)``: x (B, S, C, H, W) uint8 images, y (B,) labels.
  `batch_size` counts images; a formulation with S images per item draws batch_size // S items.
- ``training_loss(model, x, y, g, rows=ALL) -> dict``: ``loss`` (scalar tensor) plus floats to
  log. x, y are the whole (global) batch; every random draw (noise, times, label dropout) is made
  for the whole batch from `g`, then only the items `rows` (a slice of the batch dimension) go
  through the model and the loss is the mean over them. So the draws of an item never depend on
  how the batch is split: data-parallel ranks and gradient-accumulation micro-batches that each
  take equal slices and average their losses compute the loss of the whole batch (`trainer`).
  With ``rows=ALL`` (the default) it is the plain single-process loss, bit for bit.
- ``sample(model, labels, steps, sampler, cfg_scale, g) -> SampleResult``: images in [-1, 1]
  and the number of network evaluations (NFE) actually spent, counted per batch row's forward
  (a guided evaluation runs conditional and null halves in one batch and counts once).

- Sampling noise: `g` is a `torch.Generator` or a `RowNoise` (one generator per batch row, what
  `sampling.generate` passes); draw through `randn` so that row i's noise depends only on its own
  generator, which makes a sample independent of the batch it was generated in.

``model`` is a `GenerativeModel` (models/interface.py): a formulation uses only its call, its
recurrent ``init_state``/``step`` (after checking ``supports_step``), ``null_class``, ``channels``
and ``image_size``, never the network's layers. The conformance suite
(tests/conformance/test_formulations.py) runs every registered formulation against a model that
offers nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from arflowbench.data.base import ImageSet
from arflowbench.errors import ConfigError
from arflowbench.models.interface import GenerativeModel
from arflowbench.plugins import PluginBase

#: `training_loss`'s default `rows`: the whole batch
ALL = slice(None)


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, C, H, W) float in [-1, 1] (not clamped)
    nfe: int


class FormulationConfig(BaseModel):
    """Options every formulation has."""

    model_config = {"extra": "forbid", "frozen": True}
    path: str = "linear"
    #: probability of replacing the label by the null class (enables classifier-free guidance)
    class_dropout: float = Field(0.1, ge=0, lt=1)


class Formulation(PluginBase):
    """Base class of generative formulations."""

    Config: ClassVar[type[BaseModel]] = FormulationConfig
    #: sampler names this formulation accepts (validated before a run starts)
    samplers: ClassVar[tuple[str, ...]] = ()
    #: samples through the model's recurrent `step` (the model must have `supports_step`)
    requires_step: ClassVar[bool] = False

    def __init__(self, config: BaseModel | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def images_per_item(self) -> int:
        """S: images per training item (1 for SiT)."""
        return 1

    def items_per_batch(self, batch_size: int) -> int:
        S = self.images_per_item
        if batch_size % S:
            raise ConfigError(f"{self.name}: train.batch_size {batch_size} (images per step) must "
                              f"be a multiple of images_per_sequence {S}")
        return batch_size // S

    def check_data(self, data: ImageSet) -> None:
        """Raise ConfigError if this formulation cannot train on `data`."""

    def check_model(self, model: GenerativeModel) -> None:
        """Raise ConfigError if this formulation cannot use `model` (e.g. no recurrent step)."""
        if self.requires_step and not model.supports_step:
            raise ConfigError(f"{self.name}: the model has no recurrent step (supports_step is "
                              "False: an attention backend lacks init_state/step); "
                              f"{self.name} sampling needs one")

    def check_sampling(self, sampler: str, cfg_scale: float) -> None:
        if sampler not in self.samplers:
            raise ConfigError(f"{self.name}: unknown sampler {sampler!r} "
                              f"(allowed: {', '.join(self.samplers)})")
        if cfg_scale != 1.0 and self.config.class_dropout == 0:
            raise ConfigError(f"{self.name}: cfg_scale {cfg_scale} needs a model trained with "
                              "class_dropout > 0 (this model never saw the null class)")

    def drop_labels(self, y: torch.Tensor, null_id: int, g: torch.Generator) -> torch.Tensor:
        """Replace each label by the null class with probability class_dropout."""
        drop = torch.rand(y.shape, generator=g) < self.config.class_dropout
        return torch.where(drop.to(y.device), torch.full_like(y, null_id), y)

    def make_batch(self, data: ImageSet, batch_size: int, g: torch.Generator):
        raise NotImplementedError

    def training_loss(self, model: GenerativeModel, x: torch.Tensor, y: torch.Tensor,
                      g: torch.Generator, rows: slice = ALL) -> dict:
        """The loss of items `rows` of the batch (x, y), with draws made for the whole batch."""
        raise NotImplementedError

    def sample(self, model: GenerativeModel, labels: torch.Tensor, steps: int, sampler: str,
               cfg_scale: float, g: torch.Generator, **sampler_options) -> SampleResult:
        """`sampler_options`: rtol/atol for adaptive samplers."""
        raise NotImplementedError


class RowNoise:
    """One generator per batch row: row i's draws come from its own generator only, so a row's
    noise does not depend on the batch size or on its position in the batch.

    `seeds` (B,) ints; `randn((B, ...))` draws each row's (...) from that row's generator."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"RowNoise has {len(self.generators)} rows, asked for {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g)
                            for g in self.generators])


def randn(shape, g: torch.Generator | RowNoise, device, rows: slice = ALL) -> torch.Tensor:
    """Gaussian noise drawn on the CPU then moved: identical across devices for the same seed.
    With a `RowNoise`, row by row from each row's generator. `rows`: keep only these rows of
    the draw (made for the whole `shape`), before moving them."""
    if isinstance(g, RowNoise):
        return g.randn(shape)[rows].to(device)
    return torch.randn(shape, generator=g)[rows].to(device)


def guided(v_both: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(2B, ...) [conditional; null] -> v_u + s (v_c - v_u), on every channel."""
    v_c, v_u = v_both.chunk(2, dim=0)
    return v_u + cfg_scale * (v_c - v_u)
