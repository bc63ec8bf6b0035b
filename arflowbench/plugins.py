"""The plugin registry: one generic `Registry[T]` and the four registries of arflowbench.

Built-ins are registered lazily as "module:attr" strings so that a backend's optional
dependencies load only when it is chosen. Third-party plugins come from the entry-point groups
``arflowbench.attention``, ``arflowbench.formulation``, ``arflowbench.dataset`` and
``arflowbench.metric``. Every plugin class declares:

- ``name``: str, equal to its registered name;
- ``version``: int, bumped when its numerics change (it feeds the run hash);
- ``Config``: a pydantic model of its own options (strict: unknown keys are errors);
- ``availability(device)``: a classmethod returning `Availability` for a run whose tensors live
  on ``device`` ("cpu" or "cuda"): can it run there, which implementation would run, and why
  not. Ask through `availability_for`, which also enforces ``requires_cuda`` and accepts older
  plugins whose ``availability()`` takes no device. An optional library is imported only for a
  target that would use it, once per process (`gpu_libs`): a compiled extension built against
  another torch passes a ``find_spec`` check and fails only at import.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import typing
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from arflowbench.errors import ConfigError, PluginUnavailableError, UnknownPluginError
from arflowbench.strict_values import check_fields

T = TypeVar("T")

BUILTIN = "built-in"


@dataclass(frozen=True)
class Availability:
    """Whether a plugin can run on this machine, and which implementation would run."""

    available: bool
    implementation: str = ""
    reason: str = ""


def device_type(device: Any) -> str:
    """"cpu", "cuda", ... of a device given as a string ("cuda:1") or a torch.device."""
    return str(getattr(device, "type", device)).split(":", 1)[0]


def default_device() -> str:
    """The target device of a run with ``device = "auto"`` on this machine."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def availability_for(cls: Any, device: Any = "cpu") -> Availability:
    """Whether plugin class `cls` can run with its tensors on `device` (the run's target device,
    not the machine: a CPU target on a GPU machine never selects a CUDA-only path).

    A class declaring ``requires_cuda`` is unavailable for any other device type, and any CUDA
    target is unavailable where torch sees no CUDA device; otherwise the class's own
    ``availability(device)`` decides (``availability()`` for plugins written before targets)."""
    kind = device_type(device)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return Availability(False, "", "the target device is cuda, but torch sees no CUDA "
                                           "device on this machine")
    if getattr(cls, "requires_cuda", False) and kind != "cuda":
        return Availability(False, "", f"needs a CUDA device (CUDA-only kernels); this run's "
                                       f"target device is {kind}")
    if "device" in inspect.signature(cls.availability).parameters:
        return cls.availability(device=kind)
    return cls.availability()


@dataclass(frozen=True)
class PluginInfo:
    """One row of `arflowbench ls`."""

    kind: str
    name: str
    version: int | None
    origin: str
    available: bool
    implementation: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _import_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def _model_at(model: Any, loc: tuple) -> Any:
    """The pydantic model class reached by following `loc` (field names, list indexes) from
    `model`, or None where the path leaves typed models (e.g. a free-form options dict)."""
    for key in loc:
        if isinstance(key, int):
            continue  # an index into a list of models: the element type was taken already
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type)]
        model = ann if isinstance(ann, type) else next(iter(args), None)
    return model if hasattr(model, "model_fields") else None


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of `choices`, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(err: ValidationError, where: str, model: Any = None) -> str:
    """Turn a pydantic error into one readable line: `where: field: message; ...`. With the
    validated `model` class, an unknown key names the closest known key ("did you mean")."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, tuple(e["loc"][:-1])) if model is not None else None
            known = parent.model_fields if parent is not None else ()
            msg = "unknown key" + did_you_mean(str(e["loc"][-1]), known)
        parts.append(f"{loc}: {msg}")
    return f"{where}: " + "; ".join(parts)


@dataclass
class _Entry:
    target: str | type
    origin: str


class Registry(Generic[T]):
    """A name -> plugin class map with lazy built-ins and entry-point discovery."""

    def __init__(self, kind: str, base_ref: str, group: str):
        self.kind = kind
        self.base_ref = base_ref
        self.group = group
        self._entries: dict[str, _Entry] = {}
        self._resolved: dict[str, type[T]] = {}
        self._errors: dict[str, str] = {}
        self._discovered = False

    # ------------------------------------------------------------------ registration
    def register_lazy(self, name: str, target: str, origin: str = BUILTIN) -> None:
        """Register `name` -> "module:attr", imported on first use."""
        self._add(name, _Entry(target, origin))

    def register(self, cls: type[T] | None = None, *, origin: str = BUILTIN):
        """Decorator (or call) registering a class under its ``name`` attribute."""

        def deco(c: type[T]) -> type[T]:
            self._add(c.name, _Entry(c, origin))
            return c

        return deco(cls) if cls is not None else deco

    def unregister(self, name: str) -> None:
        """Remove `name` and whatever was loaded or failed for it: the undo of `register`, for
        tests and sessions that add a throwaway plugin. Unknown names raise UnknownPluginError."""
        self._check_known(name)
        del self._entries[name]
        self._resolved.pop(name, None)
        self._errors.pop(name, None)

    def _add(self, name: str, entry: _Entry) -> None:
        if name in self._entries:
            old = self._entries[name].origin
            raise ConfigError(
                f"{self.kind} plugin name collision: {name!r} is registered by {old} "
                f"and again by {entry.origin}"
            )
        self._entries[name] = entry

    def discover(self) -> None:
        """Load third-party plugins from this registry's entry-point group (once)."""
        if self._discovered:
            return
        found: dict[str, _Entry] = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            if ep.name in found:  # two distributions claim one name
                raise ConfigError(f"{self.kind} plugin name collision: {ep.name!r} is registered "
                                  f"by {found[ep.name].origin} and again by {origin}")
            found[ep.name] = _Entry(ep.value, origin)
        for name in found:  # all or nothing: a failed discovery fails again on the next lookup
            if name in self._entries:
                self._add(name, found[name])  # raises the collision error
        for name, entry in found.items():
            self._entries[name] = entry
        self._discovered = True

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        self._check_known(name)
        return self._entries[name].origin

    def _check_known(self, name: str) -> None:
        self.discover()
        if name in self._entries:
            return
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPluginError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})"
        )

    def load(self, name: str) -> type[T]:
        """Import and check the plugin class; raise if it is unknown or fails to import."""
        self._check_known(name)
        if name in self._resolved:
            return self._resolved[name]
        if name in self._errors:
            raise PluginUnavailableError(f"{self.kind} {name!r} failed to load: {self._errors[name]}")
        entry = self._entries[name]
        try:
            cls = _import_ref(entry.target) if isinstance(entry.target, str) else entry.target
        except Exception as exc:  # an optional dependency or a broken plugin
            self._errors[name] = f"{type(exc).__name__}: {exc}"
            raise PluginUnavailableError(
                f"{self.kind} {name!r} failed to load: {self._errors[name]}"
            ) from exc
        base = _import_ref(self.base_ref)
        problem = None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            problem = f"{cls!r} is not a subclass of {base.__qualname__}"
        elif getattr(cls, "name", None) != name:
            problem = f"class declares name {getattr(cls, 'name', None)!r}, registered as {name!r}"
        elif not isinstance(getattr(cls, "version", None), int):
            problem = "class declares no integer `version`"
        if problem:
            self._errors[name] = problem
            raise PluginUnavailableError(f"{self.kind} {name!r} is invalid: {problem}")
        self._resolved[name] = cls
        return cls

    def get(self, name: str, device: Any = "cpu") -> type[T]:
        """The plugin class, checked to be available for a run targeting `device`."""
        cls = self.load(name)
        avail = availability_for(cls, device)
        if not avail.available:
            raise PluginUnavailableError(f"{self.kind} {name!r} is unavailable here: {avail.reason}")
        return cls

    def validate_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Validate options against the plugin's `Config`; return them with defaults filled."""
        cls = self.load(name)
        try:
            check_fields(cls.Config, options)
        except ValueError as err:
            raise ConfigError(f"{self.kind} {name!r} options: {err}") from None
        try:
            cfg = cls.Config(**options)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"{self.kind} {name!r} options",
                                                      cls.Config)) from None
        return cfg.model_dump(mode="json")

    def info(self, device: Any = None) -> list[PluginInfo]:
        """One `PluginInfo` per plugin, available or not for `device` (default: this machine's
        default target, `default_device`)."""
        device = default_device() if device is None else device
        rows = []
        for name in self.names():
            origin = self._entries[name].origin
            try:
                cls = self.load(name)
                avail = availability_for(cls, device)
                rows.append(
                    PluginInfo(self.kind, name, cls.version, origin, avail.available,
                               avail.implementation, avail.reason)
                )
            except PluginUnavailableError:
                rows.append(PluginInfo(self.kind, name, None, origin, False, "", self._errors[name]))
        return rows


class PluginBase:
    """Mixin declaring what every plugin class provides."""

    name: str = ""
    version: int = 0

    class Config(BaseModel):
        model_config = {"extra": "forbid", "frozen": True}

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        """Availability for a run targeting `device` (ask via `availability_for`)."""
        return Availability(True, "pytorch")


ATTENTION: Registry = Registry("attention", "arflowbench.attention.base:AttentionBackend",
                               "arflowbench.attention")
FORMULATION: Registry = Registry("formulation", "arflowbench.formulations.base:Formulation",
                                 "arflowbench.formulation")
DATASET: Registry = Registry("dataset", "arflowbench.data.base:Dataset", "arflowbench.dataset")
METRIC: Registry = Registry("metric", "arflowbench.metrics.base:Metric", "arflowbench.metric")

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (ATTENTION, FORMULATION, DATASET, METRIC)}

# Built-ins: the one place their names are written.
_BUILTINS = {
    ATTENTION: {
        "softmax": "arflowbench.attention.softmax:SoftmaxAttention",
        "hybrid": "arflowbench.attention.hybrid:HybridAttention",
        "linear": "arflowbench.attention.linear:LinearAttention",
        "mamba": "arflowbench.attention.mamba:MambaMixer",
        "xformers": "arflowbench.attention.xformers_backend:XFormersAttention",
    },
    FORMULATION: {
        "sit": "arflowbench.formulations.sit:SiT",
        "arflow": "arflowbench.formulations.arflow:ARFlow",
    },
    DATASET: {
        "digits": "arflowbench.data.digits:Digits",
        "fashion-mnist": "arflowbench.data.fashion_mnist:FashionMNIST",
        "imagefolder": "arflowbench.data.imagefolder:ImageFolder",
        "latents": "arflowbench.data.latents:Latents",
    },
    METRIC: {
        "fidelity": "arflowbench.metrics.fid:FidelityMetric",
        "class-accuracy": "arflowbench.metrics.accuracy:ClassAccuracy",
    },
}
for _reg, _table in _BUILTINS.items():
    for _name, _target in _table.items():
        _reg.register_lazy(_name, _target)


def all_info(device: Any = None) -> list[PluginInfo]:
    """Every registered plugin of every kind, available or not for `device` (default: this
    machine's default target), for `arflowbench ls`."""
    return [row for reg in REGISTRIES.values() for row in reg.info(device)]
