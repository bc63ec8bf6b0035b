"""The contributed plugin is found through its entry point and runs inside ARFlow."""

from __future__ import annotations

import torch

from arflowbench.plugins import ATTENTION, BUILTIN


def test_discovered_through_entry_point_not_builtin():
    assert "local" in ATTENTION.names()
    assert ATTENTION.origin("local") != BUILTIN
    assert ATTENTION.origin("local").startswith("arflowbench-local-attention")


def test_no_information_crosses_images():
    cls = ATTENTION.get("local")
    torch.manual_seed(0)
    attn = cls(32, 2, 4)
    x = torch.randn(2, 12, 32)
    y = attn(x)
    x2 = x.clone()
    x2[:, :4] += 1.0  # change the first image only
    y2 = attn(x2)
    assert torch.equal(y[:, 4:], y2[:, 4:])
    assert not torch.equal(y[:, :4], y2[:, :4])
