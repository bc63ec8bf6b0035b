"""`run` bad input for the launchers (one `error:` line, exit 2, nothing submitted or started),
and a cell under torch's launcher: data-parallel training and sharded sampling, one row and one
ADM-style sample file written by rank 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arflowbench import cli
from arflowbench.errors import ArflowbenchError
from arflowbench.launch import module_argv, safe_env
from arflowbench.results import RUNS_FILE, load

MATRIX = """
name = "one"
[base]
data.name = "digits"
model = { flavor = "debug", patch_size = 2 }
train = { steps = 4, batch_size = 16 }
sample = { steps = 2, grid_per_class = 1 }
"""


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["arflowbench", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


def _matrix(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX + extra)
    return str(path)


@pytest.mark.parametrize("case", ["no-slurm", "no-submitit", "slurm-key", "slurm-flag",
                                  "cuda", "local-max-parallel", "submitit-nproc"])
def test_bad_launch_input_is_one_error_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                            case) -> None:
    results = tmp_path / "r"
    args = ["run", "--matrix", _matrix(tmp_path, "[slurm]\ngpus = 2\n" if case == "slurm-key"
                                       else ""), "--results-dir", str(results)]
    local = ["--executor", "submitit", "--submitit-cluster", "local"]
    expect = {
        "no-slurm": (["--executor", "submitit"], "no Slurm on this machine (sbatch not found)"),
        "no-submitit": (["--executor", "submitit"], "--executor submitit needs submitit"),
        "slurm-key": (local, "unknown [slurm] key 'gpus' (known: partition, nodes,"),
        "slurm-flag": ([*local, "--slurm", "nodes=two"], "[slurm] nodes: Input should be"),
        "cuda": (["--device", "cuda"], "--device cuda: no CUDA GPU is available on this machine"),
        "local-max-parallel": (["--max-parallel", "2"], "apply to --executor submitit"),
        "submitit-nproc": ([*local, "--nproc-per-node", "2"], "use --slurm tasks_per_node=N"),
    }
    extra, message = expect[case]
    if case == "no-slurm" and shutil.which("sbatch"):
        pytest.skip("Slurm is installed here")
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if case == "no-submitit":
        monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    code, err = _cli(monkeypatch, capsys, *args, *extra)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (results / "submitit").exists() and not (results / RUNS_FILE).exists()
    if case == "slurm-key":  # validate reports it too
        code, err = _cli(monkeypatch, capsys, "validate", "--matrix", args[2])
        assert code == 2 and "unknown [slurm] key 'gpus'" in err


def test_more_processes_than_gpus_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cli._check_gpus("cuda", 2)
    with pytest.raises(ArflowbenchError, match="--nproc-per-node 3 needs 3 GPUs; this machine has 2"):
        cli._check_gpus("auto", 3)
    cli._check_gpus("cpu", 3)  # on CPU, N gloo processes share the cores


def test_a_cell_under_torchrun_trains_samples_and_only_rank_0_writes(tmp_path: Path) -> None:
    import numpy as np

    results = tmp_path / "r"
    cmd = [*module_argv("arflowbench.cli"), "run", "--matrix",
           _matrix(tmp_path, "eval = { num_samples = 6, batch_size = 2 }\n"),
           "--results-dir", str(results), "--no-progress", "--threads", "1",
           "--nproc-per-node", "2", "--device", "cpu"]
    for attempt in (1, 2):  # a gloo start aborts now and then on this machine (ENVIRONMENT.md)
        try:
            out = subprocess.run(cmd, env=safe_env(), capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"torchrun did not finish in {err.timeout} s: {(err.stderr or b'')[-500:]!r}")
        if out.returncode == 0 or attempt == 2 or "SIGABRT" not in out.stderr + out.stdout:
            break
        shutil.rmtree(results, ignore_errors=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = load(results / RUNS_FILE).runs
    assert len(rows) == 1, f"expected rank 0's row only: {[r.error for r in rows]}"
    row = rows[0]
    assert row.status == "ok" and row.env["world_size"] == 2 and row.metrics["world_size"] == 2
    assert row.metrics["train_images_per_s"] > 0 and row.metrics["eval_num_samples"] == 6
    with np.load(results / row.artifacts["samples_npz"]) as npz:
        assert npz["arr_0"].shape == (6, 8, 8, 1) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]


def test_batch_not_split_by_ranks_is_one_error_line(tmp_path, monkeypatch, capsys) -> None:
    results = tmp_path / "r"
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("batch_size = 16", "batch_size = 16, grad_accum = 3"))
    code, err = _cli(monkeypatch, capsys, "run", "--matrix", str(matrix), "--results-dir", str(results),
                     "--nproc-per-node", "2", "--device", "cpu")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "train.batch_size 16 must be a multiple of world size 2 x train.grad_accum 3" in err
    assert not (results / RUNS_FILE).exists()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"arflowbench.cell" in Path(
                f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_rank_fails_the_cell_cleanly_and_a_rerun_resumes(tmp_path: Path) -> None:
    import signal
    import time

    results = tmp_path / "r"
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("steps = 4, batch_size = 16", "steps = 400, batch_size = 16"))
    cmd = [*module_argv("arflowbench.cli"), "run", "--matrix", str(matrix), "--results-dir",
           str(results), "--no-progress", "--threads", "1", "--nproc-per-node", "2",
           "--device", "cpu", "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd, env=safe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not list(results.glob("artifacts/train/*/checkpoint.pt")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=120)  # no hang: the peer's collective fails, the launcher stops
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the cell hung after one rank was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    rows = load(results / RUNS_FILE).runs
    assert len(rows) == 1 and rows[0].status == "failed" and rows[0].error, rows
    rerun = subprocess.run(cmd, env=safe_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, [r.error for r in load(results / RUNS_FILE).runs]
    ok = [r for r in load(results / RUNS_FILE).runs if r.status == "ok"]
    assert len(ok) == 1 and ok[0].metrics["resumed_from_step"] >= 5


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_launched_cell_leaves_without_the_interpreter_teardown(world_size: str) -> None:
    """Under a launcher the cell exits with its code but skips the teardown (where gloo's threads
    can abort a finished process); a single process exits normally (atexit handlers run)."""
    code = ("import atexit, sys; from arflowbench.cell import exit_process; "
            "atexit.register(lambda: print('teardown ran')); print('done', flush=False); "
            "exit_process(3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=safe_env({**os.environ, "WORLD_SIZE": world_size}), timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines() == (["done", "teardown ran"] if world_size == "1" else ["done"])
