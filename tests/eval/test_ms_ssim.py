"""MS-SSIM: single scale against scikit-image's SSIM, multi-scale against an independent scipy.ndimage
implementation, and the properties (identity -> 1, symmetry, monotone in noise, scale reduction)."""
import numpy as np
import pytest
import torch

from cxrl.eval.ms_ssim import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_diversity, ms_ssim_num_scales, ssim


def _smooth_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_single_scale_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _smooth_images(2, 48, 0), _smooth_images(2, 48, 1)
    y = (0.6 * x + 0.4 * y).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = metrics.structural_similarity(
            x[i, 0].double().numpy(), y[i, 0].double().numpy(), data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(ms_ssim(x, y, scales=1), ours)


def _scipy_ms_ssim(a: np.ndarray, b: np.ndarray, scales: int) -> float:
    ndimage = pytest.importorskip("scipy.ndimage")
    w = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    c1, c2, r = 0.01**2, 0.03**2, 5
    out = 1.0
    for j in range(scales):
        f = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5, mode="constant")[r:-r, r:-r]
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
        cs = ((2 * cxy + c2) / (vx + vy + c2))
        lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        term = (lum * cs).mean() if j == scales - 1 else cs.mean()
        out *= max(term, 0.0) ** w[j]
        if j == scales - 1:
            break
        a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
        b = b.reshape(b.shape[0] // 2, 2, b.shape[1] // 2, 2).mean(axis=(1, 3))
    return out


@pytest.mark.parametrize("size,scales", [(64, 3), (96, 4), (176, 5)])
def test_multi_scale_matches_independent_reference(size, scales):
    x, y = _smooth_images(1, size, 2), _smooth_images(1, size, 3)
    y = (0.7 * x + 0.3 * y + 0.05 * torch.randn_like(x)).clamp(0, 1)
    assert ms_ssim_num_scales(size, size) == scales
    ours = float(ms_ssim(x, y)[0])
    ref = _scipy_ms_ssim(x[0, 0].double().numpy(), y[0, 0].double().numpy(), scales)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_properties_identity_symmetry_noise():
    x = _smooth_images(3, 64, 4)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(3, dtype=torch.float64))
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(y, x))
    previous = ms_ssim(x, x)
    for sigma in (0.05, 0.15, 0.4):
        g = torch.Generator().manual_seed(5)
        noisy = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
        value = ms_ssim(x, noisy)
        assert (value < previous).all()
        previous = value


def test_scale_reduction_and_errors():
    assert ms_ssim_num_scales(512, 512) == 5
    assert ms_ssim_num_scales(64, 64) == 3
    assert ms_ssim_num_scales(16, 16) == 1
    with pytest.raises(ValueError, match="at least 11 px"):
        ms_ssim_num_scales(8, 8)
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match="too many"):
        ms_ssim(x, x, scales=5)
    with pytest.raises(ValueError, match="same shape"):
        ms_ssim(x, torch.rand(1, 1, 32, 32))


def test_diversity_uses_all_pairs_and_reports_scales():
    base = _smooth_images(2, 64, 6)
    # prompt 0: four identical samples (no diversity); prompt 1: four independent images
    same = base[0:1].expand(4, 1, 64, 64)
    different = _smooth_images(4, 64, 8)
    samples = torch.stack([same, different])
    result = ms_ssim_diversity(samples)
    assert result.scales == 3 and result.image_size == (64, 64)
    assert sum(result.weights) == pytest.approx(1.0, abs=1e-5)
    assert result.per_prompt[0] == pytest.approx(1.0)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = torch.stack([ms_ssim(different[i:i + 1], different[j:j + 1])[0] for i, j in pairs]).mean()
    assert result.per_prompt[1] == pytest.approx(float(expected))
    assert result.mean == pytest.approx((1.0 + float(expected)) / 2)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        ms_ssim_diversity(torch.rand(4, 1, 64, 64))


def test_rgb_is_reduced_by_luminance():
    gray = _smooth_images(2, 32, 9)
    other = _smooth_images(2, 32, 10)
    # an RGB image whose BT.601 luminance equals the gray image
    rgb = torch.cat([gray, gray, gray], dim=1)
    torch.testing.assert_close(ms_ssim(rgb, torch.cat([other] * 3, dim=1)), ms_ssim(gray, other))
    zeros = torch.zeros_like(gray)
    red_a, red_b = torch.cat([gray, zeros, zeros], dim=1), torch.cat([other, zeros, zeros], dim=1)
    torch.testing.assert_close(ssim(red_a, red_b), ssim(0.299 * gray, 0.299 * other))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ssim(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
