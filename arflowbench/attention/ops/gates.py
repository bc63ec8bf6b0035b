"""ARFlow's decay gate, written once for every layer that uses it.

- per-token log-decay: g_t = logsigmoid(decay_proj(x_t + c_t)) / 16, one scalar per head and
  token (always < 0, so every decay below is in (0, 1));
- chunk decay: gamma_c = exp(mean of g over chunk c), applied to the state between chunks;
- in-chunk cumulative decay: exp(G_i), G_i = inclusive cumsum of g inside the chunk up to token i,
  applied to the queries of the cross-chunk term.

The slow float64 twin of `gate_log_decay`, used by the layers' ``reference`` methods, is
`gate_log_decay_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arflowbench.attention import reference as ref

#: logsigmoid(logits) is divided by this: decays stay close to 1 (public ARFlow code)
GATE_LOGIT_NORMALIZER = 16.0


def gate_log_decay(
    decay_proj: nn.Linear, x: torch.Tensor, cond: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """Per-token log-decay g in float32, (B, H, C, N) with C = L // chunk_size, N = chunk_size.

    x: (B, L, D) the layer input; cond: (B, L, D) per-token conditioning or None (x alone).
    """
    b, n, _ = x.shape
    # decay_proj(x + cond) = decay_proj(x) + decay_proj(cond): the second term is computed once
    # per image when cond is one vector expanded over the image's tokens (the sampling path).
    logits = decay_proj(x).float()  # (B, L, H)
    if cond is not None:
        if cond.stride(1) == 0:  # expanded over the tokens: project one of them
            cond = cond[:, :1]
        logits = logits + decay_proj(cond.to(x.dtype)).float()  # (B, L or 1, H)
    g = F.logsigmoid(logits) / GATE_LOGIT_NORMALIZER  # (B, L, H)
    return g.view(b, n // chunk_size, chunk_size, -1).permute(0, 3, 1, 2)  # (B, H, C, N)


def chunk_log_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """log gamma_c = mean of g over the chunk: (..., N) -> (...)."""
    return log_decay.mean(-1)


def query_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(G_i), G_i = inclusive cumsum of g inside the chunk: (..., N) -> (..., N)."""
    return log_decay.cumsum(-1).exp()


def decay_queries(q: torch.Tensor, log_decay: torch.Tensor | None) -> torch.Tensor:
    """q_i * exp(G_i): q (..., N, dk), log_decay (..., N) or None (q unchanged) -> (..., N, dk)."""
    return q if log_decay is None else q * query_decay(log_decay)[..., None]


def gate_log_decay_ref(decay_proj: nn.Linear, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """`gate_log_decay` written plainly in float64, (B, H, L): -log(1 + exp(-z)) / 16 of z = W (x + c)."""
    z = x.to(ref.REF_DTYPE) + (0.0 if cond is None else cond.to(ref.REF_DTYPE))
    logits = ref.linear_ref(z, decay_proj)  # (B, L, H)
    return -torch.log1p(torch.exp(-logits)).transpose(1, 2) / GATE_LOGIT_NORMALIZER
