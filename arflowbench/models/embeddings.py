"""DiT embedders: fixed 2-D sin-cos positions, timestep frequencies + MLP, labels with a null id."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] embedding."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().flatten()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed positional embedding, half the width for each axis."""
    if dim % 4:
        raise ValueError(f"width {dim} must be divisible by 4 for 2-D sin-cos positions")
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, ys), sincos_1d(dim // 2, xs)], dim=1)
    return emb.float()


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (.., D): sinusoidal frequencies then a 2-layer MLP (as in SiT)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def frequencies(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
        args = t.float()[..., None] * freqs  # (..., half)
        return torch.cat([args.cos(), args.sin()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t))


class LabelEmbedder(nn.Module):
    """Class ids -> (B, D). Id `num_classes` is the null class used for guidance; the
    formulation replaces labels with it (label dropout), the embedder only looks them up."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)
