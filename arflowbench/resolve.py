"""Resolve a `RunSpec` into live objects, validating everything before any work.

`resolve(spec, runtime)` checks plugin names and options (filling defaults, so an explicit
default and an omitted one hash the same), the model flavor, that the patch divides the image,
the sampler, guidance, and the data (present on disk, enough images per class). It builds the
model on the meta device once, so a backend that rejects the geometry (head dim, ...) fails here.
Availability for the cell's target device (e.g. a CUDA-only backend in a CPU cell, on any
machine) is recorded, not raised: `run` fails that one cell
before training with the reason, `validate` prints it.

The run and training hashes take each plugin's options as its `hash_options` gives them: files
(a latent cache, an evaluation reference) enter by content digest, so the recorded spec keeps the
paths while the ids follow the data. With ``missing_data_ok`` (`validate`), data that is not
prepared yet (`DataMissingError`) is recorded in `Resolved.data_missing` instead of raised; the
ids are then provisional (from the paths) and the cell cannot run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from arflowbench.config import MetricSpec, RunSpec, RuntimeOptions, run_hash, train_hash
from arflowbench.distributed import check_split
from arflowbench.errors import ConfigError, DataMissingError
from arflowbench.models.backbone import BACKBONE_VERSION, DiT, count_parameters
from arflowbench.models.build import build_model
from arflowbench.models.flavors import FLAVORS
from arflowbench.plugins import (
    ATTENTION,
    DATASET,
    FORMULATION,
    METRIC,
    PluginUnavailableError,
    availability_for,
)
from arflowbench.sampling import SAMPLING_VERSION
from arflowbench.trainer import TRAINER_VERSION


@dataclass
class Resolved:
    spec: RunSpec  # normalised: every plugin's options with defaults filled
    run_id: str
    versions: dict[str, int]
    dataset: object
    formulation: object
    param_count: int
    #: why this cell cannot run on this machine (None if it can)
    unavailable: str | None = None
    attention_implementation: str = ""
    #: the shared training stage: hash of what changes the trained weights
    train_id: str = ""
    #: the metric plugins the evaluation runs (built from eval.metrics), in order
    metrics: tuple = ()
    #: data not prepared yet, and what to run first (`missing_data_ok` only); ids provisional
    data_missing: str | None = None

    def build_model(self, device: str = "cpu") -> DiT:
        ds = self.dataset
        return build_model(self.spec.model, self.spec.attention, image_size=ds.image_size,
                           channels=ds.channels, num_classes=ds.num_classes, device=device)


_DATA_CACHE: dict[tuple, object] = {}


def _dataset(spec: RunSpec, runtime: RuntimeOptions, missing: list[str] | None,
             check_data: bool = True):
    opts = DATASET.validate_options(spec.data.name, spec.data.options)
    key = (spec.data.name, tuple(sorted(opts.items())), str(runtime.data_root))
    if key not in _DATA_CACHE:
        cls = DATASET.get(spec.data.name)
        ds = cls(cls.Config(**opts), runtime.data_root)
        if not check_data:  # `validate` with the data missing: geometry only, not cached
            return ds, opts
        if not _tolerated(missing, ds.check_available):
            return ds, opts  # not cached: it may be prepared before the next resolve
        _DATA_CACHE[key] = ds
    return _DATA_CACHE[key], opts


def _tolerated(missing: list[str] | None, fn) -> bool:
    """Call `fn`; a `DataMissingError` is appended to `missing` (False) when that list is given
    (`missing_data_ok`), raised otherwise."""
    if missing is None:
        fn()
        return True
    try:
        fn()
    except DataMissingError as err:
        if str(err) not in missing:
            missing.append(str(err))
        return False
    return True


def resolve(spec: RunSpec, runtime: RuntimeOptions, *, check_data: bool = True,
            missing_data_ok: bool = False) -> Resolved:
    if spec.model.flavor not in FLAVORS:
        raise ConfigError(f"unknown model flavor {spec.model.flavor!r} "
                          f"(known: {', '.join(FLAVORS)})")
    att_opts = ATTENTION.validate_options(spec.attention.name, spec.attention.options)
    form_opts = FORMULATION.validate_options(spec.formulation.name, spec.formulation.options)
    missing: list[str] | None = [] if missing_data_ok else None
    ds, data_opts = _dataset(spec, runtime, missing, check_data)
    if not _tolerated(missing, lambda: ds.image_size):  # no geometry without the data
        raise DataMissingError(f"{missing[0]} (set the dataset's size options to check and "
                               "estimate before it exists)")
    if ds.image_size % spec.model.patch_size:
        raise ConfigError(f"model.patch_size {spec.model.patch_size} does not divide the "
                          f"{spec.data.name} image size {ds.image_size}")
    metric_specs = [MetricSpec(name=m.name, options=METRIC.validate_options(m.name, m.options))
                    for m in spec.eval.metrics]
    spec = spec.model_copy(update={
        "data": spec.data.model_copy(update={"options": data_opts}),
        "attention": spec.attention.model_copy(update={"options": att_opts}),
        "formulation": spec.formulation.model_copy(update={"options": form_opts}),
        "eval": spec.eval.model_copy(update={"metrics": metric_specs}),
    })
    form_cls = FORMULATION.get(spec.formulation.name)
    formulation = form_cls(form_cls.Config(**form_opts))
    formulation.check_sampling(spec.sample.sampler, spec.sample.cfg_scale)
    formulation.items_per_batch(spec.train.batch_size)
    check_split(spec.train.batch_size, formulation.images_per_item, runtime.world_size,
                spec.train.grad_accum)
    if check_data and not missing:
        formulation.check_data(ds.load("train"))

    att_cls = ATTENTION.load(spec.attention.name)
    # for the cell's target device, not the machine: a CPU cell on a GPU machine never gets a
    # CUDA-only backend (it is unavailable, so `on_unavailable = "skip"` skips it)
    avail = availability_for(att_cls, runtime.resolved_device())
    unavailable = None if avail.available else avail.reason
    param_count = 0
    if avail.available:
        try:
            model = Resolved(spec, "", {}, ds, formulation, 0).build_model("meta")
        except (ValueError, ConfigError, PluginUnavailableError) as err:
            raise ConfigError(f"{spec.attention.name}: {err}") from None
        param_count = count_parameters(model)
        formulation.check_model(model)

    train_versions = {
        "attention": att_cls.version,
        "formulation": form_cls.version,
        "dataset": DATASET.load(spec.data.name).version,
        "backbone": BACKBONE_VERSION,
        "trainer": TRAINER_VERSION,
    }
    metrics = _metrics(spec) if (spec.eval.num_samples or spec.eval.at) else ()
    e = spec.eval
    counts = [n for n in (e.num_samples, (e.at_num_samples or e.num_samples) if e.at else 0) if n]
    for m in metrics if check_data else ():  # checks may read the reference split
        _tolerated(missing, lambda m=m: m.check(ds, counts))
    _check_memory(spec, ds)
    # a metric's version enters the hash only when the run evaluates with it
    versions = {**train_versions, "sampling": SAMPLING_VERSION,
                **{f"metric:{m.name}": m.version for m in metrics}}
    hashed = _hashed_spec(spec, ds, metrics)
    return Resolved(spec, run_hash(hashed, versions), versions, ds, formulation, param_count,
                    unavailable, avail.implementation, train_hash(hashed, train_versions), metrics,
                    "\n".join(missing) if missing else None)


def _hashed_spec(spec: RunSpec, ds, metrics: tuple) -> RunSpec:
    """`spec` with each plugin's options as they enter the hashes (`hash_options`)."""
    update = {"data": spec.data.model_copy(update={"options": ds.hash_options()})}
    if metrics:  # built from eval.metrics, in order
        update["eval"] = spec.eval.model_copy(update={"metrics": [
            MetricSpec(name=m.name, options=m.hash_options()) for m in metrics]})
    return spec.model_copy(update=update)


def _check_memory(spec: RunSpec, ds) -> None:
    """A batch whose images alone exceed this machine's memory fails here, not after starting."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - not a POSIX memory query
        return
    image = ds.channels * ds.image_size ** 2 * 4  # float32 bytes of one image
    for what, batch in (("train.batch_size", spec.train.batch_size),
                        ("eval.batch_size", spec.eval.batch_size)):
        if batch * image > total:
            raise ConfigError(f"{what} {batch}: one batch needs {batch * image / 2**30:.0f} GiB, "
                              f"more than this machine's {total / 2**30:.0f} GiB")


def _metrics(spec: RunSpec) -> tuple:
    """The listed metric plugins, built with their options; unknown, unavailable or colliding
    ones raise (before any work)."""
    out, shown = [], {}
    for m in spec.eval.metrics:
        cls = METRIC.get(m.name)  # raises for unknown or unavailable metrics
        for key in cls.display:
            if key in shown:
                raise ConfigError(f"eval.metrics: {m.name!r} and {shown[key]!r} both report "
                                  f"{key!r}; list one per cell (cells that differ only in "
                                  "eval.metrics share their training)")
            shown[key] = m.name
        out.append(cls(cls.Config(**m.options)))
    return tuple(out)
