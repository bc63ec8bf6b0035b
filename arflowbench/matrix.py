"""Matrix files: a TOML file of ``[base]``, ``[axes]``, ``[[exclude]]`` and ``[[group]]`` tables
expanded into `Cell`s, each a validated `RunSpec` (`arflowbench.config`).

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
on this machine, so one matrix can list GPU-only backends. ``--set KEY=VALUE`` overrides
(`parse_set`) apply to every cell last. Every cell is validated when the file is read, so a typo
fails before any work. `Matrix`, `MatrixGroup`, `Cell` and `parse_set` are also importable from
`arflowbench.config`.
"""

from __future__ import annotations

import copy
import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from arflowbench.config import NAMED_SECTIONS, RunSpec, Strict, _named
from arflowbench.errors import ConfigError
from arflowbench.plugins import did_you_mean, format_validation_error
from arflowbench.slurm import SlurmSpec, slurm_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
