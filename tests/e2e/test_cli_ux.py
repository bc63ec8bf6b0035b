"""What a user meets first: names instead of paths, default folders, --version, help on every
option, --set overrides, "did you mean", the shorthand plugin syntax, `ls` at 80 columns."""

from __future__ import annotations

import shutil

import click
import pytest
import typer.main

from arflowbench.cli import app
from arflowbench.config import Matrix
from arflowbench.errors import ConfigError

from .test_cli import ROOT, cli_inprocess


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_option_has_help_and_device_defaults_to_auto():
    for name, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help, f"{name} {p.opts[0]} has no help"
                if p.name == "device":
                    assert p.default == "auto", name


def test_version_and_debug_in_help(monkeypatch, capsys):
    code, out, _ = cli_inprocess(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("arflowbench 0.")
    code, out, _ = cli_inprocess(monkeypatch, capsys, "--help")
    assert "--debug" in out and "--version" in out


def test_validate_by_name_in_another_folder_with_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_inprocess(monkeypatch, capsys, "validate", "--matrix", "debug",
                                   "--set", "train.steps=3", "--set", "train.lr=0.01")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == \
        "debug: 2 cells, 2 to run (1 trainings), 0 cached, 0 duplicates, 0 unavailable"
    assert list(tmp_path.iterdir()) == []  # validate writes nothing
    code, _, err = cli_inprocess(monkeypatch, capsys, "validate", "--matrix", "debug",
                                 "--set", "sample.cfg_scale=1.5")
    assert code == 2 and "changes the axis 'sample.cfg_scale'" in err


def test_validate_summary_counts_duplicates_apart(tmp_path, monkeypatch, capsys):
    m = tmp_path / "m.toml"
    m.write_text('[base]\ntrain.steps = 2\n[axes]\n"train.seed" = [0, 0, 1]\n')
    code, out, err = cli_inprocess(monkeypatch, capsys, "validate", "--matrix", str(m),
                                   "--results-dir", str(tmp_path / "r"))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "duplicate of cell 0" in lines[2]
    assert lines[-1] == "m: 3 cells, 2 to run (2 trainings), 0 cached, 1 duplicates, 0 unavailable"


@pytest.mark.parametrize(("sets", "says"), [
    (["train.stpes=3"], "did you mean 'steps'"),
    (["trian.steps=3"], "did you mean 'train'"),
    (["sample.cfg_scale=-1"], "cfg_scale"),
    (["nonsense"], "KEY=VALUE"),
])
def test_bad_overrides_are_checked_like_the_file(sets, says):
    with pytest.raises(ConfigError, match=says):
        Matrix.from_file(ROOT / "registry" / "matrices" / "debug.toml", sets)


def test_plugin_shorthand_equals_the_table(tmp_path):
    short = tmp_path / "s.toml"
    short.write_text('[base]\nattention = "hybrid"\nformulation = "arflow"\n'
                     'eval.metrics = ["class-accuracy"]\n[axes]\ndata = ["digits"]\n')
    full = tmp_path / "f.toml"
    full.write_text('[base]\nattention = { name = "hybrid" }\nformulation.name = "arflow"\n'
                    'eval.metrics = [{ name = "class-accuracy" }]\n[axes]\n"data.name" = ["digits"]\n')
    a, b = Matrix.from_file(short).cells()[0], Matrix.from_file(full).cells()[0]
    assert a.spec == b.spec and a.values == b.values == {"data.name": "digits"}


def test_unknown_matrix_name_suggests_the_closest(monkeypatch, capsys):
    code, _, err = cli_inprocess(monkeypatch, capsys, "validate", "--matrix", "quickstrat")
    assert code == 2 and "did you mean quickstart" in err


def test_ls_fits_80_columns_and_lists_matrices_and_data_places(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = cli_inprocess(monkeypatch, capsys, "ls")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "quickstart" in out and "paper-cpu" in out
    assert "/usr/share/datasets/fashion-mnist" in out


def test_plain_report_finds_results_dirs_and_prints_the_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_inprocess(monkeypatch, capsys, "report")
    assert code == 2 and "no rows under results" in err
    dest = tmp_path / "results" / "quickstart"
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "results" / "quickstart" / "runs.jsonl", dest)
    code, out, err = cli_inprocess(monkeypatch, capsys, "report")
    assert code == 0, err
    assert out.strip() == "wrote results/quickstart/report/index.html (and report.md, report.tex)"
    assert (dest / "report" / "index.html").is_file()


def test_progress_bars_follow_the_switch_and_the_terminal(monkeypatch, capsys):
    from arflowbench import ui

    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    ui.configure(None)
    assert not ui.enabled()  # a pipe or a log file: no bars
    ui.configure(True)
    try:
        with ui.count_bar("features", 3) as advance:
            advance(3)
        with ui.sample_bar("sample", 4) as update:
            update(4, 25, 10.0)
        out = capsys.readouterr().out
        assert "features" in out and "NFE 25" in out
    finally:
        ui.configure(None)
