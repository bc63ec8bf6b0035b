"""Samplers shared by every formulation, integrating dx/dt = v(x, t) from t = 0 (noise) to 1.

A sampler drives a `VelocityField`: ``field(x, t, advance) -> v`` with x (B, ...) and t a float.
``advance=True`` marks the first evaluation of an accepted step: a stateful field (ARFlow's
autoregressive context) commits the state produced by that evaluation. Extra evaluations inside
a step (Heun's corrector, dopri5's stages) pass ``advance=False`` and leave the state as it is,
so the context grows by exactly one image per accepted step.

Names are registered once, in `SAMPLERS`; formulations list the subset they accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from arflowbench.formulations.paths import diffusion_sigma, score_from_velocity

#: size of SiT's final deterministic "mean" step of the SDE sampler
LAST_STEP_SIZE = 0.04


class VelocityField(Protocol):
    nfe: int

    def __call__(self, x: torch.Tensor, t: float, advance: bool) -> torch.Tensor: ...


def euler(field: VelocityField, x: torch.Tensor, steps: int, g: torch.Generator, path,
        **_tol) -> torch.Tensor:
    """ODE Euler over `steps` equal intervals of [0, 1]: NFE = steps."""
    ts = torch.linspace(0, 1, steps + 1).tolist()
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * field(x, t0, advance=True)
    return x


def heun(field: VelocityField, x: torch.Tensor, steps: int, g: torch.Generator, path,
        **_tol) -> torch.Tensor:
    """ODE Heun (2nd order) over `steps` intervals: NFE = 2 * steps. The corrector evaluation
    does not advance a stateful field."""
    ts = torch.linspace(0, 1, steps + 1).tolist()
    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = t1 - t0
        v0 = field(x, t0, advance=True)
        x_pred = x + dt * v0
        v1 = field(x_pred, t1, advance=False)
        x = x + dt * 0.5 * (v0 + v1)
    return x


def randn(shape, g, device) -> torch.Tensor:
    """`formulations.base.randn` (imported late: base imports this package's plugins)."""
    from arflowbench.formulations.base import randn as draw

    return draw(shape, g, device)


def sde(field: VelocityField, x: torch.Tensor, steps: int, g: torch.Generator, path,
        **_tol) -> torch.Tensor:
    """SDE Euler-Maruyama with SiT's "sigma" diffusion w_t = sigma_t and a final mean step.

    dx = [v + w_t * score] dt + sqrt(2 w_t) dW on t in [0, 1 - 0.04] (steps - 1 intervals), then
    one noise-free step of size 0.04 with the same drift: NFE = steps (SiT's default 250)."""
    ts = torch.linspace(0, 1 - LAST_STEP_SIZE, max(steps, 1)).tolist()

    def drift(x, t):
        tt = torch.full((x.shape[0],), t, device=x.device)
        v = field(x, t, advance=True)
        return v + diffusion_sigma(path, tt, x) * score_from_velocity(path, v, x, tt), tt

    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = t1 - t0
        d, tt = drift(x, t0)
        noise = randn(x.shape, g, x.device)  # per row with a RowNoise: batch-independent
        x = x + d * dt + torch.sqrt(2 * diffusion_sigma(path, tt, x) * dt) * noise
    d, _ = drift(x, ts[-1])
    return x + d * LAST_STEP_SIZE


def dopri5(field: VelocityField, x: torch.Tensor, steps: int, g, path, *, rtol: float = 1e-3,
           atol: float = 1e-6) -> torch.Tensor:
    """Adaptive Dormand-Prince through torchdiffeq; `steps` is ignored, NFE is what it spent.
    Stateless fields only (no accepted-step signal reaches the stages)."""
    from torchdiffeq import odeint

    def f(t, x):
        return field(x, float(t), advance=False)

    ts = torch.tensor([0.0, 1.0], device=x.device)
    return odeint(f, x, ts, method="dopri5", rtol=rtol, atol=atol)[-1]


SAMPLERS: dict[str, Callable] = {
    "euler": euler,
    "heun": heun,
    "sde": sde,
    "dopri5": dopri5,
}
