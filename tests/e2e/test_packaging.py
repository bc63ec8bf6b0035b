"""The report links only files it wrote, and the wheel works outside a checkout: built offline,
installed into a temporary folder, its `ls`, `validate --matrix quickstart` and `report` run
from another directory with the shipped matrices and published numbers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arflowbench.report import write_report

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = [d for d in ("quickstart", "throughput", "bench") if (ROOT / "results" / d).is_dir()]


@pytest.mark.parametrize("name", COMMITTED)
def test_html_references_only_files_that_exist(name, tmp_path):
    results = tmp_path / name
    shutil.copytree(ROOT / "results" / name, results, ignore=shutil.ignore_patterns("report"))
    page = write_report(results, tmp_path / "out").parent / "index.html"
    refs = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.read_text())
    assert refs or name == "bench" or "<img" in page.read_text()
    for ref in refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        assert (page.parent / ref).is_file(), ref


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", str(ROOT), "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if build.returncode:
        pytest.skip(f"cannot build a wheel offline here: {build.stderr.strip()[-300:]}")
    (wheel,) = wheels.glob("arflowbench-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    (work / "results" / "quickstart").mkdir(parents=True)
    shutil.copy(ROOT / "results" / "quickstart" / "runs.jsonl", work / "results" / "quickstart")
    env = {**os.environ, "PYTHONPATH": str(target)}

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-P", "-m", "arflowbench.cli", *args], cwd=work,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert str(target) in cli("ls", "matrices")  # the wheel's own registry, not the checkout's
    assert "quickstart: 3 cells" in cli("validate", "--matrix", "quickstart")
    assert "results/quickstart/report/index.html" in cli("report")
    page = (work / "results" / "quickstart" / "report" / "report.md").read_text()
    assert "published (paper)" in page and "14.08" in page  # shipped registry/paper
    meta = next(target.glob("arflowbench-*.dist-info")) / "METADATA"
    assert "pip install" in meta.read_text() and "inception" in meta.read_text()
