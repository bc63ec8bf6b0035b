"""Slow, obvious plain-PyTorch references for the attention backends.

These functions exist so that the conformance suite can check every fast path against code that
is easy to read line by line. They favour clarity over speed: explicit loops over chunks and
tokens, float64 math, no fused kernels. Nothing here is used on a training or sampling path.
The fast backends (softmax.py, hybrid.py) are written independently of this file.
"""

from __future__ import annotations

import torch
from torch import nn

REF_DTYPE = torch.float64


def linear_ref(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``x W^T + b`` in float64 (x: (..., D_in) -> (..., D_out))."""
    y = x.to(REF_DTYPE) @ layer.weight.to(REF_DTYPE).T
    if layer.bias is not None:
        y = y + layer.bias.to(REF_DTYPE)
    return y


def rms_norm_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension, no affine: x / sqrt(mean(x^2) + eps)."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, width = x.shape
    return x.reshape(b, n, num_heads, width // num_heads).permute(0, 2, 1, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


def masked_softmax_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, with mask = -inf where ``allowed`` is False.

    q: (B, H, Lq, d), k/v: (B, H, Lk, d), allowed: (Lq, Lk) bool or None (everything allowed).
    """
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v  # (B, H, Lq, d)


def chunk_causal_allowed(num_chunks: int, chunk_size: int, device=None) -> torch.Tensor:
    """(L, L) bool: query token i may see key token j iff chunk(j) <= chunk(i), by a double loop."""
    n = num_chunks * chunk_size
    allowed = torch.zeros(n, n, dtype=torch.bool, device=device)
    for i in range(n):
        for j in range(n):
            allowed[i, j] = (j // chunk_size) <= (i // chunk_size)
    return allowed


def hybrid_mix_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    chunk_size: int,
    inner: str = "softmax",
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ARFlow's hybrid chunk-wise attention by explicit loops over chunks and tokens.

    q, k, v: (B, H, L, d) already normalised (k already scaled by d^-1/2);
    log_decay: (B, H, L) per-token log-decay g_t (None: no decay at all);
    inner: "softmax" (softmax(q k^T) v inside the chunk) or "linear" ((q k^T) v inside the chunk);
    state: (B, H, d, d) entering the first chunk as is (None: zeros).
    Returns the mixed values (B, H, L, d) and the state after the last chunk.
    """
    b, h, n, d = q.shape
    if state is None:
        state = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype, device=q.device)
    s = state
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    for start in range(0, n, chunk_size):
        stop = start + chunk_size
        kc, vc = k[:, :, start:stop], v[:, :, start:stop]  # (B, H, N, d)
        running = torch.zeros(b, h, dtype=q.dtype, device=q.device)  # cumsum of g up to token i
        for i in range(start, stop):
            qi = q[:, :, i]  # (B, H, d)
            scores = torch.einsum("bhd,bhnd->bhn", qi, kc)  # (B, H, N)
            weights = torch.softmax(scores, dim=-1) if inner == "softmax" else scores
            inner_i = torch.einsum("bhn,bhnd->bhd", weights, vc)
            if log_decay is not None:
                running = running + log_decay[:, :, i]
            q_dec = qi * torch.exp(running)[..., None]
            cross_i = torch.einsum("bhk,bhkv->bhv", q_dec, s)
            out[:, :, i] = inner_i + cross_i
        # state update: decay by exp(mean g over the chunk), then add sum_j k_j^T v_j
        kv = torch.zeros_like(s)
        for j in range(start, stop):
            kv = kv + k[:, :, j, :, None] * v[:, :, j, None, :]
        gamma = 1.0 if log_decay is None else torch.exp(log_decay[:, :, start:stop].mean(-1))
        s = (gamma[..., None, None] if log_decay is not None else gamma) * s + kv
    return out, s
