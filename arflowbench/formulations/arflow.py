"""ARFlow: autoregressive flow matching over sequences of images of one class.

Training item: S images (default 5) of one class, each with its own noise x0 and its own
t ~ U(0, 1). The S times are sorted ascending, so the noisiest image comes first and every image is
conditioned (through the chunk-causal attention) on noisier images of the same class. All S images
are targets: velocity MSE over the whole sequence. One label per sequence, dropped to the null class
with probability `class_dropout` (this is what makes classifier-free guidance work).
Ablations: ``ordering = "random"`` (times left unsorted), ``grouping = "random-class"`` (the S
images come from any class; the sequence label is that of the first image).

Sampling: the denoising trajectory *is* the autoregressive sequence. At step i the current noisy
image x_{t_i} is one chunk; the model's `step` runs it against the recurrent state holding every
earlier x_{t_0} ... x_{t_{i-1}} of the same trajectory and returns the velocity and the state with
x_{t_i} appended. What happens to the state, per sampler (see `samplers.py`, the ``advance`` protocol):

- euler / sde: every evaluation starts an accepted step (``advance=True``) and commits its state,
  so after n steps the state holds the n images x_{t_0} ... x_{t_{n-1}} (the SDE's final mean step
  is the n-th evaluation).
- heun: the predictor at t_i commits (the state now holds x_{t_0} ... x_{t_i}); the corrector at
  t_{i+1} (``advance=False``) runs its predicted x_{t_{i+1}} against that committed state - exactly
  the context the next accepted image will see - and its returned state is discarded. The state
  advances once per accepted step: after n steps it holds n images for 2n evaluations.
- dopri5 is not offered: its stages carry no accepted-step signal, so the context cannot grow.

Guidance doubles the batch as [conditional; null] and keeps one state row per half-row, so the
conditional and the null trajectories each see only their own history (as in the public code).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from arflowbench.data.base import ImageSet, to_model_range
from arflowbench.data.sequences import ClassGroupedSampler
from arflowbench.errors import ConfigError
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


class ARFlowConfig(FormulationConfig):
    #: S: images per training sequence (public code: 5)
    images_per_sequence: int = Field(5, ge=1)
    #: "sorted": times ascending, noisiest image first (ARFlow); "random": unsorted (ablation)
    ordering: Literal["sorted", "random"] = "sorted"
    #: "same-class": the S images share the class (ARFlow); "random-class": ablation
    grouping: Literal["same-class", "random-class"] = "same-class"
    path: Literal[tuple(PATHS)] = "linear"  # type: ignore[valid-type]
    class_dropout: float = Field(0.1, ge=0, lt=1)


class ARFlowField:
    """v(x, t) of an ARFlow model along one trajectory, with the recurrent state it carries.

    ``advance=True`` commits the state returned by the model's `step`; ``advance=False`` keeps the
    current one (see the module docstring). Counts evaluations (`nfe`) and commits (`advances`).
    `guide` defaults to ``cfg_scale != 1``; forcing it on at scale 1 runs both halves anyway.
    """

    def __init__(self, model: GenerativeModel, labels: torch.Tensor, cfg_scale: float,
                 guide: bool | None = None):
        self.model, self.cfg_scale = model, cfg_scale
        self.guide = cfg_scale != 1.0 if guide is None else guide
        null = torch.full_like(labels, model.null_class)
        self.y = torch.cat([labels, null]) if self.guide else labels  # (B',)
        # One state row per batch row: the null half has its own history, never the conditional's.
        self.state = model.init_state(len(self.y), device=labels.device)
        self.nfe = 0
        self.advances = 0

    def __call__(self, x: torch.Tensor, t: float, advance: bool) -> torch.Tensor:
        self.nfe += 1
        xin = torch.cat([x, x]) if self.guide else x  # (B', C, H, W)
        tt = torch.full((xin.shape[0],), t, device=x.device)  # (B',)
        v, new_state = self.model.step(xin, tt, self.y, self.state)  # pure: old state intact
        if advance:
            self.state = new_state
            self.advances += 1
        return guided(v, self.cfg_scale) if self.guide else v


class ARFlow(Formulation):
    """ARFlow (Hui et al. 2025): class-grouped image sequences, sorted noise levels, sampling
    that feeds every earlier denoising step back through the attention's recurrent state."""

    name = "arflow"
    version = 1
    Config = ARFlowConfig
    # dopri5 is left out: its stages give no accepted-step signal, so the state cannot advance.
    samplers: ClassVar[tuple[str, ...]] = tuple(k for k in SAMPLERS if k != "dopri5")
    # the context of earlier denoising steps lives in the model's recurrent state
    requires_step: ClassVar[bool] = True

    def __init__(self, config: ARFlowConfig | None = None):
        super().__init__(config)
        # id(ImageSet) -> (ImageSet, sampler); the set is held so its id cannot be reused.
        self._samplers: dict[int, tuple[ImageSet, ClassGroupedSampler]] = {}

    @property
    def path(self):
        return PATHS[self.config.path]()

    @property
    def images_per_item(self) -> int:
        return self.config.images_per_sequence

    # ------------------------------------------------------------------ data
    def sequence_sampler(self, data: ImageSet) -> ClassGroupedSampler:
        """The class-grouped sampler of `data` (built once per ImageSet, then cached)."""
        hit = self._samplers.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
        S, same = self.config.images_per_sequence, self.config.grouping == "same-class"
        counts = data.class_counts()
        present = counts[counts > 0]
        if same and len(present) and S > int(present.min()):
            raise ConfigError(
                f"{self.name}: images_per_sequence S={S} is larger than the smallest class "
                f"({int(present.min())} images): use images_per_sequence <= {int(present.min())}"
            )
        sampler = ClassGroupedSampler(data, S, same_class=same)
        self._samplers[id(data)] = (data, sampler)
        return sampler

    def check_data(self, data: ImageSet) -> None:
        self.sequence_sampler(data)

    def make_batch(self, data: ImageSet, batch_size: int, g: torch.Generator):
        items = self.items_per_batch(batch_size)
        return self.sequence_sampler(data).sample(items, g)  # (B, S, C, H, W) uint8, (B,)

    # ------------------------------------------------------------------ training
    def training_loss(self, model: GenerativeModel, x: torch.Tensor, y: torch.Tensor,
                      g: torch.Generator, rows: slice = ALL) -> dict:
        # draws for the whole batch (B items), then only `rows` (b items) go through the model
        x1 = to_model_range(x[rows])  # (b, S, C, H, W)
        x0 = randn(x.shape, g, x1.device, rows)  # own noise per image
        t = torch.rand(x.shape[:2], generator=g)  # (B, S): own time per image
        if self.config.ordering == "sorted":
            t = t.sort(dim=1).values  # ascending: the noisiest image (t near 0) first
        t = t[rows].to(x1.device)  # (b, S)
        xt, target = interpolate(self.path, x0, x1, t)
        y = self.drop_labels(y, model.null_class, g)[rows]  # one label per sequence
        v = model(xt, t, y)  # (b, S, C, H, W), the S images as S chunks
        err = (v.float() - target).pow(2)
        per_pos = err.detach().mean(dim=(0, 2, 3, 4)).tolist()  # S floats, one sync
        out: dict = {"loss": err.mean()}
        out.update({f"loss_pos{i}": val for i, val in enumerate(per_pos)})
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, model: GenerativeModel, labels, steps, sampler, cfg_scale, g,
               **sampler_options) -> SampleResult:
        self.check_sampling(sampler, cfg_scale)
        self.check_model(model)
        shape = (len(labels), model.channels, model.image_size, model.image_size)
        x = randn(shape, g, labels.device)
        field = ARFlowField(model, labels, cfg_scale)
        x = SAMPLERS[sampler](field, x, steps, g, self.path, **sampler_options)
        return SampleResult(x, field.nfe)
