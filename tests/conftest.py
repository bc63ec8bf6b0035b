"""Shared fixtures: the digits splits (loaded once) and a small debug-flavor model factory."""

from __future__ import annotations

import pytest
import torch

from arflowbench.config import AttentionSpec, ModelSpec
from arflowbench.data.base import ImageSet
from arflowbench.data.digits import Digits
from arflowbench.machine import torch_threads
from arflowbench.metrics.base import CACHE_ENV
from arflowbench.models.backbone import DiT
from arflowbench.models.build import build_model


@pytest.fixture(scope="session", autouse=True)
def metrics_cache(tmp_path_factory):
    """A fresh metrics cache for the session ($ARFLOWBENCH_CACHE, inherited by CLI subprocesses):
    tests never read or write the user's ~/.cache/arflowbench (whose files may predate the
    checksums and would be refused)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("arflowbench-cache")))
        yield


@pytest.fixture(scope="session")
def digits() -> Digits:
    """One Digits plugin instance for the whole session (its splits are cached in memory)."""
    return Digits()


@pytest.fixture(scope="session")
def digits_train(digits: Digits) -> ImageSet:
    return digits.load("train")


def make_debug_model(*, image_size: int = 8, channels: int = 1, patch_size: int = 2,
                     num_classes: int = 10, randomize: bool = False, seed: int = 0,
                     attention: str = "softmax") -> DiT:
    """A debug-flavor DiT (softmax attention unless told). With `randomize`, every parameter
    gets seeded noise so the adaLN-Zero gates and output layer are no longer zero (otherwise the
    model outputs 0)."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(flavor="debug", patch_size=patch_size),
                        AttentionSpec(name=attention), image_size=image_size, channels=channels,
                        num_classes=num_classes)
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture
def model_factory():
    """`make_debug_model`, for tests that need other geometries or seeds."""
    return make_debug_model


@pytest.fixture
def debug_model() -> DiT:
    """A debug model with randomized (non-zero) weights on the digits geometry."""
    return make_debug_model(randomize=True)


@pytest.fixture
def single_thread():
    """Run a test of many tiny ops on one intra-op thread: on a shared 2-core machine two
    OpenMP threads mostly wait for each other (measured 30x slower steps under load)."""
    with torch_threads(1):
        yield



@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`run_cli(*args) -> (exit code, stdout, stderr)`: `cli_inprocess` with the fixtures bound."""
    from e2e.test_cli import cli_inprocess

    return lambda *args: cli_inprocess(monkeypatch, capsys, *args)
