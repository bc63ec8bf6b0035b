"""Ops shared by attention layers: the gated chunk recurrence and ARFlow's decay gate.

A layer (``hybrid``, ``linear``) owns its projections, norms, in-chunk term and output; the
recurrence S_{c+1} = gamma_c S_c + K_c^T V_c that carries earlier chunks lives here once, with its
PyTorch chunk-parallel form, the fla kernel path used on CUDA, a recurrent step and a naive loop
reference (the layout of fla's ``fla/ops/*/{chunk,naive}.py``).

- `chunk_recurrence`: cross-chunk term (and final state) of a whole sequence; reports what ran.
- `recurrent_step`: one chunk against a carried state.
- `chunk_states`, `advance`: the recursion itself, for any state shape (e.g. a normaliser).
- `gates`: g = logsigmoid(decay_proj(x + cond)) / 16, chunk decay, in-chunk cumulative decay.
- `naive.naive_chunk_recurrence`: loops over chunks and tokens, the reference in tests.
"""

from __future__ import annotations

from arflowbench.attention.ops.fla_gla import FLA_IMPL, cross_via_gla
from arflowbench.attention.ops.gates import (
    GATE_LOGIT_NORMALIZER,
    chunk_log_decay,
    decay_queries,
    gate_log_decay,
    gate_log_decay_ref,
    query_decay,
)
from arflowbench.attention.ops.naive import naive_chunk_recurrence
from arflowbench.attention.ops.recurrence import (
    PYTORCH_IMPL,
    Recurrence,
    advance,
    chunk_recurrence,
    chunk_states,
    expected_implementation,
    recurrent_step,
    select_kernel,
)

__all__ = [
    "FLA_IMPL",
    "GATE_LOGIT_NORMALIZER",
    "PYTORCH_IMPL",
    "Recurrence",
    "advance",
    "chunk_log_decay",
    "chunk_recurrence",
    "chunk_states",
    "cross_via_gla",
    "decay_queries",
    "expected_implementation",
    "gate_log_decay",
    "gate_log_decay_ref",
    "naive_chunk_recurrence",
    "query_decay",
    "recurrent_step",
    "select_kernel",
]
