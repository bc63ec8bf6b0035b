"""The chunk-recurrence op and the layers built on it.

Before/after: `tests/unit/data/attention_before_ops.pt` holds forward outputs, input gradients,
step outputs and final states of `hybrid` and `linear` (every conformance variant, fixed weights
and inputs) recorded from the code *before* both layers moved onto `arflowbench.attention.ops`;
the current code must reproduce them to float noise (1e-6). Regenerate only on purpose, with
``python tests/unit/test_chunk_ops.py --write-fixture`` (and bump the plugin versions then).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from arflowbench.plugins import ATTENTION

FIXTURE = Path(__file__).parent / "data" / "attention_before_ops.pt"
FIX_D, FIX_H, FIX_N, FIX_C, FIX_B = 32, 2, 4, 5, 2  # width, heads, chunk, chunks, batch
BEFORE_AFTER_ATOL = 1e-6


def _record(name: str, options: dict) -> dict[str, torch.Tensor]:
    """Outputs, input/decay gradients and step results of one backend variant, all float32."""
    m = ATTENTION.load(name)(FIX_D, FIX_H, FIX_N, **options)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights from our own generator: independent of nn.Linear's init
        for _, p in sorted(m.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    x = torch.randn(FIX_B, FIX_C * FIX_N, FIX_D, generator=g, requires_grad=True)
    cond = torch.randn(FIX_B, FIX_C * FIX_N, FIX_D, generator=g, requires_grad=True)
    y = m(x, cond)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    rec = {"y": y.detach(), "dx": x.grad,
           "dcond": torch.zeros_like(cond) if cond.grad is None else cond.grad}
    if getattr(m, "decay_proj", None) is not None:
        rec["ddecay"] = m.decay_proj.weight.grad
    with torch.no_grad():
        state, ys = m.init_state(FIX_B), []
        for c in range(FIX_C):
            sl = slice(c * FIX_N, (c + 1) * FIX_N)
            out, state = m.step(x[:, sl], state, cond[:, sl])
            ys.append(out)
    rec["y_step"] = torch.cat(ys, dim=1)
    states = state if isinstance(state, dict) else {"": state}
    rec.update({f"state{'.' + k if k else ''}": v for k, v in states.items()})
    return {k: v.detach().clone() for k, v in rec.items()}


def _variants() -> dict[str, tuple[str, dict]]:
    out = {}
    for name in ("hybrid", "linear"):
        for variant in ATTENTION.load(name).conformance_variants:
            tag = ",".join(f"{k}={v}" for k, v in sorted(variant.items())) or "default"
            out[f"{name}-{tag}"] = (name, dict(variant))
    return out


def _fixture_keys() -> list[str]:
    return sorted(torch.load(FIXTURE)) if FIXTURE.exists() else []


@pytest.mark.parametrize("key", _fixture_keys())
def test_outputs_match_the_code_before_the_ops_refactor(key):
    want = torch.load(FIXTURE)[key]
    name, options = want.pop("__variant__")
    got = _record(name, options)
    assert got.keys() == want.keys()
    for field, ref in want.items():
        err = (got[field] - ref).abs().max().item()
        assert err <= BEFORE_AFTER_ATOL, f"{key} {field}: max abs diff {err:.3g}"


def test_fixture_covers_every_conformance_variant():
    assert set(_variants()) <= set(_fixture_keys())


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixture"]:
    torch.set_num_threads(1)
    fixture = {}
    for key, (name, options) in _variants().items():
        fixture[key] = {"__variant__": (name, options), **_record(name, options)}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes): {sorted(fixture)}")
