"""ARFlow's hybrid chunk-wise attention: softmax inside a chunk, gated linear attention across.

Per layer, as in the public ARFlow code (GitHub TheFllood/ARFlow, MIT), written anew here:

- q, k, v, g = bias-free projections D -> D; RMSNorm (no affine, eps 1e-6) on q, k, v over the
  full width D *before* the head split; k scaled by head_dim^-1/2 (so the inner softmax takes no
  further scale).
- per-token, per-head log-decay g_t = logsigmoid(decay_proj(x + cond)) / 16.
- inner: full non-causal softmax attention inside each chunk.
- cross: linear attention over earlier chunks only, identity feature map, no normaliser.
  KV_c = K_c^T V_c, gamma_c = exp(mean_t g_t over chunk c), S_{c+1} = gamma_c S_c + KV_c,
  S_0 = 0 or the carried state (entering the first chunk as is);
  cross_i = (q_i * exp(cumsum of g within the chunk up to and including i)) S_c.
- o = inner + cross -> per-head RMSNorm -> * SiLU(g_proj(x)) -> out_proj.

This file is the layer (projections, norms, gate, inner term, output). The cross term and the
state recursion are the shared op `arflowbench.attention.ops`: `forward` runs it chunk-parallel
(on CUDA through fla's ``chunk_simple_gla`` kernel when fla-core imports, otherwise all chunk
states at once through a decay matrix over chunks, no Python loop); `step` is the recurrent form,
one chunk per call, with a constant-size (B, H, d, d) float32 state.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from arflowbench.attention import reference as ref
from arflowbench.attention.base import AttentionBackend
from arflowbench.attention.ops import (
    FLA_IMPL,
    PYTORCH_IMPL,
    chunk_recurrence,
    expected_implementation,
    gate_log_decay,
    gate_log_decay_ref,
    recurrent_step,
)
from arflowbench.attention.ops.norm_gate import head_norm_gate, qkv_norm_gate
from arflowbench.plugins import Availability, PluginBase

EPS = 1e-6
#: the name since version 1 for the PyTorch path (run records compare across versions)
PYTORCH_NAME = "pytorch (chunk-parallel forward, recurrent step)"


def describe(cross_implementation: str) -> str:
    """hybrid's implementation name from the one the cross-term op reports."""
    if cross_implementation == FLA_IMPL:
        return f"{FLA_IMPL} cross-chunk term, pytorch inner term and recurrent step"
    if cross_implementation == PYTORCH_IMPL.format(device="CPU"):
        return PYTORCH_NAME
    return f"{PYTORCH_NAME}, cross-chunk term: {cross_implementation}"


class HybridAttention(AttentionBackend):
    """ARFlow hybrid attention (softmax within a chunk, decayed linear attention across chunks).

    Options: ``decay`` "gated" (default, ARFlow) or "none" (gamma = 1, no query-side decay, and
    no ``decay_proj`` parameter); ``inner`` "softmax" (default, ARFlow) or "linear"
    (bidirectional identity-feature-map linear attention inside the chunk, no normaliser).
    """

    name = "hybrid"
    version = 1
    conformance_variants: ClassVar[tuple[dict, ...]] = ({}, {"decay": "none"}, {"inner": "linear"})

    class Config(PluginBase.Config):
        """Ablation switches; the defaults are ARFlow's attention."""

        decay: Literal["gated", "none"] = "gated"
        inner: Literal["softmax", "linear"] = "softmax"

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        super().__init__(dim, num_heads, chunk_size, **options)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        # Without decay the gate would get no gradient at all: do not create it.
        self.decay_proj = nn.Linear(dim, num_heads, bias=False) if self.gated else None
        self.out_proj = nn.Linear(dim, dim, bias=False)

    @property
    def gated(self) -> bool:
        return self.config.decay == "gated"

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        return Availability(True, describe(expected_implementation(device == "cuda")))

    # -- shared by forward and step -------------------------------------------------------
    def _project(self, x: torch.Tensor, cond: torch.Tensor | None):
        """Projections, norms and log-decay, returned in float32 in the (B, H, S, N, d) layout.

        Returns q, k, v: (B, H, S, N, d); log_decay: (B, H, S, N) or None; gate: SiLU(g_proj(x))
        (B, L, D).
        """
        if cond is not None and cond.shape != x.shape:
            raise ValueError(
                f"{self.name}: cond shape {tuple(cond.shape)} must equal x shape {tuple(x.shape)}"
            )
        # One matmul for q, k, v, g: cheaper than four on CPU. The decay projection stays
        # separate: a 4D + H wide matmul runs up to 1.6x slower than a 4D one (misaligned).
        y = F.linear(x, self._fused_weight()).float()  # (B, L, 4D)
        # RMSNorm of q, k, v over the full width D (k times head_dim^-1/2), written into the
        # (B, H, S, N, d) layout, and SiLU(g): one fused op with a one-pass-per-part backward
        q, k, v, gate = qkv_norm_gate(y, self.num_heads, self.chunk_size, EPS)
        log_decay = (gate_log_decay(self.decay_proj, x, cond, self.chunk_size)
                     if self.gated else None)  # (B, H, S, N)
        return q, k, v, log_decay, gate

    def _fused_weight(self) -> torch.Tensor:
        """q, k, v, g weights stacked for one matmul, (4D, D). Without autograd (sampling) the
        stack is cached and rebuilt only when a weight changes (pointer or version)."""
        linears = [self.q_proj, self.k_proj, self.v_proj, self.g_proj]
        if torch.is_grad_enabled():
            return torch.cat([lin.weight for lin in linears])
        key = tuple((lin.weight.data_ptr(), lin.weight._version) for lin in linears)
        cached = self.__dict__.get("_weight_cache")
        if cached is None or cached[0] != key:
            cached = (key, torch.cat([lin.weight for lin in linears]))
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def _inner(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor | None):
        """Attention inside each chunk. q, k, v: (B, H, S, N, d); kv = K_c^T V_c (B, H, S, d, d),
        needed (and given) only for the linear inner term."""
        if self.config.inner == "linear":
            return q @ kv  # (q k^T) v == q (k^T v), bidirectional, no normaliser
        b, h, s, n, d = q.shape
        # SDPA on (B, H*S, N, d): chunks are independent batch items; k is pre-scaled.
        o = F.scaled_dot_product_attention(
            q.view(b, h * s, n, d), k.view(b, h * s, n, d), v.view(b, h * s, n, d), scale=1.0
        )
        return o.view(b, h, s, n, d)

    def _output(self, o: torch.Tensor, gate: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, H, S, N, d) mixed values -> per-head RMSNorm -> * SiLU gate -> out_proj, (B, L, D)."""
        return self.out_proj(head_norm_gate(o, gate, EPS).to(dtype))

    # -- the contract -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sequence(x)
        q, k, v, log_decay, gate = self._project(x, cond)  # (B, H, S, N, d)
        # KV_c = K_c^T V_c (B, H, S, d, d) when the inner term needs it; else the op builds it
        # (the fla path never does)
        kv = k.transpose(-1, -2) @ v if self.config.inner == "linear" else None
        inner = self._inner(q, k, v, kv)
        # o = inner + (q_i * exp(G_i)) S_c, S_c over the earlier chunks only (S_0 = 0)
        res = chunk_recurrence(q, k, v, log_decay, kv=kv, base=inner)
        self.implementation = describe(res.implementation)
        return self._output(res.out, gate, x.dtype)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """A zero (B, H, d, d) float32 state (its size never grows)."""
        device = self.q_proj.weight.device if device is None else device
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim)
        return torch.zeros(shape, dtype=torch.float32, device=device)

    def step(
        self, x: torch.Tensor, state: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent form: one chunk (B, N, D) against the state of all earlier chunks."""
        self.check_chunk(x)
        q, k, v, log_decay, gate = self._project(x, cond)  # (B, H, 1, N, d)
        kv = k.transpose(-1, -2) @ v  # (B, H, 1, d, d)
        inner = self._inner(q, k, v, kv)
        # o: (B, H, 1, N, d), new_state: (B, H, d, d); new tensors, the given state is untouched
        o, new_state = recurrent_step(q, k, v, log_decay, state, kv=kv, base=inner)
        return self._output(o, gate, x.dtype), new_state

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Loops over chunks and tokens in float64 (see `reference.hybrid_mix_ref`)."""
        self.check_sequence(x)
        q = ref.rms_norm_ref(ref.linear_ref(x, self.q_proj), EPS)  # (B, L, D)
        k = ref.rms_norm_ref(ref.linear_ref(x, self.k_proj), EPS) / self.head_dim**0.5
        v = ref.rms_norm_ref(ref.linear_ref(x, self.v_proj), EPS)
        q, k, v = (ref.split_heads(t, self.num_heads) for t in (q, k, v))  # (B, H, L, d)
        log_decay = gate_log_decay_ref(self.decay_proj, x, cond) if self.gated else None  # (B, H, L)
        o, _ = ref.hybrid_mix_ref(q, k, v, log_decay, self.chunk_size, self.config.inner)
        o = ref.merge_heads(ref.rms_norm_ref(o, EPS))  # (B, L, D)
        gate = ref.linear_ref(x, self.g_proj)
        o = o * gate * torch.sigmoid(gate)
        return ref.linear_ref(o, self.out_proj).to(x.dtype)
