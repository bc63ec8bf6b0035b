"""`local` attention: softmax inside each chunk (image), no attention across chunks."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arflowbench.attention.base import AttentionBackend


class LocalAttention(AttentionBackend):
    """Per-image softmax attention; chunk-causal trivially (a chunk sees only itself).

    The recurrent state is empty: `step` needs nothing from earlier chunks."""

    name = "local"
    version = 1
    conformance_variants: ClassVar[tuple[dict, ...]] = ({},)

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options):
        super().__init__(dim, num_heads, chunk_size, **options)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.implementation = "torch scaled_dot_product_attention (per chunk)"

    def _heads(self, x: torch.Tensor):
        """(B, C, N, D) -> q, k, v each (B, C, H, N, d)."""
        B, C, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, C, N, 3, self.num_heads, self.head_dim)
        return qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        B, C, N, D = x.shape
        q, k, v = self._heads(x)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, C, H, N, d)
        return self.proj(o.transpose(2, 3).reshape(B, C, N, D))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        chunks = self.check_sequence(x)
        B, L, D = x.shape
        return self._attend(x.reshape(B, chunks, self.chunk_size, D)).reshape(B, L, D)

    def init_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, 0, device=device)

    def step(self, x: torch.Tensor, state: torch.Tensor, cond: torch.Tensor | None = None):
        self.check_chunk(x)
        return self._attend(x[:, None])[:, 0], state

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        chunks = self.check_sequence(x)
        B, L, D = x.shape
        q, k, v = self._heads(x.reshape(B, chunks, self.chunk_size, D))
        w = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        o = (w @ v).transpose(2, 3).reshape(B, chunks, self.chunk_size, D)
        return self.proj(o).reshape(B, L, D)
