"""FID: the eigen-based Fréchet distance against scipy's sqrtm reference formula, exact cases, and
the named torchxrayvision extractor (missing weights are an error; present weights load offline)."""
import math
import os

import numpy as np
import pytest
import torch

from cxrl.eval.fid import (
    ClassifierFeatures, XRVDenseNetFeatures, extract_features, feature_statistics, fid_from_features,
    frechet_distance, sqrtm_psd,
)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula: sqrtm of the (non-symmetric) covariance product."""
    linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n_a,n_b,dim", [(50, 70, 7), (200, 150, 33)])
def test_matches_scipy_reference(n_a, n_b, dim):
    g = torch.Generator().manual_seed(dim)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = torch.randn(n_a, dim, generator=g, dtype=torch.float64) @ mix
    b = torch.randn(n_b, dim, generator=g, dtype=torch.float64) @ (mix + 0.3 * torch.eye(dim)) + 0.5
    ours = fid_from_features(a, b)
    ref = _scipy_fid(a.numpy(), b.numpy())
    assert ours == pytest.approx(ref, rel=1e-7, abs=1e-8)


def test_exact_diagonal_case():
    # diagonal covariances: FID = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2
    from cxrl.eval.fid import GaussianStats

    s1 = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    s2 = torch.tensor([4.0, 1.0, 16.0], dtype=torch.float64)
    a = GaussianStats(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.diag(s1), 10)
    b = GaussianStats(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.diag(s2), 10)
    expected = 1.0 + 0.0 + 4.0 + ((s1.sqrt() - s2.sqrt()) ** 2).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_give_zero_and_rank_deficient_is_finite():
    x = torch.randn(20, 64)  # N < D: singular covariance, the case where naive sqrtm goes complex
    assert fid_from_features(x, x.clone()) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(fid_from_features(x, torch.randn(20, 64)))


def test_sqrtm_psd_squares_back():
    m = torch.randn(9, 9, dtype=torch.float64)
    psd = m @ m.T
    root = sqrtm_psd(psd)
    torch.testing.assert_close(root @ root, psd, rtol=1e-9, atol=1e-9)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_statistics(torch.randn(1, 4))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_missing_xrv_weights_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        XRVDenseNetFeatures(cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not a torchxrayvision DenseNet-121"):
        XRVDenseNetFeatures(weights="resnet50-res512-all", cache_dir=str(tmp_path))


def test_xrv_extractor_loads_from_cache_dir(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    # a randomly initialised DenseNet saved in torchxrayvision's own file format and name
    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    torch.manual_seed(0)
    net = xrv.models.DenseNet(num_classes=18)
    torch.save(net, os.path.join(tmp_path, os.path.basename(url)))
    extractor = XRVDenseNetFeatures(cache_dir=str(tmp_path))
    assert extractor.name == "xrv-densenet121-res224-all/features2"
    images = torch.rand(3, 1, 64, 64)
    feats = extract_features(extractor, images, batch_size=2)
    assert feats.shape == (3, 1024)
    # same preprocessing by hand: resize to 224, map [0, 1] to [-1024, 1024]
    x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = net.eval().features2(x * 2048 - 1024)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)


def test_classifier_features_requires_features_method():
    class WithFeatures(torch.nn.Module):
        def features(self, images):
            return images.mean(dim=(2, 3))

    extractor = ClassifierFeatures(WithFeatures(), name="toy")
    assert extractor(torch.rand(2, 1, 8, 8)).shape == (2, 1)
    with pytest.raises(ValueError, match="features"):
        ClassifierFeatures(torch.nn.Linear(2, 2), name="linear")
