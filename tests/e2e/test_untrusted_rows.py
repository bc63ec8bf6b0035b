"""Rows are data, not paths: crafted runs.jsonl rows cannot make `report` read a file from
outside the results dir, nor write one outside the report folder."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from arflowbench import report
from arflowbench.results import append_row, path_inside

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
GOOD_ID = "0123456789ab"


def _row(run_id: str, samples: str) -> dict:
    return {"schema": 2, "kind": "run", "run_id": run_id, "status": "ok", "matrix": "m",
            "cell": {"train.lr": 0.1}, "artifacts": {"samples": samples}}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """A results dir whose rows try to copy files out of and into arbitrary places."""
    results = tmp_path / "results"
    (results / "artifacts" / GOOD_ID).mkdir(parents=True)
    (results / "artifacts" / GOOD_ID / "samples.png").write_bytes(PNG)
    secret = tmp_path / "secret.png"  # outside the results dir
    secret.write_bytes(b"SECRET")
    os.symlink(secret, results / "artifacts" / "link.png")  # inside, pointing out
    (results / "notes.txt").write_text("not an image")
    runs = results / "runs.jsonl"
    append_row(runs, _row(GOOD_ID, f"artifacts/{GOOD_ID}/samples.png"))
    for i, samples in enumerate(["../secret.png", str(secret), "artifacts/link.png",
                                 "artifacts/../../secret.png", "notes.txt", "."], start=1):
        append_row(runs, _row(f"{i:012x}", samples))
    # ids that would place the copy elsewhere: rejected when the row is read
    for bad_id in ("../../../escaped", "/tmp/escaped", "a/../../b", "UPPER", "x" * 65):
        append_row(runs, _row(bad_id, f"artifacts/{GOOD_ID}/samples.png"))
    return results


def test_report_copies_only_grids_inside_the_results_dir(crafted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = _tree(tmp_path)
    err = io.StringIO()
    with redirect_stderr(err):
        md = report.write_report(crafted, out, paper_dir=tmp_path).read_text()
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"{GOOD_ID}.png"]
    assert (out / "samples" / f"{GOOD_ID}.png").read_bytes() == PNG
    assert b"SECRET" not in b"".join(_tree(out).values())
    after = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("out/")}
    assert after == before  # nothing written anywhere else
    warnings = err.getvalue()
    assert warnings.count("sample grid") == 6  # one per crafted path
    assert warnings.count("run_id: String should match pattern") == 5  # one per crafted id
    assert "escaped" not in md.split("## Warnings")[0]  # a bad id never reaches the tables
    assert not (tmp_path.parent / "escaped").exists() and not Path("/tmp/escaped").exists()


@pytest.mark.parametrize("rel", ["../x.png", "/etc/passwd", "a/../../x.png", "", ".", None, 5,
                                 "a\0b"])
def test_path_inside_refuses_paths_out_of_the_results_dir(tmp_path: Path, rel) -> None:
    assert path_inside(tmp_path, rel) is None


def test_path_inside_keeps_paths_inside(tmp_path: Path) -> None:
    assert path_inside(tmp_path, "artifacts/a/../b/x.png") == tmp_path.resolve() / \
        "artifacts/b/x.png"
