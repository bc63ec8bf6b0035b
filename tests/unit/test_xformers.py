"""The `xformers` backend: availability, validation, and (on CUDA) parity with `softmax`."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from arflowbench.attention.softmax import SoftmaxAttention
from arflowbench.attention.xformers_backend import (
    NO_CPU,
    NO_DEVICE,
    NOT_INSTALLED,
    XFormersAttention,
)
from arflowbench.errors import ConfigError, PluginUnavailableError
from arflowbench.plugins import ATTENTION, Availability, availability_for


def _gpu_reason() -> str | None:
    """Why xformers cannot run on CUDA on this machine (None: it can)."""
    avail = XFormersAttention.availability("cuda")
    return None if avail.available else avail.reason


def test_availability_follows_the_target_device():
    assert XFormersAttention.availability("cpu") == Availability(False, "", NO_CPU)
    reason = _gpu_reason()
    if not torch.cuda.is_available():
        assert reason == NO_DEVICE
    elif importlib.util.find_spec("xformers") is None:
        assert reason == NOT_INSTALLED
    cpu = availability_for(XFormersAttention, "cpu")  # requires_cuda, on any machine
    assert not cpu.available and "needs a CUDA device" in cpu.reason


@pytest.mark.skipif(_gpu_reason() is None, reason="xformers is available on this machine")
def test_constructing_when_unavailable_raises_with_reason():
    with pytest.raises(PluginUnavailableError, match="xformers") as err:
        XFormersAttention(64, 4, 8)
    assert _gpu_reason() in str(err.value)
    with pytest.raises(PluginUnavailableError, match="unavailable here"):
        ATTENTION.get("xformers", "cuda")
    with pytest.raises(PluginUnavailableError, match="needs a CUDA device"):
        ATTENTION.get("xformers")  # a CPU target


@pytest.mark.parametrize("dim,heads", [(60, 2), (1024, 2), (48, 4)])
def test_head_dims_xformers_cannot_take_are_config_errors(dim, heads):
    with pytest.raises(ConfigError, match=rf"head_dim {dim // heads}\b.*multiple of 8.*256"):
        XFormersAttention(dim, heads, 8)


@pytest.fixture
def as_if_available(monkeypatch):
    """Pretend xformers is available so the module can be built on CPU (no kernel is run)."""
    monkeypatch.setattr(XFormersAttention, "availability",
                        classmethod(lambda cls, device="cpu": Availability(True, "test")))


def test_same_parameters_as_softmax_and_softmax_reference(as_if_available):
    torch.manual_seed(0)
    xf = XFormersAttention(64, 4, 8)
    sm = SoftmaxAttention(64, 4, 8)
    assert {k: v.shape for k, v in xf.state_dict().items()} == {
        k: v.shape for k, v in sm.state_dict().items()}
    sm.load_state_dict(xf.state_dict())
    x = torch.randn(2, 24, 64)
    with torch.no_grad():
        torch.testing.assert_close(xf.reference(x), sm(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(PluginUnavailableError, match="no CPU operator"):
        xf(x)  # never a silent fallback to another kernel


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
def test_matches_softmax_backend_on_gpu():
    torch.manual_seed(0)
    xf = XFormersAttention(128, 2, 16).cuda()
    sm = SoftmaxAttention(128, 2, 16).cuda()
    sm.load_state_dict(xf.state_dict())
    x = torch.randn(2, 80, 128, device="cuda")
    with torch.no_grad():
        y, ref = xf(x), sm(x)
        state, steps = xf.init_state(2), []
        for c in range(5):
            out, state = xf.step(x[:, 16 * c:16 * c + 16], state)
            steps.append(out)
    assert xf.implementation == "xformers memory_efficient_attention (CUDA)"
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.cat(steps, 1), ref, atol=2e-3, rtol=2e-3)
