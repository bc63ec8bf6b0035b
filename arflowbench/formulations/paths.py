"""Probability paths x_t = alpha_t x1 + sigma_t x0 (t = 0 noise, t = 1 data) and the quantities
the samplers need. Names are registered once in `PATHS`."""

from __future__ import annotations

import math

import torch


class LinearPath:
    """SiT's default: alpha_t = t, sigma_t = 1 - t, velocity target x1 - x0."""

    def alpha(self, t):
        return t, torch.ones_like(t)  # alpha_t, d alpha_t / dt

    def sigma(self, t):
        return 1 - t, -torch.ones_like(t)


class GVPPath:
    """Generalised variance-preserving: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)


PATHS = {"linear": LinearPath, "gvp": GVPPath}


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def interpolate(path, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
    """x_t and the velocity target d x_t / dt. t has the leading dims of x (e.g. (B,) or (B, S))."""
    a, da = (_bcast(v, x1) for v in path.alpha(t))
    s, ds = (_bcast(v, x1) for v in path.sigma(t))
    return a * x1 + s * x0, da * x1 + ds * x0


def score_from_velocity(path, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad log p_t(x) from the velocity (SiT's identity). Linear path: (t v - x) / (1 - t)."""
    a, da = (_bcast(u, x) for u in path.alpha(t))
    s, ds = (_bcast(u, x) for u in path.sigma(t))
    ratio = a / da
    var = s**2 - ratio * ds * s
    return (ratio * v - x) / var


def diffusion_sigma(path, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """SiT's "sigma" diffusion form w_t = sigma_t (linear path: 1 - t)."""
    return _bcast(path.sigma(t)[0], like)
