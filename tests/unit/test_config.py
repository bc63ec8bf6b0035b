"""Typed configs: matrix expansion and its errors, frozen strict specs, the run hash, and the
checks `resolve()` makes before any work."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from arflowbench.config import Matrix, RunSpec, RuntimeOptions, run_hash
from arflowbench.errors import ConfigError, UnknownPluginError
from arflowbench.resolve import resolve


def _matrix_file(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------- matrices
AXES_TOML = """
    name = "grid"
    [base]
    data.name = "digits"
    train.steps = 5

    [axes]
    "sample.steps" = [10, 20, 30]      # quoted dotted key

    [axes.train]                       # nested table
    batch_size = [16, 32]
"""


def test_axes_expand_as_cartesian_product(tmp_path):
    m = Matrix.from_file(_matrix_file(tmp_path, AXES_TOML))
    cells = m.cells()
    assert m.name == "grid"
    assert sorted(m.axes) == ["sample.steps", "train.batch_size"]
    got = sorted((c.spec.sample.steps, c.spec.train.batch_size) for c in cells)
    assert got == sorted((s, b) for s in (10, 20, 30) for b in (16, 32))
    assert [c.index for c in cells] == list(range(6))
    for c in cells:
        # the axis values recorded on the cell are those in its spec; base values everywhere
        assert c.values == {"sample.steps": c.spec.sample.steps,
                            "train.batch_size": c.spec.train.batch_size}
        assert c.spec.train.steps == 5 and c.spec.data.name == "digits"


def test_matrix_name_defaults_to_file_stem(tmp_path):
    m = Matrix.from_file(_matrix_file(tmp_path, "[base]\ntrain.steps = 3\n", "quick-one.toml"))
    assert m.name == "quick-one"
    (cell,) = m.cells()
    assert cell.spec.train.steps == 3 and cell.values == {}


@pytest.mark.parametrize("exclude", [
    '[[exclude]]\n"sample.steps" = 20\n"train.batch_size" = 32\n',
    "[[exclude]]\nsample = { steps = 20 }\ntrain.batch_size = 32\n",
])
def test_exclude_removes_matching_cells(tmp_path, exclude):
    m = Matrix.from_file(_matrix_file(tmp_path, AXES_TOML + textwrap.indent(exclude, "    ")))
    got = {(c.spec.sample.steps, c.spec.train.batch_size) for c in m.cells()}
    assert len(got) == 5 and (20, 32) not in got
    assert [c.index for c in m.cells()] == list(range(5))


def test_every_cell_excluded_is_an_error(tmp_path):
    text = AXES_TOML + '    [[exclude]]\n    "train.batch_size" = 16\n' \
                       '    [[exclude]]\n    "train.batch_size" = 32\n'
    with pytest.raises(ConfigError, match="every cell is excluded"):
        Matrix.from_file(_matrix_file(tmp_path, text))


def test_unknown_top_level_key(tmp_path):
    path = _matrix_file(tmp_path, "[bases]\ntrain.steps = 3\n")
    with pytest.raises(ConfigError) as exc:
        Matrix.from_file(path)
    assert str(path) in str(exc.value) and "bases" in str(exc.value)


@pytest.mark.parametrize("text", [
    "[base]\ntrain.stepz = 3\n",
    '[axes]\n"train.stepz" = [1, 2]\n',
])
def test_typo_in_spec_key_names_file_and_key(tmp_path, text):
    path = _matrix_file(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        Matrix.from_file(path)
    msg = str(exc.value)
    assert str(path) in msg and "train.stepz: unknown key" in msg
    assert "\n" not in msg


def test_invalid_value_names_the_cell(tmp_path):
    path = _matrix_file(tmp_path, '[axes]\n"train.steps" = [5, 0]\n')
    with pytest.raises(ConfigError, match=r"\[train.steps=0\]: train.steps"):
        Matrix.from_file(path)


def test_malformed_toml_names_file_and_line(tmp_path):
    path = _matrix_file(tmp_path, "[base]\ntrain.steps = 5\n\n[axes\n")
    with pytest.raises(ConfigError) as exc:
        Matrix.from_file(path)
    assert str(path) in str(exc.value) and "line 4" in str(exc.value)


def test_missing_file_and_empty_axis(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Matrix.from_file(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="has no values"):
        Matrix.from_file(_matrix_file(tmp_path, '[axes]\n"train.steps" = []\n'))


def test_quoted_dotted_key_in_base(tmp_path):
    m = Matrix.from_file(_matrix_file(tmp_path, '[base]\n"train.steps" = 7\n'))
    assert m.cells()[0].spec.train.steps == 7


def test_exclude_that_matches_nothing_is_an_error(tmp_path):
    text = AXES_TOML + '    [[exclude]]\n    "train.batchsize" = 16\n'  # typo
    with pytest.raises(ConfigError, match="train.batchsize.*matches no cell"):
        Matrix.from_file(_matrix_file(tmp_path, text))


def test_exclude_can_match_base_values(tmp_path):
    text = AXES_TOML + '    [[exclude]]\n    data = { name = "digits" }\n    "sample.steps" = 10\n'
    got = {c.spec.sample.steps for c in Matrix.from_file(_matrix_file(tmp_path, text)).cells()}
    assert got == {20, 30}


# ---------------------------------------------------------------------------------- RunSpec
def test_runspec_is_frozen_and_strict():
    spec = RunSpec()
    with pytest.raises(ValidationError):
        spec.train = spec.train.model_copy(update={"steps": 5})
    with pytest.raises(ValidationError):
        spec.train.steps = 5
    with pytest.raises(ValidationError, match="extra"):
        RunSpec.model_validate({"train": {"stepz": 5}})
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"trian": {}})


def test_run_hash_is_stable_and_key_order_independent():
    a = RunSpec.model_validate({"train": {"steps": 5, "lr": 1e-3}, "data": {"name": "digits"}})
    b = RunSpec.model_validate({"data": {"name": "digits"}, "train": {"lr": 1e-3, "steps": 5}})
    versions = {"attention": 1, "formulation": 1}
    assert run_hash(a, versions) == run_hash(b, versions) == run_hash(a, dict(versions))
    assert len(run_hash(a, versions)) == 12


@pytest.mark.parametrize("change", [
    {"train": {"steps": 201}}, {"train": {"seed": 1}}, {"train": {"lr": 2e-4}},
    {"sample": {"cfg_scale": 1.5}}, {"sample": {"sampler": "heun"}},
    {"attention": {"name": "linear"}}, {"formulation": {"options": {"class_dropout": 0.2}}},
    {"data": {"options": {"pad_to": 32}}}, {"model": {"patch_size": 4}}, {"eval": {"num_samples": 10}},
])
def test_run_hash_changes_with_every_spec_value(change):
    versions = {"attention": 1}
    assert run_hash(RunSpec.model_validate(change), versions) != run_hash(RunSpec(), versions)


def test_run_hash_changes_with_plugin_versions():
    spec = RunSpec()
    base = run_hash(spec, {"attention": 1, "formulation": 1})
    assert run_hash(spec, {"attention": 2, "formulation": 1}) != base
    assert run_hash(spec, {"attention": 1, "formulation": 1, "metric": 1}) != base


# ---------------------------------------------------------------------------------- resolve
def _spec(**parts) -> RunSpec:
    return RunSpec.model_validate({"data": {"name": "digits"}, "train": {"steps": 5}, **parts})


def test_resolve_ignores_runtime_options(tmp_path):
    spec = _spec()
    r1 = resolve(spec, RuntimeOptions(results_dir=tmp_path / "a", device="cpu"))
    r2 = resolve(spec, RuntimeOptions(results_dir=tmp_path / "b", log_every=3, progress=False,
                                      checkpoint_every=7, matrix="other", threads=1))
    assert r1.run_id == r2.run_id
    assert r1.param_count > 0 and r1.unavailable is None


def test_resolve_fills_defaults_so_explicit_default_hashes_the_same():
    implicit = resolve(_spec(), RuntimeOptions())
    explicit = resolve(_spec(formulation={"name": "sit", "options": {"class_dropout": 0.1}}),
                       RuntimeOptions())
    assert implicit.run_id == explicit.run_id
    assert implicit.spec.formulation.options == explicit.spec.formulation.options
    assert implicit.spec.formulation.options["path"] == "linear"
    different = resolve(_spec(formulation={"name": "sit", "options": {"class_dropout": 0.2}}),
                        RuntimeOptions())
    assert different.run_id != implicit.run_id
    assert set(implicit.versions) >= {"attention", "formulation", "dataset", "backbone", "trainer"}


@pytest.mark.parametrize("parts, match", [
    ({"model": {"flavor": "tiny"}}, r"unknown model flavor 'tiny'.*debug"),
    ({"model": {"patch_size": 3}}, r"patch_size 3 does not divide.*image size 8"),
    ({"sample": {"sampler": "eulr"}}, r"unknown sampler 'eulr' \(allowed: .*euler"),
    ({"sample": {"cfg_scale": 2.0}, "formulation": {"options": {"class_dropout": 0.0}}},
     r"cfg_scale 2.0 needs a model trained with class_dropout > 0"),
    ({"formulation": {"options": {"paht": "gvp"}}}, r"paht: unknown key"),
    ({"attention": {"name": "softmaxx"}}, r"did you mean 'softmax'"),
])
def test_resolve_rejects_bad_specs(parts, match):
    with pytest.raises(ConfigError, match=match):
        resolve(_spec(**parts), RuntimeOptions())


def test_resolve_unknown_plugin_is_unknown_plugin_error():
    with pytest.raises(UnknownPluginError):
        resolve(_spec(formulation={"name": "sitt"}), RuntimeOptions())


def test_resolve_arflow_batch_must_be_a_multiple_of_S():
    pytest.importorskip("arflowbench.formulations.arflow")
    form = {"name": "arflow", "options": {"images_per_sequence": 5}}
    with pytest.raises(ConfigError, match=r"batch_size 32.*multiple of images_per_sequence 5"):
        resolve(_spec(formulation=form, train={"steps": 5, "batch_size": 32}), RuntimeOptions())
    ok = resolve(_spec(formulation=form, train={"steps": 5, "batch_size": 30}), RuntimeOptions())
    assert ok.spec.formulation.options["images_per_sequence"] == 5


def test_resolve_arflow_sequence_longer_than_smallest_class():
    pytest.importorskip("arflowbench.formulations.arflow")
    form = {"name": "arflow", "options": {"images_per_sequence": 1000}}
    with pytest.raises(ConfigError, match="images_per_sequence"):
        resolve(_spec(formulation=form, train={"steps": 5, "batch_size": 1000}), RuntimeOptions())


# ---------------------------------------------------------------------- eval.metrics, eval.at
EVAL_BASE = """
    [base]
    data.name = "digits"
    train = {{ steps = 10, batch_size = 16 }}
    eval = {{ {eval} }}
"""


@pytest.mark.parametrize("eval_, msg", [
    ("num_samples = 10, at = [32, 16]", "eval.at must be increasing, got 32 then 16"),
    ("num_samples = 10, at = [16, 176]", "eval.at point 176 is outside training (1..160 images"),
    ("num_samples = 10, at = [0]", "eval.at point 0 is outside training"),
    ("num_samples = 10, at = [20]", "eval.at point 20 images is not a whole number of steps"),
    ("num_samples = 10, at = [11], at_unit = 'steps'", "outside training (1..10 steps)"),
    ("at = [16]", "eval.at needs eval.at_num_samples"),
    ("metrics = []", "metrics"),
])
def test_bad_eval_points_fail_when_the_matrix_loads(tmp_path, eval_, msg):
    with pytest.raises(ConfigError) as exc:
        Matrix.from_file(_matrix_file(tmp_path, EVAL_BASE.format(eval=eval_)))
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_eval_points_in_images_or_steps():
    spec = RunSpec.model_validate({"train": {"steps": 10, "batch_size": 16},
                                   "eval": {"num_samples": 5, "at": [32, 160]}})
    assert spec.eval_steps() == [2, 10]
    spec = RunSpec.model_validate({"train": {"steps": 10, "batch_size": 16},
                                   "eval": {"at_num_samples": 5, "at": [3], "at_unit": "steps"}})
    assert spec.eval_steps() == [3]


@pytest.mark.parametrize("metrics, err, msg", [
    ([{"name": "fidelty"}], UnknownPluginError, "did you mean 'fidelity'"),
    ([{"name": "fidelity", "options": {"extractor": "vgg"}}], ConfigError, "extractor"),
    ([{"name": "fidelity", "options": {"kid_subsets": 0}}], ConfigError, "kid_subsets"),
    ([{"name": "fidelity"}, {"name": "fidelity", "options": {"extractor": "classifier"}}],
     ConfigError, "both report 'fid'"),
])
def test_bad_eval_metrics_fail_at_resolve(metrics, err, msg):
    spec = RunSpec.model_validate({"eval": {"num_samples": 10, "metrics": metrics}})
    with pytest.raises(err, match=msg):
        resolve(spec, RuntimeOptions())


def _ids(**eval_) -> tuple[str, str]:
    res = resolve(RunSpec.model_validate({"eval": eval_}), RuntimeOptions())
    return res.run_id, res.train_id


def test_metric_versions_enter_the_run_hash_only_when_listed_and_train_id_ignores_eval():
    fid_only = _ids(num_samples=10, metrics=[{"name": "fidelity"}])
    both = _ids(num_samples=10, metrics=[{"name": "fidelity"}, {"name": "class-accuracy"}])
    none = _ids(num_samples=0)
    assert len({fid_only[0], both[0], none[0]}) == 3
    assert fid_only[1] == both[1] == none[1]  # same training for every evaluation
    res = resolve(RunSpec.model_validate({"eval": {"num_samples": 10, "metrics": [
        {"name": "class-accuracy"}]}}), RuntimeOptions())
    assert "metric:class-accuracy" in res.versions and "metric:fidelity" not in res.versions
    assert not any(k.startswith("metric:") for k in resolve(RunSpec(), RuntimeOptions()).versions)
    # explicit defaults and omitted ones hash alike
    assert _ids(num_samples=10, metrics=[{"name": "fidelity", "options": {
        "extractor": "inception"}}]) == fid_only


def test_train_id_follows_training_fields_only():
    def ids(**kw):
        res = resolve(RunSpec.model_validate(kw), RuntimeOptions())
        return res.run_id, res.train_id

    base = ids()
    for changed in ({"sample": {"cfg_scale": 2.0}}, {"sample": {"steps": 7}},
                    {"sample": {"sampler": "heun"}}, {"eval": {"num_samples": 5}}):
        run_id, train_id = ids(**changed)
        assert run_id != base[0] and train_id == base[1], changed
    for changed in ({"train": {"seed": 1}}, {"train": {"steps": 7}},
                    {"attention": {"name": "hybrid"}}, {"model": {"patch_size": 4}},
                    {"formulation": {"name": "sit", "options": {"class_dropout": 0.2}}}):
        run_id, train_id = ids(**changed)
        assert run_id != base[0] and train_id != base[1], changed


def test_validate_warns_when_cells_see_different_numbers_of_images(tmp_path):
    from arflowbench.runner import plan

    path = _matrix_file(tmp_path, """
        [base]
        data.name = "digits"
        train = { steps = 10, batch_size = 20 }
        [axes]
        "train.batch_size" = [20, 40]
        "sample.cfg_scale" = [1.0, 1.5]
    """)
    warned: list[str] = []
    plan(Matrix.from_file(path), RuntimeOptions(results_dir=tmp_path / "r"), warn=warned.append)
    assert warned == ["warning: cells see different numbers of training images (train.steps x "
                      "train.batch_size): 200 images: cells 0, 1; 400 images: cells 2, 3; compare "
                      "them along the train axes only"]
    warned.clear()
    plan(Matrix.from_file(_matrix_file(tmp_path, AXES_TOML.replace("[16, 32]", "[16]"), "e.toml")),
         RuntimeOptions(results_dir=tmp_path / "r"), warn=warned.append)
    assert warned == []


GROUPS_TOML = """
    name = "paperish"
    [base]
    data.name = "digits"
    train = { steps = 4, batch_size = 20 }
    sample = { steps = 2, grid_per_class = 1 }

    [[group]]
    name = "headline"
    axes = { "sample.cfg_scale" = [1.0, 1.5], "train.seed" = [0, 1] }

    [[group]]
    name = "cfg"
    base = { "train.seed" = 0, sample = { steps = 3 } }
    axes = { "sample.cfg_scale" = [1.0, 2.0] }
"""


def test_groups_expand_each_over_the_shared_base(tmp_path):
    m = Matrix.from_file(_matrix_file(tmp_path, GROUPS_TOML))
    cells = m.cells()
    assert [c.group for c in cells] == ["headline"] * 4 + ["cfg"] * 2
    assert [c.index for c in cells] == list(range(6))
    assert cells[4].spec.sample.steps == 3 and cells[0].spec.sample.steps == 2
    assert cells[4].spec.train.steps == 4  # the shared base under the group's overrides
    assert m.label(cells[0]) == "paperish/headline" and m.label(cells[5]) == "paperish/cfg"
    bad = GROUPS_TOML.replace('name = "cfg"', 'name = "headline"')
    with pytest.raises(ConfigError, match="unique"):
        Matrix.from_file(_matrix_file(tmp_path, bad, "bad.toml"))
    mixed = GROUPS_TOML.replace("[[group]]", '[axes]\n"train.seed" = [0]\n[[group]]', 1)
    with pytest.raises(ConfigError, match="inside the groups"):
        Matrix.from_file(_matrix_file(tmp_path, mixed, "mixed.toml"))


def test_a_run_shared_by_two_groups_runs_once_and_is_recorded_in_both(tmp_path):
    from arflowbench.runner import CACHED, SAME_RUN, TO_TRAIN, plan, run_matrix

    text = GROUPS_TOML.replace('base = { "train.seed" = 0, sample = { steps = 3 } }',
                               'base = { "train.seed" = 0 }')
    m = Matrix.from_file(_matrix_file(tmp_path, text))
    rt = RuntimeOptions(results_dir=tmp_path / "r", progress=False)
    states = [p.state for p in plan(m, rt)]
    assert states[4] == SAME_RUN and states[0] == TO_TRAIN  # cfg 1.0, seed 0 is in both
    ran: list[str] = []

    class Done:  # an executor running cells in this process, one at a time
        max_parallel = 1

        def submit(self, job, art_dir):
            from arflowbench.cell import run_job
            from arflowbench.executors import CellOutcome

            ran.append(job.run_id)
            rec = run_job(job)
            out = CellOutcome(0 if rec.status == "ok" else 1, rec.error or "")
            return type("Ended", (), {"done": lambda self: True, "outcome": lambda self: out,
                                      "stop": lambda self: None})()

    counts = run_matrix(m, rt, Done(), echo=lambda _: None, warn=lambda _: None)
    assert counts == {"ok": 5, "failed": 0, "cached": 1, "skipped": 0}
    assert len(ran) == 5 and len(set(ran)) == 5
    from arflowbench.results import load

    rows = load(tmp_path / "r" / "runs.jsonl").runs
    same = [r for r in rows if r.run_id == ran[0]]
    assert [r.matrix for r in same] == ["paperish/headline", "paperish/cfg"]
    assert same[1].cell == {"sample.cfg_scale": 1.0} and same[1].metrics == same[0].metrics
    assert [p.state for p in plan(m, rt)] == [CACHED] * 6
