"""Linear attention everywhere: bidirectional inside a chunk, causal (recurrent) across chunks.

With feature map phi (identity or elu(x) + 1), q scaled by head_dim^-1/2 after phi, and the
chunk-causal state recursion of ARFlow's hybrid attention (ARFLOW_METHOD.md):

- KV_c = phi(K_c)^T V_c, chunk decay gamma_c = exp(mean of g over chunk c) (1 without decay);
- state before chunk c: S_0 = 0 (or the carried state, entering as is), S_{c+1} = gamma_c S_c + KV_c;
- token i of chunk c: o_i = phi(q_i) KV_c + (phi(q_i) * exp(G_i)) S_c, G_i = inclusive cumsum of
  g inside the chunk (0 without decay). ``normalize`` divides by the same expression with V
  replaced by ones, i.e. phi(q_i) . (sum of k, decayed alike) + eps.

Gated decay: g_t = logsigmoid(decay_proj(x + cond)) / 16, one scalar per head and token.

This file is the layer (projections, feature map, in-chunk term, normaliser, output). The
cross-chunk term and the state recursion are the shared op `arflowbench.attention.ops`: ``forward``
runs it chunk-parallel (on CUDA with fla-core through fla's ``chunk_simple_gla`` kernel, else in
PyTorch), ``step`` carries a constant-size state through its recurrent form.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError, model_validator
from torch import nn

from arflowbench.attention import reference as ref
from arflowbench.attention.base import AttentionBackend, float32_section
from arflowbench.attention.ops import (
    PYTORCH_IMPL,
    advance,
    chunk_log_decay,
    chunk_recurrence,
    chunk_states,
    decay_queries,
    expected_implementation,
    gate_log_decay,
    gate_log_decay_ref,
    recurrent_step,
)
from arflowbench.errors import ConfigError
from arflowbench.plugins import Availability, PluginBase, format_validation_error

EPS = 1e-6

State = dict[str, torch.Tensor]


class LinearAttention(AttentionBackend):
    """Chunk-causal linear attention (bidirectional inside a chunk, recurrent across chunks).

    Options: ``feature_map`` "elu1" (default, elu(x) + 1) or "identity"; ``decay`` "none"
    (default) or "gated" (ARFlow's per-token gate on x + cond); ``normalize`` (default True)
    divides by phi(q) . sum phi(k) + eps and needs the positive elu1 features.
    Parameters: bias-free q_proj, k_proj, v_proj, o_proj (D -> D) and, if gated, decay_proj (D -> H).
    State for ``step``: {"kv": (B, H, d, d)} plus {"z": (B, H, d)} when normalising (float32).
    """

    name = "linear"
    version = 1
    conformance_variants: ClassVar[tuple[dict, ...]] = (
        {},
        {"decay": "gated"},
        {"feature_map": "identity", "normalize": False, "decay": "gated"},
    )

    class Config(PluginBase.Config):
        feature_map: Literal["identity", "elu1"] = "elu1"
        decay: Literal["none", "gated"] = "none"
        normalize: bool = True

        @model_validator(mode="after")
        def _positive_features_for_normalize(self):
            if self.normalize and self.feature_map == "identity":
                raise ValueError(
                    "linear: normalize=True needs feature_map='elu1' (allowed feature_map: "
                    "'identity', 'elu1'; with 'identity' set normalize=False), because identity "
                    "features can make the denominator q . sum(k) vanish"
                )
            return self

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        try:
            super().__init__(dim, num_heads, chunk_size, **options)
        except ValidationError as err:  # one readable line, like the registry's validation
            raise ConfigError(
                format_validation_error(err, f"attention {self.name!r} options")
            ) from None
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        # Without decay the gate would get no gradient at all: do not create it.
        self.decay_proj = nn.Linear(dim, num_heads, bias=False) if self.gated else None

    @property
    def gated(self) -> bool:
        return self.config.decay == "gated"

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        return Availability(True, expected_implementation(device == "cuda"))

    # -- shared by forward and step --------------------------------------------------------
    def _phi(self, t: torch.Tensor) -> torch.Tensor:
        return F.elu(t) + 1.0 if self.config.feature_map == "elu1" else t

    def _project(self, x: torch.Tensor, cond: torch.Tensor | None):
        """q (featured, scaled), k (featured), v: (B, H, C, N, d) float32; log-decay (B, H, C, N)."""
        b, n, dim = x.shape
        c, h, d = n // self.chunk_size, self.num_heads, self.head_dim
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3D, D)
        q, k, v = F.linear(x, w).float().split(dim, dim=-1)  # each (B, L, D)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, C, N, d)
            return t.reshape(b, c, self.chunk_size, h, d).permute(0, 3, 1, 2, 4)

        q = heads(self._phi(q)) * d**-0.5
        k = heads(self._phi(k))
        log_decay = gate_log_decay(self.decay_proj, x, cond, self.chunk_size) if self.gated else None
        return q, k, heads(v), log_decay

    def _mix(self, x: torch.Tensor, cond: torch.Tensor | None, state: State | None):
        """Mixed output (B, L, D) and, given a carried ``state`` (one chunk: `step`), the state
        after it; without one (`forward`) the sequence starts from a zero state, returned as None."""
        q, k, v, log_decay = self._project(x, cond)  # (B, H, C, N, d); (B, H, C, N) or None
        num, new_state = self._mix_heads(q, k, v, log_decay, state)
        b, h, c, n, d = num.shape
        o = num.permute(0, 2, 3, 1, 4).reshape(b, c * n, h * d)  # (B, L, D)
        return self.o_proj(o.to(x.dtype)), new_state

    @float32_section  # state increments, recursion and normaliser stay float32 under autocast
    def _mix_heads(self, q, k, v, log_decay, state: State | None):
        """Per-head mixed values (B, H, C, N, d) from float32 q, k, v (B, H, C, N, d) and
        log-decay (B, H, C, N) or None; with a carried ``state``, also the state after it."""
        kv = k.transpose(-1, -2) @ v  # (B, H, C, d, d): KV_c
        intra = q @ kv  # intra-chunk, bidirectional: phi(q_i) KV_c
        log_gamma = None if log_decay is None else chunk_log_decay(log_decay)  # (B, H, C)
        new_state = None
        if state is None:  # num = intra + phi(q_i) exp(G_i) S_c, the op chunk-parallel
            res = chunk_recurrence(q, k, v, log_decay, kv=kv, base=intra)
            num, self.implementation = res.out, res.implementation
        else:
            num, kv_state = recurrent_step(q, k, v, log_decay, state["kv"], kv=kv, base=intra)
            new_state = {"kv": kv_state}  # num: (B, H, 1, N, d), kv_state: (B, H, d, d)
        if self.config.normalize:  # the same recursion on sum(k) (V replaced by ones)
            ksum = k.sum(3)  # (B, H, C, d)
            if state is None:
                zs, _ = chunk_states(ksum, log_gamma)  # (B, H, C, d)
            else:
                zs = state["z"].float()[:, :, None]  # (B, H, 1, d): S_c of the normaliser
                new_state["z"] = advance(zs, ksum, log_gamma)[:, :, 0]  # (B, H, d)
            q_dec = decay_queries(q, log_decay)
            den = (q * ksum.unsqueeze(3)).sum(-1) + (q_dec * zs.unsqueeze(3)).sum(-1)
            num = num / (den + EPS).unsqueeze(-1)
        return num, new_state

    # -- the contract ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sequence(x)
        y, _ = self._mix(x, cond, None)  # sets self.implementation to what the op ran
        return y

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero float32 state: {"kv": (B, H, d, d)} (+ {"z": (B, H, d)} when normalising)."""
        device = self.q_proj.weight.device if device is None else device
        h, d = self.num_heads, self.head_dim
        state = {"kv": torch.zeros(batch_size, h, d, d, device=device)}
        if self.config.normalize:
            state["z"] = torch.zeros(batch_size, h, d, device=device)
        return state

    def step(
        self, x: torch.Tensor, state: State, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Recurrent form: one chunk against the state of all earlier chunks (pure)."""
        self.check_chunk(x)
        self.implementation = PYTORCH_IMPL.format(device="CUDA" if x.is_cuda else "CPU")
        return self._mix(x, cond, state)  # builds new tensors, never in place

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Token-by-token loops in float64 (`reference.hybrid_mix_ref` with a linear inner part).

        The normaliser is the same mixing applied to a value of ones.
        """
        self.check_sequence(x)
        q, k, v = (ref.split_heads(ref.linear_ref(x, p), self.num_heads)  # (B, H, L, d)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q = self._phi(q) * self.head_dim**-0.5
        k = self._phi(k)
        log_decay = gate_log_decay_ref(self.decay_proj, x, cond) if self.gated else None  # (B, H, L)
        o, _ = ref.hybrid_mix_ref(q, k, v, log_decay, self.chunk_size, "linear")
        if self.config.normalize:
            ones = torch.ones_like(v[..., :1])  # (B, H, L, 1)
            den, _ = ref.hybrid_mix_ref(q, k, ones, log_decay, self.chunk_size, "linear")
            o = o / (den + EPS)
        return ref.linear_ref(ref.merge_heads(o), self.o_proj).to(x.dtype)
