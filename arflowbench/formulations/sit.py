"""SiT: one image per training item, t ~ U(0, 1), velocity target on a chosen path.

Training: x1 data, x0 ~ N(0, I), x_t on the path (linear by default, GVP optional), loss =
mean squared error between the model's velocity and d x_t / dt. Labels are dropped to the null
class with probability `class_dropout` (0.1): this is what makes classifier-free guidance work.
Samplers: ODE euler / heun / dopri5, SDE Euler-Maruyama (see `samplers.py`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from arflowbench.data.base import ImageSet, to_model_range
from arflowbench.data.sequences import sample_images
from arflowbench.formulations.base import (
    ALL,
    Formulation,
    FormulationConfig,
    SampleResult,
    guided,
    randn,
)
from arflowbench.formulations.paths import PATHS, interpolate
from arflowbench.formulations.samplers import SAMPLERS
from arflowbench.models.interface import GenerativeModel


class SiTConfig(FormulationConfig):
    path: Literal[tuple(PATHS)] = "linear"  # type: ignore[valid-type]
    class_dropout: float = Field(0.1, ge=0, lt=1)


class SiTField:
    """v(x, t) of a SiT model at fixed labels, with optional guidance. Counts evaluations."""

    def __init__(self, model: GenerativeModel, labels: torch.Tensor, cfg_scale: float):
        self.model, self.cfg_scale, self.nfe = model, cfg_scale, 0
        self.guide = cfg_scale != 1.0
        null = torch.full_like(labels, model.null_class)
        self.y = torch.cat([labels, null]) if self.guide else labels

    def __call__(self, x: torch.Tensor, t: float, advance: bool) -> torch.Tensor:
        self.nfe += 1
        xin = torch.cat([x, x]) if self.guide else x
        tt = torch.full((xin.shape[0], 1), t, device=x.device)
        v = self.model(xin[:, None], tt, self.y)[:, 0]  # (B', C, H, W)
        return guided(v, self.cfg_scale) if self.guide else v


class SiT(Formulation):
    """Scalable Interpolant Transformers (Ma et al. 2024) as the single-image baseline."""

    name = "sit"
    version = 1
    Config = SiTConfig
    samplers: ClassVar[tuple[str, ...]] = tuple(SAMPLERS)

    @property
    def path(self):
        return PATHS[self.config.path]()

    def make_batch(self, data: ImageSet, batch_size: int, g: torch.Generator):
        x, y = sample_images(data, self.items_per_batch(batch_size), g)
        return x[:, None], y  # (B, 1, C, H, W), (B,)

    def training_loss(self, model: GenerativeModel, x: torch.Tensor, y: torch.Tensor,
                      g: torch.Generator, rows: slice = ALL) -> dict:
        # draws for the whole batch (B items), then only `rows` (b items) go through the model
        x1 = to_model_range(x[rows])  # (b, 1, C, H, W)
        x0 = randn(x.shape, g, x1.device, rows)  # (b, 1, C, H, W)
        t = torch.rand(x.shape[:2], generator=g)[rows].to(x1.device)  # (b, 1)
        xt, target = interpolate(self.path, x0, x1, t)
        y = self.drop_labels(y, model.null_class, g)[rows]  # (b,)
        v = model(xt, t, y)
        return {"loss": (v.float() - target).pow(2).mean()}

    @torch.no_grad()
    def sample(self, model: GenerativeModel, labels, steps, sampler, cfg_scale, g,
               **sampler_options) -> SampleResult:
        self.check_sampling(sampler, cfg_scale)
        shape = (len(labels), model.channels, model.image_size, model.image_size)
        x = randn(shape, g, labels.device)
        field = SiTField(model, labels, cfg_scale)
        x = SAMPLERS[sampler](field, x, steps, g, self.path, **sampler_options)
        return SampleResult(x, field.nfe)
