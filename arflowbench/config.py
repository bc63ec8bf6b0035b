"""Typed configs: `RunSpec` (everything that changes numbers; hashed) and `RuntimeOptions`
(paths, devices, intervals; not hashed), with the run and training hashes.

All models are strict and frozen: an unknown key is a validation error, never silently ignored.
Matrix files (`Matrix`: a TOML file expanded to cells) are read by `arflowbench.matrix`; its
names stay importable from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from arflowbench.strict_values import check_fields


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


#: matrix-file parsing lives in `arflowbench.matrix`; these names stay importable from here
_MATRIX_NAMES = ("Cell", "Matrix", "MatrixGroup", "parse_set", "MAX_DEPTH")


def __getattr__(name: str) -> Any:
    # imported on first use: `arflowbench.matrix` itself imports this module
    if name in _MATRIX_NAMES:
        from arflowbench import matrix

        return getattr(matrix, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
