"""Unit-test fixtures: fla-core's plain-PyTorch kernels standing in for its Triton kernels on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def _load_fla_naive(op: str):
    """fla-core's ops/<op>/naive.py loaded by path: it needs only torch and einops, while
    importing the fla package pulls in every layer (seconds of start-up)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / op / "naive.py"
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


class StandIn:
    """A naive fla kernel behind ``chunk_simple_gla``'s call signature; remembers the g it got.

    fla's naive simple-GLA functions need a g tensor where the Triton kernel takes g=None (no
    decay): zeros stand in for None there. ``gate_free`` kernels accept only g=None.
    """

    def __init__(self, fn, gate_free: bool = False):
        self.fn, self.gate_free, self.last_g = fn, gate_free, "never called"

    def __call__(self, q, k, v, g, scale, initial_state, output_final_state):
        self.last_g = g
        if self.gate_free:
            assert g is None, "a decay-free call must pass g=None"
            return self.fn(q, k, v, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state)
        g = torch.zeros(q.shape[:3], dtype=q.dtype, device=q.device) if g is None else g
        return self.fn(q, k, v, g=g, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state)


@pytest.fixture(scope="session")
def fla_naive_kernels() -> dict[str, StandIn]:
    """fla's naive simple-GLA (recurrent and chunked) and linear-attention references, by name."""
    simple_gla, linear_attn = _load_fla_naive("simple_gla"), _load_fla_naive("linear_attn")
    return {
        "simple_gla.naive_recurrent": StandIn(simple_gla.naive_recurrent_simple_gla),
        "simple_gla.naive_chunk": StandIn(simple_gla.naive_chunk_simple_gla),
        "linear_attn.naive_recurrent": StandIn(linear_attn.naive_recurrent_linear_attn,
                                               gate_free=True),
    }
