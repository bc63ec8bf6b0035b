"""The gated chunk recurrence S_{c+1} = gamma_c S_c + K_c^T V_c and its cross-chunk term.

Tokens come in C chunks of N (one chunk = one image). The state entering chunk c is S_c, with
S_0 the carried state (entering as is) or zeros; gamma_c = exp(mean of g over chunk c) and g the
per-token log-decay of `gates` (gamma = 1 and no query decay without a gate). Token i of chunk c
reads the cross-chunk term (q_i * exp(G_i)) S_c, G_i = inclusive cumsum of g inside the chunk.

Three implementations, one contract:

- `chunk_recurrence`: the whole sequence at once. On CUDA, with fla-core's Triton kernels
  importable, fla's ``chunk_simple_gla`` (see `fla_gla`); otherwise the PyTorch chunk-parallel
  form below (every S_c at once through a decay matrix over chunks, no Python loop). The
  implementation that ran comes back with the result: layers record it, never a silent fallback.
- `recurrent_step`: one chunk against a carried state (the sampling path).
- `naive.naive_chunk_recurrence`: loops over chunks and tokens, the reference in tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from arflowbench.attention.base import float32_section
from arflowbench.attention.ops import fla_gla
from arflowbench.attention.ops.gates import chunk_log_decay, decay_queries

PYTORCH_IMPL = "pytorch chunked ({device})"


class Recurrence(NamedTuple):
    """What `chunk_recurrence` returns."""

    out: torch.Tensor  # (B, H, C, N, dv): the cross-chunk term, plus ``base`` when given
    final_state: torch.Tensor | None  # (B, H, dk, dv) S_C, when asked for
    implementation: str  # what ran, e.g. "pytorch chunked (CPU)" or fla_gla.FLA_IMPL


def expected_implementation(cuda: bool) -> str:
    """What `chunk_recurrence` would run for tensors on CUDA (or not); on CUDA fla is imported
    (once per process) to know whether it really loads."""
    if not cuda:
        return PYTORCH_IMPL.format(device="CPU")
    kernel, why = fla_gla.load_kernel()
    if kernel is not None:
        return fla_gla.FLA_IMPL
    return PYTORCH_IMPL.format(device=f"CUDA; fla not used: {why}")


def select_kernel(q: torch.Tensor, v: torch.Tensor,
                  gated_backward: bool = False) -> tuple[fla_gla.Kernel | None, str]:
    """(fla kernel, FLA_IMPL) when the tensors are on CUDA and fla can run them (and, with
    `gated_backward`, differentiate them with a decay), else (None, the PyTorch form's name; on
    CUDA it says why fla was not used)."""
    if not q.is_cuda:
        return None, PYTORCH_IMPL.format(device="CPU")
    if max(q.shape[-1], v.shape[-1]) > fla_gla.FLA_MAX_HEAD_DIM:
        why = f"head dim > {fla_gla.FLA_MAX_HEAD_DIM}"
    else:
        kernel, why = fla_gla.load_kernel()
        if kernel is not None and gated_backward:
            why = fla_gla.device_gated_backward_problem(q.device.index or 0)
        if kernel is not None and not why:
            return kernel, fla_gla.FLA_IMPL
    return None, PYTORCH_IMPL.format(device=f"CUDA; fla not used: {why}")


def advance(state: torch.Tensor, inc: torch.Tensor, log_gamma: torch.Tensor | None) -> torch.Tensor:
    """One step of the recursion, gamma * state + inc, as a new tensor.

    state, inc: (*lead, *rest); log_gamma: (*lead) or None (gamma = 1).
    """
    if log_gamma is None:
        return state + inc
    return log_gamma.exp().view(*log_gamma.shape, *([1] * (state.dim() - log_gamma.dim()))) * state + inc


@float32_section
def chunk_states(
    inc: torch.Tensor,
    log_gamma: torch.Tensor | None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every chunk's entering state S_c of S_{c+1} = gamma_c S_c + inc_c at once, in PyTorch.

    inc: (B, H, C, *rest) per-chunk increments; log_gamma: (B, H, C) or None (gamma = 1);
    initial_state: (B, H, *rest) entering chunk 0 as is, or None (zeros).
    Returns (states (B, H, C, *rest), S_C (B, H, *rest) or None).
    """
    b, h, c = inc.shape[:3]
    # S_c = sum_{j<c} w[c, j] inc_j + w0[c] S_0, w[c, j] = exp(sum_{j<m<c} log gamma_m)
    # = exp(E_c - A_j), A the inclusive cumsum of log gamma over chunks, E the exclusive one
    # (A shifted by one, exact zeros first: the weights of chunks < k never read chunk k, which
    # keeps chunk causality bit-exact), w0[c] = exp(E_c). Every weight is <= 1: no overflow.
    earlier = torch.ones(c, c, dtype=torch.bool, device=inc.device).tril(-1)  # j < c
    if log_gamma is None:
        weights = earlier.to(inc.dtype).expand(b, h, c, c)
    else:
        incl = log_gamma.cumsum(-1)  # (B, H, C)
        excl = F.pad(incl[..., :-1], (1, 0))
        diff = excl[..., :, None] - incl[..., None, :]  # (B, H, C, C)
        # mask before exp: exp of the (positive) upper triangle could overflow to inf
        weights = diff.masked_fill(~earlier, float("-inf")).exp()
    states = (weights @ inc.flatten(3)).view(inc.shape)  # (B, H, C, *rest)
    if initial_state is not None:
        init = initial_state.unsqueeze(2)  # (B, H, 1, *rest)
        if log_gamma is not None:
            init = excl.exp().view(b, h, c, *([1] * (inc.dim() - 3))) * init
        states = states + init
    final = None
    if output_final_state:
        last = None if log_gamma is None else log_gamma[:, :, -1]
        final = advance(states[:, :, -1], inc[:, :, -1], last)
    return states, final


@float32_section  # the state recursion and its readout stay float32 under autocast
def chunk_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    *,
    kv: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> Recurrence:
    """The cross-chunk term of every token, and optionally the final state, for a whole sequence.

    q, k: (B, H, C, N, dk) queries (before the in-chunk decay) and keys; v: (B, H, C, N, dv);
    log_decay: (B, H, C, N) per-token log-decay g (`gates.gate_log_decay`), None: no decay;
    initial_state: (B, H, dk, dv) entering chunk 0 as is, None: zeros.
    kv: (B, H, C, dk, dv) K_c^T V_c when the caller has it already (the PyTorch form needs it);
    base: (B, H, C, N, dv) added to the cross-chunk term (the caller's in-chunk term; the PyTorch
    form fuses the sum into its batched matmul).
    Returns `Recurrence` (out = base + cross (B, H, C, N, dv), final state (B, H, dk, dv) or None,
    the implementation that ran).
    """
    b, h, c, n, dk = q.shape
    dv = v.shape[-1]
    log_gamma = None if log_decay is None else chunk_log_decay(log_decay)  # (B, H, C)
    q_dec = decay_queries(q, log_decay)  # (B, H, C, N, dk)
    if base is not None:
        base = base.float()  # e.g. a bf16 inner term from autocast (a no-op on float32)
    grads = log_decay is not None and torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, log_decay))
    kernel, implementation = select_kernel(q, v, gated_backward=grads)
    if kernel is not None:
        cross, final = fla_gla.cross_via_gla(q_dec, k, v, log_gamma, initial_state, kernel,
                                             output_final_state)
        return Recurrence(cross if base is None else base + cross, final, implementation)

    if kv is None:
        kv = k.transpose(-1, -2) @ v  # (B, H, C, dk, dv)
    states, final = chunk_states(kv, log_gamma, initial_state, output_final_state)
    if base is None:
        out = q_dec @ states  # (B, H, C, N, dv)
    else:  # base + q_dec S_c in one batched matmul
        out = torch.baddbmm(base.reshape(-1, n, dv), q_dec.reshape(-1, n, dk),
                            states.view(-1, dk, dv)).view(b, h, c, n, dv)
    return Recurrence(out, final, implementation)


@float32_section
def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    state: torch.Tensor,
    *,
    kv: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk against the carried state: its cross-chunk term and the state after it.

    The layout of `chunk_recurrence` with C = 1 (no per-call reshuffle on the sampling path):
    q, k: (B, H, 1, N, dk); v: (B, H, 1, N, dv); log_decay: (B, H, 1, N) or None;
    state: (B, H, dk, dv) S_c, cast to q's dtype and never modified; kv: (B, H, 1, dk, dv) K^T V
    if already computed; base: (B, H, 1, N, dv) added to the cross-chunk term.
    Returns (base + q_dec S_c (B, H, 1, N, dv), S_{c+1} = gamma S_c + K^T V (B, H, dk, dv), new).
    """
    if q.shape[2] != 1:
        raise ValueError(f"recurrent_step takes one chunk, got q of shape {tuple(q.shape)}")
    s0 = state.to(q.dtype)[:, :, None]  # (B, H, 1, dk, dv)
    cross = decay_queries(q, log_decay) @ s0  # (B, H, 1, N, dv)
    if kv is None:
        kv = k.transpose(-1, -2) @ v  # (B, H, 1, dk, dv)
    log_gamma = None if log_decay is None else chunk_log_decay(log_decay)  # (B, H, 1)
    new_state = advance(s0, kv, log_gamma)[:, :, 0]  # (B, H, dk, dv), a new tensor
    return (cross if base is None else base + cross), new_state
