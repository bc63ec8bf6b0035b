"""The metrics cache loads only what arflowbench wrote: a checksum beside every file, planted or
altered files refused with a clear error (and never unpickled, by us or by torch-fidelity)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from arflowbench.metrics import checksums, classifier, inception
from arflowbench.metrics.base import CACHE_ENV, FeatureWeightsError
from arflowbench.metrics.evaluate import evaluate_samples


class _Payload:
    """Unpickling this creates a marker file: proof that a planted file was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": _Payload(marker)}, path)


def test_save_and_load_verified_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    checksums.save_verified({"w": torch.arange(3)}, path)
    assert checksums.checksum_path(path).read_text().split()[0] == checksums.sha256_file(path)
    assert torch.equal(checksums.load_verified(path)["w"], torch.arange(3))


def test_altered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    checksums.save_verified({"w": torch.zeros(3)}, path)
    marker = tmp_path / "pwned"
    side = checksums.checksum_path(path).read_bytes()
    _plant(path, marker)  # the checksum of the old content stays beside it
    assert checksums.checksum_path(path).read_bytes() == side
    with pytest.raises(FeatureWeightsError, match="does not match the checksum"):
        checksums.load_verified(path)
    assert not marker.exists()


def test_planted_converted_inception_file_is_refused(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    _plant(cache / "inception" / inception.CONVERTED_FILE, marker)
    with pytest.raises(FeatureWeightsError, match="no checksum from arflowbench"):
        inception.inception_weights(cache, source=tmp_path / "unused.pt")
    with pytest.raises(FeatureWeightsError, match="no checksum from arflowbench"):
        inception.load_weights(cache / "inception" / inception.CONVERTED_FILE)
    assert not marker.exists()


def test_planted_classifier_is_refused(tmp_path: Path, digits) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    key = classifier.classifier_key(digits)[0]
    _plant(cache / "classifier" / f"{key}.pt", marker)
    (cache / "classifier" / f"{key}.json").write_text("{}")
    with pytest.raises(FeatureWeightsError, match=rf"{key}\.pt: cache file with no checksum"):
        classifier.dataset_classifier(digits, cache)
    with pytest.raises(FeatureWeightsError, match="no checksum"):
        classifier.load_classifier(cache / "classifier" / f"{key}.pt")
    assert not marker.exists()


@pytest.fixture
def evaluated(tmp_path: Path, digits) -> tuple[Path, dict]:
    """A private cache holding the session's classifier and one evaluation's fidelity files."""
    session = Path(os.environ[CACHE_ENV])
    classifier.dataset_classifier(digits, session)  # trained once per session
    cache = tmp_path / "cache"
    shutil.copytree(session / "classifier", cache / "classifier")
    test = digits.load("test")
    kw = dict(samples=test.images[:40], labels=None, dataset=digits, extractor="classifier",
              cache_dir=cache, kid_subsets=2, reference_num=40)
    first = evaluate_samples(**kw)
    return cache, {**kw, "expected": first}


def test_torch_fidelity_cache_is_checksummed_and_planted_files_refused(evaluated, tmp_path):
    cache, kw = evaluated
    expected = kw.pop("expected")
    files = sorted((cache / "fidelity").glob("*.pt"))
    assert files and all(checksums.checksum_path(p).is_file() for p in files)
    assert evaluate_samples(**kw)["fid"] == expected["fid"]  # verified cache hit
    marker = tmp_path / "pwned"
    _plant(files[0], marker)  # altered: its checksum no longer matches
    with pytest.raises(FeatureWeightsError, match="does not match the checksum"):
        evaluate_samples(**kw)
    checksums.checksum_path(files[0]).unlink()  # planted: no checksum at all
    with pytest.raises(FeatureWeightsError, match="no checksum from arflowbench"):
        evaluate_samples(**kw)
    assert not marker.exists()  # torch-fidelity never unpickled it
    files[0].unlink()  # deleting it, as the error says, re-creates it
    assert evaluate_samples(**kw)["fid"] == expected["fid"]
    assert checksums.checksum_path(files[0]).is_file()
