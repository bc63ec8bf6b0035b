"""Every bad input: one `error:` line, exit code 2, no traceback, nothing written, before any work.

`CASES` is the specification: each row names the input, the files it needs and the command line.
Add a row for every bad input found. The CLI runs in this process (`cli_inprocess`), in a fresh
folder that is compared before and after: a bad input may not create or change any file there.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .test_cli import DEBUG_MATRIX, cli_inprocess

#: a valid one-cell matrix (dotted keys only, so a case can add any key to [base])
BASE = """name = "bad"
[base]
data.name = "digits"
model.flavor = "debug"
train.steps = 2
train.batch_size = 8
sample.steps = 2
sample.grid_per_class = 1

[axes]
"train.seed" = [0]
"""
Setup = Callable[[Path], list[str]]


def matrix(extra: str = "", text: str | None = None) -> Setup:
    """A matrix file: `BASE` with `extra` lines set in [base] (replacing its keys), or `text`."""
    def setup(tmp: Path) -> list[str]:
        keys = {line.split("=")[0].strip() for line in extra.splitlines()}
        kept = [line for line in BASE.splitlines() if line.split("=")[0].strip() not in keys]
        body = text if text is not None else "\n".join(kept).replace(
            "\n[axes]", f"\n{extra}\n[axes]")
        (tmp / "m.toml").write_text(body)
        return ["--matrix", str(tmp / "m.toml")]
    return setup


def raw_matrix(data: bytes) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / "m.toml").write_bytes(data)
        return ["--matrix", str(tmp / "m.toml")]
    return setup


def matrix_dir(tmp: Path) -> list[str]:
    (tmp / "m.toml").mkdir()
    return ["--matrix", str(tmp / "m.toml")]


def _png(path: Path, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 10, 10)).save(path)


def imagefolder(kind: str) -> Setup:
    """A matrix on an imagefolder dataset with one defect (`kind`)."""
    def setup(tmp: Path) -> list[str]:
        root = tmp / "imgs"
        for split in ("train", "test"):
            for cls in ("a", "b"):
                for i in range(4):
                    _png(root / split / cls / f"{i}.png")
        if kind == "undecodable":
            (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        elif kind == "empty-class":
            (root / "train" / "c").mkdir()
        elif kind == "test-only-class":
            _png(root / "test" / "zebra" / "0.png")
        data = f'data = {{ name = "imagefolder", options = {{ root = "{root}", image_size = 8 }} }}'
        return matrix(text=BASE.replace('data.name = "digits"', data))(tmp)
    return setup


def samples(kind: str) -> Setup:
    """`eval --samples` on a damaged file or folder."""
    def setup(tmp: Path) -> list[str]:
        target: Path
        if kind == "truncated-npz":
            buf = io.BytesIO()
            np.savez(buf, np.zeros((20, 8, 8, 3), np.uint8))
            (tmp / "s.npz").write_bytes(buf.getvalue()[:300])
            target = tmp / "s.npz"
        elif kind == "corrupt-npz":
            with zipfile.ZipFile(tmp / "s.npz", "w") as z:
                z.writestr("arr_0.npy", b"not an array")
            target = tmp / "s.npz"
        else:
            for i in range(5):
                _png(tmp / "pngs" / f"{i}.png")
            data = (tmp / "pngs" / "4.png").read_bytes()
            (tmp / "pngs" / "4.png").write_bytes(data[:40] if kind == "truncated-png"
                                                 else b"not a png at all")
            target = tmp / "pngs"
        return ["eval", "--samples", str(target), "--dataset", "digits",
                "--extractor", "classifier"]
    return setup


def runs_dir(tmp: Path) -> list[str]:
    (tmp / "res" / "runs.jsonl").mkdir(parents=True)
    return ["--results-dir", str(tmp / "res")]


def out_under_a_file(tmp: Path) -> list[str]:
    (tmp / "res").mkdir()
    (tmp / "afile").write_text("x")
    return ["--results-dir", str(tmp / "res"), "--out", str(tmp / "afile" / "report")]


def nothing(tmp: Path) -> list[str]:
    return []


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
FIDELITY = '[{ name = "fidelity", options = { extractor = "classifier"'

#: (id, command before the setup's arguments, setup, command after, text the error must hold
#: [, a skip mark])
CASES = [
    # CLI options validated by RuntimeOptions
    ("run --device gpu", ["run"], matrix(), ["--device", "gpu"], "--device"),
    ("run --threads 0", ["run"], matrix(), ["--threads", "0"], "--threads"),
    ("run --checkpoint-every 0", ["run"], matrix(), ["--checkpoint-every", "0"],
     "--checkpoint-every"),
    ("run --device cuda, no GPU", ["run"], matrix(), ["--device", "cuda"], "no CUDA", NO_GPU),
    ("run --data-root missing", ["run"], matrix(), ["--data-root", "/nonexistent/data"],
     "--data-root"),
    ("validate --data-root missing", ["validate"], matrix(), ["--data-root", "/nonexistent"],
     "--data-root"),
    # bench options
    ("bench attention --repeats 0", ["bench", "attention"], nothing, ["--repeats", "0"],
     "--repeats"),
    ("bench attention --dim 0", ["bench", "attention"], nothing, ["--dim", "0"], "--dim"),
    ("bench attention --device tpu", ["bench", "attention"], nothing, ["--device", "tpu"],
     "--device"),
    ("bench attention --backends nope", ["bench", "attention"], nothing, ["--backends", "nope"],
     "nope"),
    ("bench attention --heads 7", ["bench", "attention"], nothing, ["--heads", "7"], "--heads 7"),
    ("bench attention --warmup -1", ["bench", "attention"], nothing, ["--warmup", "-1"],
     "--warmup"),
    ("bench sampling --steps 0", ["bench", "sampling"], nothing, ["--steps", "0"], "--steps"),
    ("bench sampling --flavor XXL", ["bench", "sampling"], nothing, ["--flavor", "XXL"], "XXL"),
    ("bench sampling --device tpu", ["bench", "sampling"], nothing, ["--device", "tpu"],
     "--device"),
    ("bench sampling --batch 0", ["bench", "sampling"], nothing, ["--batch", "0"], "--batch"),
    # matrix files
    ("matrix not UTF-8", ["run"], raw_matrix(b'name = "\xff\xfe"\n'), [], "not UTF-8"),
    ("matrix is a folder", ["run"], matrix_dir, [], "not a file"),
    ("matrix nested 100 deep", ["validate"], raw_matrix(b"a = " + b"[" * 100 + b"]" * 100),
     [], "nested"),
    ("matrix nested 100000 deep", ["validate"],
     raw_matrix(b"a = " + b"[" * 100_000 + b"]" * 100_000), [], "nested"),
    ("name = 5", ["run"], matrix(text="name = 5\n" + BASE.split("\n", 2)[2]), [], "name"),
    ("base = 5", ["run"], matrix(text="base = 5\n"), [], "base"),
    ("axes = 5", ["validate"], matrix(text="axes = 5\n"), [], "axes"),
    ("exclude = 5", ["validate"], matrix(text="exclude = 5\n"), [], "exclude"),
    ("on_unavailable = 1", ["validate"], matrix(text="on_unavailable = 1\n"), [],
     "on_unavailable"),
    # booleans are not numbers; inf and nan are not values
    ("train.steps = true", ["run"], matrix("train.steps = true"), [], "boolean"),
    ("train.lr = inf", ["run"], matrix("train.lr = inf"), [], "finite"),
    ("train.lr = nan", ["validate"], matrix("train.lr = nan"), [], "finite"),
    ("sample.cfg_scale = true", ["run"], matrix("sample.cfg_scale = true"), [], "boolean"),
    ("train.betas = [0.9, true]", ["run"], matrix("train.betas = [0.9, true]"), [], "boolean"),
    ("eval.at = [true]", ["run"], matrix("eval.at = [true]\neval.num_samples = 10"), [],
     "boolean"),
    ("model.patch_size = true", ["run"], matrix("model.patch_size = true"), [], "boolean"),
    ("metric option kid_subsets = true", ["run"],
     matrix(f"eval.num_samples = 10\neval.metrics = {FIDELITY}, kid_subsets = true }} }}]"),
     [], "boolean"),
    ("metric option batch_size = inf", ["run"],
     matrix(f"eval.num_samples = 10\neval.metrics = {FIDELITY}, batch_size = inf }} }}]"),
     [], "finite"),
    # values checked before training
    ("fidelity reference_split the dataset lacks", ["run"],
     matrix(f'eval.num_samples = 10\neval.metrics = {FIDELITY}, reference_split = "val" }} }}]'),
     [], "reference_split"),
    ("KID subset larger than the samples", ["run"],
     matrix(f"eval.num_samples = 10\neval.metrics = {FIDELITY}, kid_subset_size = 50 }} }}]"),
     [], "kid_subset_size 50"),
    ("fewer samples than precision/recall needs", ["run"],
     matrix(f"eval.num_samples = 2\neval.metrics = {FIDELITY} }} }}]"), [], "at least"),
    ("a batch that cannot be allocated", ["run"], matrix("train.batch_size = 1_000_000_000_000"),
     [], "GiB"),
    # image folders
    ("imagefolder file that cannot be decoded", ["run"], imagefolder("undecodable"), [],
     "broken.png"),
    ("imagefolder empty class folder", ["run"], imagefolder("empty-class"), [], "holds no images"),
    ("imagefolder test class train lacks", ["run"], imagefolder("test-only-class"), [], "zebra"),
    # eval inputs
    ("eval truncated .npz", [], samples("truncated-npz"), [], "s.npz"),
    ("eval corrupt .npz", [], samples("corrupt-npz"), [], "s.npz"),
    ("eval truncated PNG", [], samples("truncated-png"), [], "4.png"),
    ("eval not a PNG", [], samples("not-png"), [], "4.png"),
    ("eval --kid-subset-size 1", [], samples("not-png"), ["--kid-subset-size", "1"],
     "--kid-subset-size"),
    ("eval --device cuda, no GPU", [], samples("not-png"), ["--device", "cuda"], "no CUDA",
     NO_GPU),
    ("eval --data-root missing", [], samples("not-png"), ["--data-root", "/nonexistent"],
     "--data-root"),
    # the results store and the report
    ("runs.jsonl is a folder (run)", ["run", "--matrix", str(DEBUG_MATRIX)], runs_dir, [],
     "not a file"),
    ("runs.jsonl is a folder (report)", ["report"], runs_dir, [], "not a file"),
    ("report --out unwritable", ["report"], out_under_a_file, [], "afile"),
    ("report on a results dir that does not exist", ["report", "--results-dir", "/nonexistent/r"],
     nothing, [], "--results-dir"),
]


def _tree(root: Path) -> dict[str, tuple[bool, bytes]]:
    return {str(p.relative_to(root)): (p.is_dir(), b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("before", "setup", "after", "says"),
                         [pytest.param(*c[1:5], id=c[0], marks=c[5:]) for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(before, setup, after, says, tmp_path, monkeypatch,
                                                capsys) -> None:
    monkeypatch.chdir(tmp_path)  # defaults (results/, reports) would land here: none may
    args = setup(tmp_path)
    files = _tree(tmp_path)
    quiet = ["--no-progress"] if before[:1] == ["run"] else []
    code, out, err = cli_inprocess(monkeypatch, capsys, *before, *args, *after, *quiet)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert _tree(tmp_path) == files  # nothing written
