"""Nothing torn, nothing left behind, on a full disk: rows, the runner's own rows, the cell's
exit, checkpoints and reports. Each behaviour is tested twice where it can be: with a patched
`os.write` / `torch.save` (runs anywhere) and on a real, tiny tmpfs (skipped where mounting is not
allowed)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from arflowbench import cell as cell_mod
from arflowbench import report
from arflowbench.errors import ResultsWriteError
from arflowbench.executors import CellOutcome, LocalExecutor
from arflowbench.results import append_row, read_rows
from arflowbench.trainer import save_checkpoint

from .test_cli import DEBUG_MATRIX, cli_inprocess

ROW = {"run_id": "0123456789ab", "status": "ok", "note": "x" * 200}


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A tmpfs of a few pages mounted at tmp_path/disk; skipped where mounting is not allowed."""
    def mount(kib: int) -> Path:
        where = tmp_path / "disk"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)
        return where

    mounted: list[Path] = []
    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def _fill(path: Path) -> bytes:
    """Append rows until the disk is full; returns the file's content after the failure."""
    with pytest.raises(ResultsWriteError, match="No space left"):
        for _ in range(10_000):
            append_row(path, ROW)
    return path.read_bytes()


# ------------------------------------------------------------------------------------ rows
def test_short_write_then_enospc_truncates_back(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs.jsonl"
    append_row(runs, ROW)
    before = runs.read_bytes()
    real_write, calls = os.write, []

    def short_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))  # a partial line reaches the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(ResultsWriteError, match="No space left on device"):
        append_row(runs, ROW)
    monkeypatch.undo()
    assert calls[1] == calls[0] - 10  # the rest was retried, then the disk was full
    assert runs.read_bytes() == before
    append_row(runs, {**ROW, "run_id": "ffff"})  # the store still works afterwards
    assert [r["run_id"] for r in read_rows(runs).rows] == ["0123456789ab", "ffff"]


def test_a_write_that_makes_no_progress_fails_cleanly(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs.jsonl"
    append_row(runs, ROW)
    before = runs.read_bytes()
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(ResultsWriteError, match=r"wrote 0 of \d+ bytes"):
        append_row(runs, ROW)
    assert runs.read_bytes() == before


def test_rows_on_a_full_tmpfs_stay_whole(tiny_disk) -> None:
    runs = tiny_disk(16) / "runs.jsonl"
    content = _fill(runs)
    lines = content.decode().splitlines()
    assert content.endswith(b"\n") and len(lines) > 10
    assert all(json.loads(line) == ROW for line in lines)  # no torn row


# ------------------------------------------------------------------------------------ cell
def test_cell_exits_2_with_one_error_when_its_row_cannot_be_written(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    job = tmp_path / "job.json"
    job.write_text("{}")

    def fail(*_args):
        raise ResultsWriteError("could not append a row to runs.jsonl: No space left on device")

    fake_job = SimpleNamespace(runtime=SimpleNamespace(threads=None, progress=False))
    monkeypatch.setattr(cell_mod.Job, "model_validate_json", classmethod(lambda c, t: fake_job))
    monkeypatch.setattr(cell_mod, "claimed_run", fail)
    assert cell_mod.main([str(job)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: could not append a row to runs.jsonl: No space left on device"]


# ---------------------------------------------------------------------------------- runner
def test_runner_stops_with_exit_2_when_its_own_row_cannot_be_written(tiny_disk, monkeypatch,
                                                                      capsys) -> None:
    results = tiny_disk(16)
    _fill(results / "filler.jsonl")  # the disk is now full; empty files still fit
    calls = []

    def dead_cell(self, job, art_dir):  # a cell that died without writing its row
        calls.append(job.run_id)
        return SimpleNamespace(done=lambda: True, outcome=lambda: CellOutcome(-9, ""),
                               stop=lambda: None)

    monkeypatch.setattr(LocalExecutor, "submit", dead_cell)
    code, out, err = cli_inprocess(monkeypatch, capsys, "run", "--matrix", str(DEBUG_MATRIX),
                                   "--results-dir", str(results), "--no-progress")
    assert code == 2 and len(calls) == 1  # stopped at the first cell
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: stopped the matrix")
    assert "No space left on device" in err and "Traceback" not in err
    assert (results / "runs.jsonl").read_bytes() == b""


def test_runner_stops_when_it_cannot_write_a_job_file(tiny_disk, monkeypatch, capsys) -> None:
    results = tiny_disk(16)
    _fill(results / "filler.jsonl")  # the real executor's job.json no longer fits
    code, out, err = cli_inprocess(monkeypatch, capsys, "run", "--matrix", str(DEBUG_MATRIX),
                                   "--results-dir", str(results), "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "artifacts/" in err and "No space left" in err
    assert not (results / "runs.jsonl").exists()


# ----------------------------------------------------------------------------- checkpoints
def test_failed_checkpoint_write_leaves_old_checkpoint_and_no_temp(tmp_path, monkeypatch) -> None:
    path = tmp_path / "train" / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # bytes reach the temp file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_checkpoint_on_a_full_tmpfs_leaves_no_temp(tiny_disk) -> None:
    disk = tiny_disk(64)
    path = disk / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    # torch.save reports the full disk as OSError or as RuntimeError from its zip writer
    with pytest.raises((OSError, RuntimeError)):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(64 * 1024)})  # 256 KiB > 64 KiB
    assert sorted(p.name for p in disk.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


# --------------------------------------------------------------------------------- reports
def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    append_row(results / "runs.jsonl", {
        "schema": 2, "kind": "run", "run_id": "0123456789ab", "status": "ok", "matrix": "m",
        "cell": {"train.lr": 0.1}, "metrics": {"train_loss_final": 1.0},
        "loss_curve": [[1, 1.0], [2, 0.5]]})
    return results


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_report_that_fails_midway_leaves_the_old_one(tmp_path, monkeypatch) -> None:
    results, out = _results(tmp_path), tmp_path / "rep"
    report.write_report(results, out, paper_dir=tmp_path)
    old = _snapshot(out)
    assert {"report.md", "report.tex", "index.html"} <= set(old)

    def killed(blocks):
        raise KeyboardInterrupt  # what a kill mid-write looks like to the code

    monkeypatch.setattr(report, "render_html", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(results, out, paper_dir=tmp_path)
    assert _snapshot(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "results"]  # no staging left


def test_report_replaces_the_old_one_whole(tmp_path) -> None:
    results, out = _results(tmp_path), tmp_path / "rep"
    report.write_report(results, out, paper_dir=tmp_path)
    (out / "plots" / "stale.png").write_bytes(b"old")
    report.write_report(results, out, paper_dir=tmp_path)
    assert not (out / "plots" / "stale.png").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "results"]


def test_report_refuses_a_folder_with_other_files(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ResultsWriteError, match="not part of a report"):
        report.write_report(_results(tmp_path), out, paper_dir=tmp_path)
    assert (out / "thesis.tex").read_text() == "precious"


def test_report_on_a_full_tmpfs_keeps_the_old_one(tiny_disk, tmp_path) -> None:
    disk = tiny_disk(192)
    results, out = _results(tmp_path), disk / "rep"
    report.write_report(results, out, paper_dir=tmp_path)
    old = _snapshot(out)
    size = sum(len(b) for b in old.values())
    (disk / "filler").write_bytes(b"\0" * (192 * 1024 - size - 24 * 1024))  # no room for two
    with pytest.raises(ResultsWriteError, match="No space left"):
        report.write_report(results, out, paper_dir=tmp_path)
    assert _snapshot(out) == old
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "rep"]
