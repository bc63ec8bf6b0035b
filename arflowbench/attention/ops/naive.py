"""The chunk recurrence by explicit loops over chunks and tokens: the reference for every fast path.

Nothing here runs on a training or sampling path; tests compare outputs and gradients of
`chunk_recurrence` (PyTorch and fla forms) and `recurrent_step` against it.
"""

from __future__ import annotations

import torch


def naive_chunk_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-chunk term and final state, one token at a time, in the dtype of the inputs.

    q, k: (B, H, C, N, dk); v: (B, H, C, N, dv); log_decay: (B, H, C, N) per-token g or None
    (no decay); initial_state: (B, H, dk, dv) entering chunk 0 as is, or None (zeros).
    Returns (cross (B, H, C, N, dv), state after the last chunk (B, H, dk, dv)), where token i of
    chunk c reads cross_i = (q_i * exp(g_1 + ... + g_i)) S_c and S_{c+1} = gamma_c S_c + K_c^T V_c
    with gamma_c = exp(mean of g over chunk c).
    """
    b, h, num_chunks, n, dk = q.shape
    dv = v.shape[-1]
    s = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state
    chunks = []
    for c in range(num_chunks):
        running = q.new_zeros(b, h)  # g summed over the chunk's tokens so far
        tokens = []
        for i in range(n):
            if log_decay is not None:
                running = running + log_decay[:, :, c, i]
            q_i = q[:, :, c, i] * torch.exp(running)[..., None]  # (B, H, dk)
            tokens.append(torch.einsum("bhk,bhkv->bhv", q_i, s))
        chunks.append(torch.stack(tokens, dim=2))  # (B, H, N, dv)
        kv = q.new_zeros(b, h, dk, dv)
        for i in range(n):
            kv = kv + k[:, :, c, i, :, None] * v[:, :, c, i, None, :]  # k_i^T v_i
        if log_decay is None:
            s = s + kv
        else:
            gamma = torch.exp(log_decay[:, :, c].mean(-1))  # (B, H)
            s = gamma[..., None, None] * s + kv
    return torch.stack(chunks, dim=2), s
