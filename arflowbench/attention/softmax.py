"""Full softmax attention (DiT/SiT style), chunk-causal across chunks.

Inside a chunk every token sees every other token (bidirectional, as in one SiT image); across
chunks a token sees only earlier chunks. With a single chunk no mask is built at all, which is
exactly SiT's bidirectional attention. Sampling keeps a KV cache that grows by one chunk per step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arflowbench.attention import reference as ref
from arflowbench.attention.base import AttentionBackend, chunk_causal_mask
from arflowbench.plugins import Availability, PluginBase

KVCache = tuple[torch.Tensor, torch.Tensor]


class SoftmaxAttention(AttentionBackend):
    """Multi-head softmax attention with a fused qkv projection (as in DiT's timm Attention).

    ``cond`` is accepted for the common contract and ignored. The step state is a KV cache
    ``(k, v)``, each ``(B, H, T, d)`` with T = chunk_size * (number of chunks seen so far).
    """

    name = "softmax"
    version = 1
    conformance_variants: ClassVar[tuple[dict, ...]] = ({},)

    class Config(PluginBase.Config):
        """No options."""

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        super().__init__(dim, num_heads, chunk_size, **options)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        return Availability(True, "torch scaled_dot_product_attention")

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d)
        return q, k, v

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        b, h, n, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, h * d))  # (B, L, D)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        num_chunks = self.check_sequence(x)
        q, k, v = self._qkv(x)
        # One chunk = SiT's bidirectional case: no mask, so SDPA can take its fastest kernel.
        mask = None
        if num_chunks > 1:
            mask = chunk_causal_mask(num_chunks, self.chunk_size, device=x.device)  # (L, L)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, d)
        return self._out(o)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache: two (B, H, 0, d) tensors."""
        w = self.qkv.weight
        shape = (batch_size, self.num_heads, 0, self.head_dim)
        device = w.device if device is None else device
        empty = torch.zeros(shape, dtype=w.dtype, device=device)
        return empty, empty.clone()

    def step(
        self, x: torch.Tensor, state: KVCache, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Attend one chunk to itself and every cached chunk; return the grown cache."""
        self.check_chunk(x)
        q, k, v = self._qkv(x)  # (B, H, N, d)
        k_cache, v_cache = state
        # torch.cat allocates new tensors: the caller's cache is never modified (pure step).
        k_all = torch.cat([k_cache.to(k.dtype), k], dim=2)  # (B, H, T + N, d)
        v_all = torch.cat([v_cache.to(v.dtype), v], dim=2)
        # The chunk sees all earlier chunks and all of itself: no mask needed.
        o = F.scaled_dot_product_attention(q, k_all, v_all)  # (B, H, N, d)
        return self._out(o), (k_all, v_all)

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Explicit softmax(Q K^T / sqrt(d) + mask) V in float64."""
        num_chunks = self.check_sequence(x)
        qkv = ref.linear_ref(x, self.qkv)  # (B, L, 3D)
        q, k, v = (ref.split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))
        allowed = ref.chunk_causal_allowed(num_chunks, self.chunk_size, device=x.device)
        o = ref.masked_softmax_attention_ref(q, k, v, allowed, self.head_dim**-0.5)
        return ref.linear_ref(ref.merge_heads(o), self.proj).to(x.dtype)
