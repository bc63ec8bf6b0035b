"""Linear attention everywhere: bidirectional inside a chunk, causal (recurrent) across chunks.

With feature map phi (identity or elu(x) + 1), q scaled by head_dim^-1/2 after phi, and the
chunk-causal state recursion of ARFlow's hybrid attention (ARFLOW_METHOD.md):

- KV_c = phi(K_c)^T V_c, chunk decay gamma_c = exp(mean of g over chunk c) (1 without decay);
- state before chunk c: S_0 = 0 (or the carried state, entering as is), S_{c+1} = gamma_c S_c + KV_c;
- token i of chunk c: o_i = phi(q_i) KV_c + (phi(q_i) * exp(G_i)) S_c, G_i = inclusive cumsum of
  g inside the chunk (0 without decay). ``normalize`` divides by the same expression with V
  replaced by ones, i.e. phi(q_i) . (sum of k, decayed alike) + eps.

Gated decay: g_t = logsigmoid(decay_proj(x + cond)) / 16, one scalar per head and token.

``forward`` is chunk-parallel: every chunk's intra part at once, and the cross-chunk part either
as a loop over chunks of (d x d) state updates (PyTorch) or, on CUDA with fla-core, through fla's
``chunk_simple_gla`` kernel (see `cross_via_gla` for how the chunk-exclusive recursion is laid out
as a token-level gated linear recurrence). ``step`` carries a constant-size state.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError, model_validator
from torch import nn

from arflowbench.attention import reference as ref
from arflowbench.attention.base import AttentionBackend, cuda_available
from arflowbench.errors import ConfigError
from arflowbench.plugins import Availability, PluginBase, format_validation_error

EPS = 1e-6
GATE_LOGIT_NORMALIZER = 16.0
FLA_IMPL = "fla chunk_simple_gla (CUDA)"

State = dict[str, torch.Tensor]


def _fla_importable() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "triton"))


def _fla_kernel() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """fla's chunk_simple_gla, imported only when the CUDA path runs."""
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def scan_chunk_states(
    inc: torch.Tensor, log_gamma: torch.Tensor | None, init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-exclusive states of S_{c+1} = gamma_c S_c + inc_c.

    inc: (B, H, C, *rest) per-chunk increments; log_gamma: (B, H, C) or None (gamma = 1);
    init: (B, H, *rest) state entering chunk 0 as is.
    Returns (states (B, H, C, *rest) with states[:, :, c] = S_c, final S_C (B, H, *rest)).
    """
    if log_gamma is None:
        # Exclusive prefix sum; built by shifting (not cumsum - inc) so no cancellation.
        incl = init.unsqueeze(2) + inc.cumsum(2)
        states = torch.cat([init.unsqueeze(2), incl[:, :, :-1]], dim=2)
        return states, incl[:, :, -1].clone()  # a view would keep all C states alive
    gamma = log_gamma.exp().view(*log_gamma.shape, *([1] * (inc.dim() - 3)))
    s, states = init, []
    for c in range(inc.shape[2]):  # C small (d x d) updates; stable, no exp of large sums
        states.append(s)
        s = gamma[:, :, c] * s + inc[:, :, c]
    return torch.stack(states, dim=2), s


def cross_via_gla(
    q_dec: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor | None,
    init: torch.Tensor,
    kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-chunk part q_dec S_c through a token-level simple-GLA recurrence.

    fla's simple GLA computes S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale * q_t S_t
    (inclusive, per token). Our recursion is chunk-exclusive with no key-side decay, so each
    chunk becomes two segments of the token sequence: a *read* segment (its decayed queries, zero
    keys and values, zero log-gates: the state stays S_c) followed by a *write* segment (zero
    queries, its keys and values, log-gate log gamma_c on its first token and 0 after:
    gamma_c S_c + KV_c). Read outputs are exactly q_dec S_c; the final state is S_C.

    q_dec, k, v: (B, H, C, N, d); log_gamma: (B, H, C) or None; init: (B, H, d, d).
    ``kernel`` follows fla's (q, k, v, g, scale, initial_state, output_final_state) API with
    inputs in [B, T, H, d] layout (``chunk_simple_gla`` on CUDA; a naive one in tests).
    Returns (cross (B, H, C, N, d), final state (B, H, d, d)).
    """
    b, h, c, n, d = q_dec.shape
    zeros = torch.zeros_like(q_dec)
    g = q_dec.new_zeros(b, h, c, 2, n)
    if log_gamma is not None:
        g[:, :, :, 1, 0] = log_gamma

    def seq(read: torch.Tensor, write: torch.Tensor) -> torch.Tensor:  # -> (B, 2L, H, d)
        t = torch.stack([read, write], dim=3)  # (B, H, C, 2, N, d)
        return t.reshape(b, h, 2 * c * n, -1).transpose(1, 2).contiguous()

    o, final = kernel(
        q=seq(q_dec, zeros), k=seq(zeros, k), v=seq(torch.zeros_like(v), v),
        g=g.reshape(b, h, 2 * c * n).transpose(1, 2).contiguous(),
        scale=1.0, initial_state=init, output_final_state=True,
    )
    o = o.transpose(1, 2).reshape(b, h, c, 2, n, -1)[:, :, :, 0]  # read segments (B, H, C, N, d)
    return o, final


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
    def availability(cls) -> Availability:
        if cuda_available():
            return Availability(True, FLA_IMPL if _fla_importable() else "pytorch chunked (CUDA)")
        return Availability(True, "pytorch chunked (CPU)")

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
        log_decay = None
        if self.gated:
            z = x if cond is None else x + cond.to(x.dtype)
            log_decay = F.logsigmoid(self.decay_proj(z).float()) / GATE_LOGIT_NORMALIZER  # (B, L, H)
            log_decay = log_decay.reshape(b, c, self.chunk_size, h).permute(0, 3, 1, 2)
        return q, k, heads(v), log_decay

    def _mix(self, x: torch.Tensor, cond: torch.Tensor | None, state: State, use_fla: bool):
        """Mixed output (B, L, D) and the state after the last chunk."""
        q, k, v, log_decay = self._project(x, cond)
        kv = k.transpose(-1, -2) @ v  # (B, H, C, d, d): KV_c
        num = q @ kv  # intra-chunk, bidirectional: phi(q_i) KV_c
        q_dec, log_gamma = q, None
        if log_decay is not None:
            log_gamma = log_decay.mean(-1)  # (B, H, C)
            q_dec = q * log_decay.cumsum(-1).exp()[..., None]  # query-side intra-chunk decay
        new_state = {}
        if use_fla:
            cross, new_state["kv"] = cross_via_gla(q_dec, k, v, log_gamma, state["kv"].float(),
                                                   _fla_kernel())
        else:
            states, new_state["kv"] = scan_chunk_states(kv, log_gamma, state["kv"].float())
            cross = q_dec @ states  # (B, H, C, N, d)
        num = num + cross
        if self.config.normalize:
            ksum = k.sum(3)  # (B, H, C, d)
            zs, new_state["z"] = scan_chunk_states(ksum, log_gamma, state["z"].float())
            den = (q * ksum.unsqueeze(3)).sum(-1) + (q_dec * zs.unsqueeze(3)).sum(-1)
            num = num / (den + EPS).unsqueeze(-1)
        b, h, c, n, d = num.shape
        o = num.permute(0, 2, 3, 1, 4).reshape(b, c * n, h * d)  # (B, L, D)
        return self.o_proj(o.to(x.dtype)), new_state

    # -- the contract ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sequence(x)
        use_fla = x.is_cuda and self.head_dim <= 256 and _fla_importable()
        device = "CUDA" if x.is_cuda else "CPU"
        self.implementation = FLA_IMPL if use_fla else f"pytorch chunked ({device})"
        y, _ = self._mix(x, cond, self.init_state(x.shape[0], x.device), use_fla)
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
        self.implementation = f"pytorch chunked ({'CUDA' if x.is_cuda else 'CPU'})"
        return self._mix(x, cond, state, use_fla=False)  # builds new tensors, never in place

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Token-by-token loops in float64 (`reference.hybrid_mix_ref` with a linear inner part).

        The normaliser is the same mixing applied to a value of ones.
        """
        self.check_sequence(x)
        q, k, v = (ref.split_heads(ref.linear_ref(x, p), self.num_heads)  # (B, H, L, d)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q = self._phi(q) * self.head_dim**-0.5
        k = self._phi(k)
        log_decay = None
        if self.gated:
            z = x.to(ref.REF_DTYPE) + (0.0 if cond is None else cond.to(ref.REF_DTYPE))
            logits = ref.linear_ref(z, self.decay_proj)  # (B, L, H)
            log_decay = -torch.log1p(torch.exp(-logits)).transpose(1, 2) / GATE_LOGIT_NORMALIZER
        o, _ = ref.hybrid_mix_ref(q, k, v, log_decay, self.chunk_size, "linear")
        if self.config.normalize:
            ones = torch.ones_like(v[..., :1])  # (B, H, L, 1)
            den, _ = ref.hybrid_mix_ref(q, k, ones, log_decay, self.chunk_size, "linear")
            o = o / (den + EPS)
        return ref.linear_ref(ref.merge_heads(o), self.o_proj).to(x.dtype)
