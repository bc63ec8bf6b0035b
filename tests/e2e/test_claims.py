"""One cell, one runner: a claimed cell is skipped naming its holder, a dead holder's claim is
taken over, a killed runner takes its cell with it, duplicate cells run once, and a cell never
imports a module planted in the working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arflowbench.cell import CLAIM, EXIT_SKIPPED
from arflowbench.config import Matrix, RuntimeOptions
from arflowbench.executors import cell_argv, write_job
from arflowbench.launch import module_argv, safe_env
from arflowbench.locks import claim, peek
from arflowbench.results import RUNS_FILE, load, run_artifacts
from arflowbench.runner import DUPLICATE, TO_TRAIN, make_job, plan, run_matrix

TINY = """
name = "tiny"
[base]
data.name = "digits"
model = { flavor = "debug", patch_size = 2 }
formulation.name = "sit"
train = { steps = STEPS, batch_size = 16, lr = 1e-3 }
sample = { sampler = "euler", steps = 2, grid_per_class = 1 }
[axes]
"sample.cfg_scale" = CFG
"""


def _sigint_default() -> None:
    """A `preexec_fn`: SIGINT back to its default. A shell starting a command with `&` (e.g.
    `nohup make test &`) sets it to ignored, which would outlive exec and leave the runner deaf
    to Ctrl-C: the SIGINT case would then test the shell, not the runner."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny(tmp_path: Path, cfg: str = "[1.0]", steps: int = 12) -> Matrix:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("STEPS", str(steps)).replace("CFG", cfg))
    return Matrix.from_file(path)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_while(condition, seconds: float, failure: str) -> None:
    """Poll `condition` every 50 ms until it is false; fail with `failure` after `seconds`."""
    deadline = time.time() + seconds
    while condition():
        assert time.time() < deadline, failure
        time.sleep(0.05)


def test_a_claimed_cell_is_skipped_by_runner_and_cell_naming_the_holder(tmp_path: Path) -> None:
    m, rt = tiny(tmp_path), RuntimeOptions(results_dir=tmp_path / "r", progress=False, threads=1)
    (p,) = plan(m, rt)
    claim_file = run_artifacts(rt.results_dir, p.resolved.run_id) / CLAIM
    lines: list[str] = []
    with claim(claim_file):  # this test process plays the other runner's live cell
        assert peek(claim_file) == (True, f"pid {os.getpid()} on {os.uname().nodename}")
        counts = run_matrix(m, rt, echo=lines.append, warn=lines.append)
        assert counts == {"ok": 0, "failed": 0, "cached": 0, "skipped": 1}
        assert f"skipped (held by pid {os.getpid()} on" in lines[-1]
        # the cell itself checks too (a runner that raced past its check)
        job_file = write_job(make_job(p, rt), claim_file.parent)
        proc = subprocess.run(cell_argv(job_file), env=safe_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == EXIT_SKIPPED, proc.stderr
        assert f"is held by pid {os.getpid()} on" in proc.stderr
    assert not (rt.results_dir / RUNS_FILE).exists()  # no row, no duplicate work
    assert peek(claim_file) == (False, "")  # released cleanly: no stale stamp


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_killing_the_runner_stops_its_cell(tmp_path: Path, sig: int) -> None:
    tiny(tmp_path, steps=100_000)  # runs far longer than the test
    results = tmp_path / "r"
    runner = subprocess.Popen(
        [*module_argv("arflowbench.cli"), "run", "--matrix", str(tmp_path / "tiny.toml"),
         "--results-dir", str(results), "--no-progress", "--threads", "1",
         "--checkpoint-every", "100000"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_sigint_default)
    try:
        deadline = time.time() + 120
        claims = results / "artifacts"
        while True:
            held = [peek(c) for c in claims.glob(f"*/{CLAIM}")] if claims.exists() else []
            if held and held[0][0]:
                break
            assert runner.poll() is None and time.time() < deadline, "the cell never started"
            time.sleep(0.1)
        cell_pid = int(held[0][1].split()[1])
        assert cell_pid != runner.pid and _alive(cell_pid)
        os.kill(runner.pid, sig)
        runner.wait(timeout=30)
        # generous: a loaded 2-core CI machine is slow to reap
        _wait_while(lambda: _alive(cell_pid), 60, f"cell {cell_pid} outlived its runner ({sig!r})")
        # the claim is free again: the kernel drops a dead process's flock while tearing the
        # process down, which on a loaded machine can trail what /proc shows by a moment
        claim_file = next(claims.glob(f"*/{CLAIM}"))
        _wait_while(lambda: peek(claim_file)[0], 10, f"the claim outlived its cell ({sig!r})")
    finally:
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


PLANTED = "open({marker!r}, 'w').write('imported')\nraise ImportError('planted statistics.py')\n"


def test_duplicates_run_once_a_stale_claim_is_taken_over_and_cwd_modules_are_not_imported(
        tmp_path: Path) -> None:
    m = tiny(tmp_path, cfg="[1, 1.0]")
    rt = RuntimeOptions(results_dir=tmp_path / "r", progress=False, threads=1)
    planned = plan(m, rt)
    assert [p.state for p in planned] == [TO_TRAIN, DUPLICATE]  # 1 and 1.0 hash alike
    assert planned[0].resolved.run_id == planned[1].resolved.run_id
    assert "duplicate of cell 0 (runs once)" in planned[1].describe
    # a claim stamped by a process that died holding it
    claim_file = run_artifacts(rt.results_dir, planned[0].resolved.run_id) / CLAIM
    claim_file.parent.mkdir(parents=True)
    claim_file.write_text("pid 999999 on a-dead-host")
    # a module in the working directory that shadows the standard library's
    work, marker = tmp_path / "work", tmp_path / "imported.txt"
    work.mkdir()
    (work / "statistics.py").write_text(PLANTED.format(marker=str(marker)))
    control = subprocess.run([sys.executable, "-c", "import statistics"], cwd=work,
                             capture_output=True, text=True)
    assert control.returncode != 0 and marker.exists()  # an unprotected start would import it
    marker.unlink()
    out = subprocess.run(
        [*module_argv("arflowbench.cli"), "run", "--matrix", str(tmp_path / "tiny.toml"),
         "--results-dir", str(rt.results_dir), "--no-progress", "--threads", "1"],
        cwd=work, env=safe_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not marker.exists(), "the cell imported statistics.py from the working directory"
    assert "was claimed by pid 999999 on a-dead-host, which died; taking it over" in out.stderr
    assert "duplicate of cell 0 (runs once)" in out.stdout
    assert "tiny: 1 ok, 0 failed, 1 cached, 0 skipped" in out.stdout
    rows = load(rt.results_dir / RUNS_FILE).runs
    assert [r.status for r in rows] == ["ok"]


def test_the_python_3_10_boot_line_keeps_the_working_directory_off_the_path(tmp_path: Path):
    marker = tmp_path / "imported.txt"
    (tmp_path / "statistics.py").write_text(PLANTED.format(marker=str(marker)))
    (tmp_path / "x.json").write_text('{"a": 1}')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    argv = module_argv("statistics", safe_flag=False)  # what 3.10 runs (it has no -P)
    assert "-P" not in argv
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert not marker.exists(), "the boot line imported statistics.py from the working directory"
    out = subprocess.run(module_argv("json.tool", "x.json", safe_flag=False), cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and '"a": 1' in out.stdout  # ran as __main__, arguments intact
