"""The formulation conformance suite, parametrised over every registered formulation.

Cases come from `FORMULATION.names()` (built-ins and entry-point plugins, never a hand list): each
formulation with its default config, on the digits training split, with a debug DiT (softmax: it
has a recurrent step) of randomized weights; one that fails to load or is unavailable here is
skipped with its reason. The model is handed over as `InterfaceOnly`: the `GenerativeModel`
members and nothing else, each call recorded, so a reach-in (``model.blocks``) fails. `CHECKS`:

- make_batch: exactly `batch_size` images, as (batch_size // S, S, C, H, W) uint8, one label each;
- training_loss: a finite scalar loss, finite gradients on every parameter, the same loss for
  the same seeds;
- sample, for every sampler offered: (B, C, H, W) finite images; NFE = model evaluations actually
  made per image; guidance runs every evaluation on the doubled batch [labels; null class], cfg 1
  on the batch as it is; the same seed gives the same images;
- a model without a recurrent step is refused (ConfigError, by check_model and sample alike) or
  never stepped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch

from arflowbench.data.base import ImageSet
from arflowbench.errors import ConfigError, PluginUnavailableError
from arflowbench.formulations.base import Formulation, SampleResult
from arflowbench.formulations.sit import SiT
from arflowbench.models.interface import INTERFACE, GenerativeModel
from arflowbench.plugins import FORMULATION

ITEMS = 4  # training items per batch (batch_size = ITEMS * S images)
LABELS = torch.tensor([3, 7, 0])  # sampled classes: B = 3
STEPS, CFG = 3, 1.5  # sampling steps, guidance scale


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: extra threads only wait


@dataclass
class Call:
    kind: str  # "forward" | "init_state" | "step"
    rows: int  # batch rows of the call
    y: torch.Tensor | None  # (rows,) labels given (None for init_state)


class InterfaceOnly:
    """`model` seen only through `GenerativeModel`, logging every call into `log`.

    ``supports_step=False`` poses as a network without a recurrent form: `init_state` and `step`
    then fail the test instead of running."""

    __slots__ = ("_model", "_log", "_step_ok")

    def __init__(self, model: GenerativeModel, log: list[Call] | None = None,
                 supports_step: bool | None = None):
        self._model, self._log = model, log if log is not None else []
        self._step_ok = model.supports_step if supports_step is None else supports_step

    channels = property(lambda self: self._model.channels)
    image_size = property(lambda self: self._model.image_size)
    null_class = property(lambda self: self._model.null_class)
    supports_step = property(lambda self: self._step_ok)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._log.append(Call("forward", x.shape[0], y.clone()))
        return self._model(x, t, y)  # (B, S, C, H, W)

    def init_state(self, batch_size: int, device: Any = None) -> Any:
        assert self._step_ok, "init_state called on a model whose supports_step is False"
        self._log.append(Call("init_state", batch_size, None))
        return self._model.init_state(batch_size, device=device)

    def step(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, state: Any):
        assert self._step_ok, "step called on a model whose supports_step is False"
        self._log.append(Call("step", x.shape[0], y.clone()))
        return self._model.step(x, t, y, state)  # (B, C, H, W), state


@dataclass
class Case:
    formulation: Formulation
    data: ImageSet
    make_model: Callable[[], Any]  # a fresh debug DiT with randomized weights, in eval mode
    image_shape: tuple[int, ...]  # (C, H, W) of the data and the model


def make_case(name: str, data: ImageSet, model_factory) -> Case:
    """The case of registered formulation `name` (default config) on `data`."""
    cls = FORMULATION.get(name)
    C, H, W = data.images.shape[1:]
    make_model = partial(model_factory, image_size=H, channels=C, num_classes=data.num_classes,
                         randomize=True)
    return Case(cls(cls.Config()), data, make_model, (C, H, W))


# ------------------------------------------------------------------------------------ checks
CHECKS: list[Callable[[Case], None]] = []


def check(fn: Callable[[Case], None]) -> Callable[[Case], None]:
    CHECKS.append(fn)
    return fn


def _loss(case: Case, model: GenerativeModel, seed: int) -> dict:
    f = case.formulation
    x, y = f.make_batch(case.data, ITEMS * f.images_per_item, torch.Generator().manual_seed(seed))
    return f.training_loss(model, x, y, torch.Generator().manual_seed(seed + 1))


def _sample(case: Case, model: GenerativeModel, sampler: str, cfg: float, seed: int) -> SampleResult:
    return case.formulation.sample(model, LABELS, STEPS, sampler, cfg,
                                   torch.Generator().manual_seed(seed))


@check
def make_batch_draws_batch_size_images(case: Case) -> None:
    f, data = case.formulation, case.data
    S = f.images_per_item
    for batch_size in (S, ITEMS * S):
        x, y = f.make_batch(data, batch_size, torch.Generator().manual_seed(batch_size))
        assert x.dtype == torch.uint8
        assert tuple(x.shape) == (batch_size // S, S, *case.image_shape), tuple(x.shape)
        assert y.shape == (batch_size // S,) and y.dtype == torch.long
        assert bool(((y >= 0) & (y < data.num_classes)).all())
    if S > 1:
        with pytest.raises(ConfigError, match="multiple of"):
            f.make_batch(data, S + 1, torch.Generator().manual_seed(0))


@check
def training_loss_and_gradients_are_finite(case: Case) -> None:
    net = case.make_model().train()
    out = _loss(case, InterfaceOnly(net), seed=0)
    loss = out["loss"]
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss)
    for key, value in out.items():  # everything but the loss is a float to log
        assert key == "loss" or (isinstance(value, (int, float)) and math.isfinite(value)), key
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {pname}"
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


@check
def training_loss_is_deterministic_under_a_seed(case: Case) -> None:
    model = InterfaceOnly(case.make_model())
    with torch.no_grad():
        a, b = _loss(case, model, seed=4)["loss"], _loss(case, model, seed=4)["loss"]
    assert torch.equal(a, b)


@check
def sample_shape_nfe_and_guidance_batch(case: Case) -> None:
    net, B = case.make_model(), len(LABELS)
    for sampler in case.formulation.samplers:
        for cfg in (1.0, CFG):
            log: list[Call] = []
            res = _sample(case, InterfaceOnly(net, log), sampler, cfg, seed=0)
            where = f"{sampler}, cfg {cfg}"
            assert tuple(res.images.shape) == (B, *case.image_shape), where
            assert res.images.is_floating_point() and torch.isfinite(res.images).all(), where
            # guidance runs [conditional; null] as one doubled batch, in every call
            rows = 2 * B if cfg != 1.0 else B
            null = torch.full((B,), net.null_class)
            expected_y = torch.cat([LABELS, null]) if cfg != 1.0 else LABELS
            evals = [c for c in log if c.kind != "init_state"]
            assert evals, f"{where}: no model evaluation"
            for c in log:
                assert c.rows == rows, f"{where}: {c.kind} on {c.rows} rows, expected {rows}"
                assert c.y is None or torch.equal(c.y, expected_y), f"{where}: {c.kind} labels"
            # every evaluation covers each image once, so the NFE per image is their number
            assert res.nfe == len(evals), f"{where}: reported NFE {res.nfe}, made {len(evals)}"


@check
def sampling_is_deterministic_under_a_seed(case: Case) -> None:
    model = InterfaceOnly(case.make_model())
    for sampler in case.formulation.samplers:
        a, b = _sample(case, model, sampler, CFG, 0), _sample(case, model, sampler, CFG, 0)
        other = _sample(case, model, sampler, CFG, 1)
        assert torch.equal(a.images, b.images) and a.nfe == b.nfe, sampler
        assert not torch.equal(a.images, other.images), f"{sampler}: the seed is not used"


@check
def model_without_a_step_is_refused_or_never_stepped(case: Case) -> None:
    f, net = case.formulation, case.make_model()
    f.check_model(InterfaceOnly(net))  # the debug DiT has a step: accepted
    no_step = InterfaceOnly(net, supports_step=False)
    refused_at_check = _raises_config_error(lambda: f.check_model(no_step))
    assert refused_at_check or not f.requires_step, "requires_step, yet check_model accepts"
    for sampler in f.samplers:
        refused = _raises_config_error(lambda s=sampler: _sample(case, no_step, s, 1.0, 0))
        assert refused == refused_at_check, f"{sampler}: sample and check_model disagree"


def _raises_config_error(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except ConfigError:
        return True
    return False


# ------------------------------------------------------------------------------- the suite
def _cases() -> list:
    params = []
    for name in FORMULATION.names():
        try:
            cls = FORMULATION.load(name)
        except PluginUnavailableError as err:
            params.append(pytest.param((name, str(err)), id=f"{name}-unloadable"))
            continue
        avail = cls.availability()
        reason = None if avail.available else f"formulation {name!r} unavailable: {avail.reason}"
        params.append(pytest.param((name, reason), id=name))
    return params


@pytest.fixture(params=_cases())
def case(request, digits_train, model_factory) -> Case:
    name, skip_reason = request.param
    if skip_reason is not None:
        pytest.skip(skip_reason)
    return make_case(name, digits_train, model_factory)


@pytest.mark.parametrize("conformance_check", CHECKS, ids=lambda fn: fn.__name__)
def test_formulation(case, conformance_check):
    conformance_check(case)


# ------------------------------------------------------------------- the suite checks itself
class ContributedSiT(SiT):
    """A throwaway contributed formulation: SiT under another name."""

    name = "contributed-sit"
    version = 1


@pytest.fixture
def contributed() -> str:
    """`ContributedSiT` registered into FORMULATION for one test, then removed."""
    FORMULATION.register(ContributedSiT, origin="test (throwaway)")
    try:
        yield ContributedSiT.name
    finally:
        FORMULATION.unregister(ContributedSiT.name)


def test_contributed_formulation_gets_the_suite(contributed, digits_train, model_factory):
    assert contributed in [p.id for p in _cases()]
    case = make_case(contributed, digits_train, model_factory)
    for conformance_check in CHECKS:
        conformance_check(case)


def test_interface_only_offers_nothing_else(model_factory):
    model = InterfaceOnly(model_factory())
    assert isinstance(model, GenerativeModel)
    public = {n for n in dir(model) if not n.startswith("_")} | {"__call__"}
    assert public == set(INTERFACE)
    with pytest.raises(AttributeError):
        model.blocks  # noqa: B018


class PeekingSiT(SiT):
    """Reaches into the network: the suite must catch it."""

    def training_loss(self, model, x, y, g):
        model.blocks  # noqa: B018
        return super().training_loss(model, x, y, g)


class MiscountingSiT(SiT):
    """Reports one evaluation fewer than it made."""

    def sample(self, *args, **kwargs) -> SampleResult:
        res = super().sample(*args, **kwargs)
        return SampleResult(res.images, res.nfe - 1)


@pytest.mark.parametrize("bad,check_fn,error", [
    (PeekingSiT, training_loss_and_gradients_are_finite, AttributeError),
    (MiscountingSiT, sample_shape_nfe_and_guidance_batch, AssertionError),
])
def test_the_checks_catch_a_bad_formulation(bad, check_fn, error, digits_train, model_factory):
    case = make_case("sit", digits_train, model_factory)
    case.formulation = bad()
    with pytest.raises(error):
        check_fn(case)
