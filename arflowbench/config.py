"""Typed configs: `RunSpec` (everything that changes numbers; hashed), `RuntimeOptions`
(paths, devices, intervals; not hashed) and `Matrix` (a TOML file expanded to cells).

All models are strict and frozen: an unknown key is a validation error, never silently ignored.

Matrix file::

    name = "quickstart"                # optional; defaults to the file stem
    [base]                             # a partial RunSpec shared by every cell
    data.name = "digits"
    train.steps = 300
    [axes]                             # cartesian product over dotted paths
    "formulation.name" = ["sit", "arflow"]
    "attention.name" = ["softmax", "hybrid"]
    [[exclude]]                        # drop cells matching every key given
    "formulation.name" = "sit"
    "attention.name" = "hybrid"

A top-level ``on_unavailable = "skip"`` skips (instead of failing) cells whose plugin cannot run
on this machine, so one matrix can list GPU-only backends.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arflowbench.errors import ConfigError
from arflowbench.plugins import did_you_mean, format_validation_error
from arflowbench.slurm import SlurmSpec, slurm_spec
from arflowbench.strict_values import check_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Strict(BaseModel):
    """Base of every spec model: unknown keys refused, frozen, no booleans as numbers and no
    inf / nan (`strict_values`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _strict_values(cls, data: Any) -> Any:
        check_fields(cls, data)
        return data


#: spec sections that name a plugin: ``attention = "softmax"`` is ``attention = { name = "softmax" }``
NAMED_SECTIONS = ("data", "attention", "formulation")


def _named(value: Any) -> Any:
    """A plugin given by name alone (``"softmax"``) as the table it stands for."""
    return {"name": value} if isinstance(value, str) else value


class Named(Strict):
    """A plugin reference: ``name`` plus its ``options``; a bare string is its name."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _named(data)


class DataSpec(Named):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(Strict):
    flavor: str = "debug"
    patch_size: int = Field(2, ge=1)


class AttentionSpec(Named):
    name: str = "softmax"
    options: dict[str, Any] = Field(default_factory=dict)


class FormulationSpec(Named):
    name: str = "sit"
    options: dict[str, Any] = Field(default_factory=dict)


#: `train.precision` values (trainer.AUTOCAST_DTYPES maps each to its autocast dtype)
PRECISIONS = ("fp32", "bf16")


class TrainSpec(Strict):
    steps: int = Field(200, ge=1)
    #: images per optimisation step; ARFlow uses batch_size // S sequences of S images, so
    #: SiT and ARFlow cells with the same steps and batch_size see the same number of images.
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    #: AdamW weight decay of weight matrices (>= 2-D parameters); biases, norms and other 1-D
    #: parameters never decay (the public ARFlow code: 0.02; SiT: 0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    grad_clip_mode: Literal["value", "norm"] = "norm"
    #: "fp32": no autocast (the public code); "bf16": bf16 autocast of the forward and loss,
    #: CUDA only (a bf16 cell on a CPU device fails at its start)
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    seed: int = 0
    #: micro-batches per optimisation step: the global batch is split into world size x
    #: grad_accum equal slices whose gradients are averaged, so a batch that does not fit is
    #: still the same computation (to float rounding). Left out of the hash at 1 (the default).
    grad_accum: int = Field(1, ge=1)


class SampleSpec(Strict):
    sampler: str = "euler"
    steps: int = Field(50, ge=1)
    cfg_scale: float = Field(1.0, ge=0)
    #: images per class in the samples.png grid
    grid_per_class: int = Field(8, ge=1)
    seed: int = 0
    #: tolerances of adaptive samplers (dopri5)
    rtol: float = Field(1e-3, gt=0)
    atol: float = Field(1e-6, gt=0)


class MetricSpec(Named):
    """One metric plugin (``eval.metrics = [{ name = "fidelity", options = {...} }]``, or its name
    alone: ``metrics = ["class-accuracy"]``); its options are validated by the plugin's own
    Config (`METRIC.validate_options`)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


#: what a run scores when `eval.metrics` is not given: fast dataset-classifier features
DEFAULT_METRICS = (MetricSpec(name="fidelity", options={"extractor": "classifier"}),
                   MetricSpec(name="class-accuracy"))


class EvalSpec(Strict):
    """Evaluation: the final one (``num_samples``) and during training (``at``)."""

    #: generated images scored at the end of training; 0 skips the final evaluation
    num_samples: int = Field(0, ge=0)
    #: metric plugins, each scoring the same samples (see `arflowbench ls`)
    metrics: list[MetricSpec] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1)
    #: evaluation points during training, increasing, in `at_unit` (images seen, or steps);
    #: the EMA weights at each point are sampled with the cell's sampler and scored
    at: list[int] = Field(default_factory=list)
    at_unit: Literal["images", "steps"] = "images"
    #: samples per evaluation point (default: num_samples)
    at_num_samples: int | None = Field(None, ge=1)
    #: images per sampling / feature-extraction batch
    batch_size: int = Field(100, ge=1)


class RunSpec(Strict):
    """Everything that changes a run's numbers. Its canonical JSON (plus plugin versions)
    hashes to the run_id."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    attention: AttentionSpec = Field(default_factory=AttentionSpec)
    formulation: FormulationSpec = Field(default_factory=FormulationSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    @model_validator(mode="after")
    def _check_eval_points(self) -> RunSpec:
        self.eval_steps()  # raises on bad points
        return self

    def eval_steps(self) -> list[int]:
        """`eval.at` as training steps (validated: increasing, inside training, whole steps)."""
        e, t = self.eval, self.train
        if not e.at:
            return []
        if not (e.at_num_samples or e.num_samples):
            raise ValueError("eval.at needs eval.at_num_samples (or eval.num_samples) > 0")
        per_step = t.batch_size if e.at_unit == "images" else 1
        total = t.steps * per_step
        for a, b in zip(e.at, e.at[1:]):
            if b <= a:
                raise ValueError(f"eval.at must be increasing, got {a} then {b}")
        for p in e.at:
            if not 0 < p <= total:
                detail = (f"{total} images: train.steps {t.steps} x batch_size {t.batch_size}"
                          if e.at_unit == "images" else f"{total} steps")
                raise ValueError(f"eval.at point {p} is outside training (1..{detail})")
            if p % per_step:
                raise ValueError(f"eval.at point {p} images is not a whole number of steps of "
                                 f"{per_step} images (train.batch_size)")
        return [p // per_step for p in e.at]

    def canonical_json(self) -> str:
        return json.dumps(_hashed(self.model_dump(mode="json")), sort_keys=True,
                          separators=(",", ":"))

    def train_json(self) -> str:
        """The canonical JSON of what changes the trained weights (the training stage's key)."""
        part = _hashed(self.model_dump(mode="json", include=set(TRAIN_FIELDS)))
        return json.dumps(part, sort_keys=True, separators=(",", ":"))


#: fields added after runs were recorded, hashed only when not at their default (so the ids of
#: existing runs do not change): section -> {field: default}
_HASHED_IF_SET = {"train": {"grad_accum": 1}}


def _hashed(dump: dict) -> dict:
    for section, fields in _HASHED_IF_SET.items():
        part = dump.get(section)
        for key, default in fields.items():
            if part is not None and part.get(key) == default:
                del part[key]
    return dump


#: the RunSpec sections that determine the trained weights; the rest (sample, eval) only say
#: how they are sampled and scored, so cells differing there share one training stage
TRAIN_FIELDS = ("data", "model", "attention", "formulation", "train")


class RuntimeOptions(Strict):
    """Where and how a run executes. Never part of the hash."""

    results_dir: Path = Path("results")
    data_root: Path | None = None
    cache_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    progress: bool = True
    matrix: str = ""
    #: torch intra-op threads per cell process (None: torch's default)
    threads: int | None = Field(None, ge=1)
    #: run the training forward through torch.compile (speed only: not hashed; on CPU too, after
    #: a compile of about a minute for the debug flavor on 2 cores)
    compile: bool = False
    #: processes per cell (--nproc-per-node; Slurm tasks): checked against train.batch_size
    #: before any work; the cell itself reads its world from the launcher
    world_size: int = Field(1, ge=1)
    #: seconds a collective of a multi-process cell waits for its peers before failing
    dist_timeout_s: float = Field(1800.0, gt=0)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _short_hash(spec_json: str, versions: dict[str, int]) -> str:
    payload = json.dumps({"spec": json.loads(spec_json), "versions": versions},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_hash(spec: RunSpec, versions: dict[str, int]) -> str:
    """Short stable hash of the normalised spec and every code version that changes numbers."""
    return _short_hash(spec.canonical_json(), versions)


def train_hash(spec: RunSpec, versions: dict[str, int]) -> str:
    """Short stable hash of what changes the trained weights (`TRAIN_FIELDS`, and the versions
    of the code that trains: pass only those)."""
    return _short_hash(spec.train_json(), versions)


# ---------------------------------------------------------------------------------- matrices
def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a table")
        node = nxt
    node[keys[-1]] = copy.deepcopy(value)


def _flatten_axes(node: Any, prefix: str = "") -> dict[str, list]:
    """`{"formulation": {"name": [..]}}` -> `{"formulation.name": [..]}` (lists end a path)."""
    if isinstance(node, list):
        if not node:
            raise ConfigError(f"axis {prefix!r} has no values")
        if prefix in NAMED_SECTIONS:  # "attention" = ["softmax", ...]: an axis of names
            if all(isinstance(v, str) for v in node):
                return {f"{prefix}.name": node}
            return {prefix: [_named(v) for v in node]}
        return {prefix: node}
    if not isinstance(node, dict):
        raise ConfigError(f"axis {prefix!r} must be a list of values, got {node!r}")
    out: dict[str, list] = {}
    for k, v in node.items():
        out.update(_flatten_axes(v, f"{prefix}.{k}" if prefix else k))
    return out


def _flatten_values(node: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else k
        if key in NAMED_SECTIONS:
            v = _named(v)
        if isinstance(v, dict):
            out.update(_flatten_values(v, key))
        else:
            out[key] = v
    return out


class Cell(Strict):
    """One expanded matrix cell: the axis values that define it and its full spec."""

    index: int
    values: dict[str, Any]
    spec: RunSpec
    #: the [[group]] the cell comes from ("" in a matrix without groups)
    group: str = ""


class MatrixGroup(Strict):
    """One ``[[group]]`` of a matrix: its own axes (and base overrides) over the shared base.
    A matrix of groups is the union of their cells; results are labelled ``matrix/group``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)


class Matrix(Strict):
    name: str
    path: Path | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    #: a cell whose plugin cannot run on this machine (e.g. xformers without CUDA): "fail" records
    #: a failed row with the reason; "skip" runs nothing and prints the reason
    on_unavailable: Literal["fail", "skip"] = "fail"
    #: resources of each cell's job under `run --executor submitit` (`arflowbench.slurm`)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    groups: list[MatrixGroup] = Field(default_factory=list)

    def label(self, cell: Cell) -> str:
        """The matrix name results carry: ``name``, or ``name/group`` for a grouped matrix."""
        return f"{self.name}/{cell.group}" if cell.group else self.name

    #: ``--set KEY=VALUE`` overrides (dotted spec path -> value), applied to every cell last
    overrides: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> Matrix:
        """Read and validate a matrix file; `overrides` are ``KEY=VALUE`` strings (`parse_set`)
        checked like the file's own values."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"matrix file {path} does not exist")
        if not path.is_file():
            raise ConfigError(f"matrix file {path} is not a file")
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply") from None
        except (tomllib.TOMLDecodeError, OSError) as err:
            raise ConfigError(f"{path}: malformed TOML: {err}") from None
        _check_top_level(path, raw)
        allowed = ("name", "base", "axes", "exclude", "on_unavailable", "slurm", "group")
        unknown = set(raw) - set(allowed)
        if unknown:
            hint = "".join(did_you_mean(k, allowed) for k in sorted(unknown))
            raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)} "
                              f"(allowed: {', '.join(allowed)}){hint}")
        if raw.get("on_unavailable", "fail") not in ("fail", "skip"):
            raise ConfigError(f"{path}: on_unavailable must be 'fail' or 'skip', "
                              f"got {raw['on_unavailable']!r}")
        excludes = [_flatten_values(e) for e in raw.get("exclude", [])]
        base: dict[str, Any] = {}
        for k, v in _flatten_values(raw.get("base", {})).items():  # "a.b" keys and [a] tables alike
            _set_dotted(base, k, v)
        groups = [_group(g, path) for g in raw.get("group", [])]
        if groups and (raw.get("axes") or excludes):
            raise ConfigError(f"{path}: a matrix with [[group]] tables keeps its axes and "
                              "excludes inside the groups")
        try:
            m = cls(name=raw.get("name", path.stem), path=path, base=base,
                    on_unavailable=raw.get("on_unavailable", "fail"),
                    slurm=slurm_spec(raw.get("slurm", {}), str(path)),
                    axes=_flatten_axes(raw.get("axes", {})), exclude=excludes, groups=groups,
                    overrides=dict(parse_set(o) for o in overrides))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, str(path), cls)) from None
        m.cells()  # validate every cell now, before any work
        return m

    def cells(self) -> list[Cell]:
        where = str(self.path) if self.path else self.name
        if not self.groups:
            return _expand(self.base, self.axes, self.exclude, where, "", 0, self.overrides)
        out: list[Cell] = []
        names = [g.name for g in self.groups]
        if len(set(names)) < len(names):
            raise ConfigError(f"{where}: [[group]] names must be unique, got {names}")
        for g in self.groups:
            base = copy.deepcopy(self.base)
            for k, v in _flatten_values(g.base).items():
                _set_dotted(base, k, v)
            out += _expand(base, g.axes, g.exclude, f"{where} group {g.name!r}", g.name, len(out),
                           self.overrides)
        return out


def _group(raw: Any, path: Path) -> MatrixGroup:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [[group]] entries must be tables")
    try:
        g = MatrixGroup.model_validate({k: v for k, v in raw.items() if k not in ("axes", "exclude")})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"{path} [[group]]", MatrixGroup)) from None
    return g.model_copy(update={"axes": _flatten_axes(raw.get("axes", {})),
                                "exclude": [_flatten_values(e) for e in raw.get("exclude", [])]})


def parse_set(text: str) -> tuple[str, Any]:
    """``--set train.steps=100`` -> ("train.steps", 100). The value is read as a TOML value
    (numbers, booleans, quoted strings, arrays, inline tables); anything else is a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted spec key, "
                          "e.g. train.steps=100")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    top = key.split(".")[0]
    if top not in RunSpec.model_fields:
        raise ConfigError(f"--set {key}: unknown key {top!r}{did_you_mean(top, RunSpec.model_fields)}"
                          f" (known: {', '.join(RunSpec.model_fields)})")
    return key, parsed


def _expand(base: dict, axes: dict[str, list], exclude: list[dict], where: str, group: str,
            start: int, overrides: dict[str, Any] | None = None) -> list[Cell]:
    """The cartesian product of `axes` over `base`, minus the `exclude` matches, with
    `overrides` (``--set``) applied to every cell last."""
    keys = list(axes)
    for key in overrides or {}:
        clash = [a for a in keys if a == key or a.startswith(key + ".") or key.startswith(a + ".")]
        if clash:
            raise ConfigError(f"{where}: --set {key} changes the axis {clash[0]!r}; "
                              "an axis lists its values in the matrix")
    out, used = [], set()
    for combo in itertools.product(*(axes[k] for k in keys)):
        tree = copy.deepcopy(base)
        for k, v in zip(keys, combo):
            _set_dotted(tree, k, v)
        for k, v in _flatten_values(overrides or {}).items():
            _set_dotted(tree, k, v)
        # a table-valued axis ({name = "arflow"}) is shown and matched by its dotted leaves
        values = _flatten_values(dict(zip(keys, combo)))
        flat = _flatten_values(tree)
        hit = [i for i, ex in enumerate(exclude)
               if all(flat.get(k, _MISSING) == v for k, v in ex.items())]
        used.update(hit)
        if hit:
            continue
        try:
            spec = RunSpec.model_validate(tree)
        except ValidationError as err:
            label = ", ".join(f"{k}={v}" for k, v in values.items()) or "base"
            raise ConfigError(format_validation_error(err, f"{where} [{label}]", RunSpec)) from None
        out.append(Cell(index=start + len(out), values=values, spec=spec, group=group))
    unused = [exclude[i] for i in range(len(exclude)) if i not in used]
    if unused:
        raise ConfigError(f"{where}: [[exclude]] {unused[0]} matches no cell "
                          "(keys are dotted spec paths, e.g. \"attention.name\")")
    if not out:
        raise ConfigError(f"{where}: every cell is excluded")
    return out


_MISSING = object()
#: the type each top-level key of a matrix file must have
_TOP_LEVEL = {"name": str, "base": dict, "axes": dict, "exclude": list, "on_unavailable": str,
              "slurm": dict, "group": list}
#: deepest table / array nesting a matrix may use (specs are a few levels deep)
MAX_DEPTH = 32


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((_depth(v) for v in node), default=0)
    return 0


def _check_top_level(path: Path, raw: dict) -> None:
    """Types of the top-level keys (``name = 5``, ``base = 5``) and a bounded nesting depth."""
    for key, kind in _TOP_LEVEL.items():
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: {key} must be a {kind.__name__ if kind is not dict else 'table'}"
                              f", got {type(raw[key]).__name__} {raw[key]!r}")
    if any(not isinstance(e, dict) for e in raw.get("exclude", [])):
        raise ConfigError(f"{path}: every [[exclude]] entry must be a table")
    if _depth(raw) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep")
