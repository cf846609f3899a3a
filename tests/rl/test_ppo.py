"""PPO-clip loss against a direct per-sample reference; diagnostics; KL to the anchor."""
import math

import pytest
import torch

from cxrl.rl.ppo import approx_kl, clip_fraction, kl_to_anchor, ppo_clip_loss


def _reference_loss(lp, old, adv, eps, adv_clip):
    total = 0.0
    for a, b, c in zip(lp.tolist(), old.tolist(), adv.tolist()):
        c = max(-adv_clip, min(adv_clip, c))
        r = math.exp(a - b)
        total += -min(r * c, max(1 - eps, min(1 + eps, r)) * c)
    return total / len(lp)


@pytest.mark.parametrize("eps", [1e-4, 0.2])
def test_loss_matches_reference_and_gradient(eps):
    g = torch.Generator().manual_seed(3)
    lp = (torch.randn(13, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    old = torch.randn(13, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(13, generator=g, dtype=torch.float64) * 4
    loss, stats = ppo_clip_loss(lp, old, adv, eps, 5.0)
    assert loss.item() == pytest.approx(_reference_loss(lp.detach(), old, adv, eps, 5.0), rel=1e-12)
    loss.backward()
    # gradient: -A*r/B where the unclipped term is the active (larger-loss) one, else 0
    r = torch.exp(lp.detach() - old)
    a = adv.clamp(-5, 5)
    active = (-a * r) >= (-a * r.clamp(1 - eps, 1 + eps))
    expected = torch.where(active, -a * r, torch.zeros_like(r)) / 13
    torch.testing.assert_close(lp.grad, expected)
    assert stats.clip_fraction.item() == pytest.approx(((r - 1).abs() > eps).double().mean().item())


def test_ratio_one_gives_plain_policy_gradient():
    lp = torch.randn(6, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 7.0, -9.0, 0.5, 0.0])
    loss, stats = ppo_clip_loss(lp, lp.detach(), adv, 1e-4, 5.0)
    loss.backward()
    assert stats.ratio_mean.item() == 1.0 and stats.clip_fraction.item() == 0.0 and stats.approx_kl.item() == 0.0
    torch.testing.assert_close(lp.grad, -adv.clamp(-5, 5) / 6)


def test_diagnostics_and_bad_shapes():
    assert approx_kl(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(1.0)
    assert clip_fraction(torch.tensor([1.0, 1.5, 0.5, 1.05]), 0.1).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3), 0.1, 5.0)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0, 5.0)


def test_kl_to_anchor_is_gaussian_kl():
    g = torch.Generator().manual_seed(0)
    mu, mu_a = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1, 1)
    kl = kl_to_anchor(mu, mu_a, std)
    # closed form of KL between two isotropic Gaussians with equal variance, per dimension
    for i in range(3):
        p = torch.distributions.Normal(mu[i].flatten(), std[i].flatten().expand(32))
        q = torch.distributions.Normal(mu_a[i].flatten(), std[i].flatten().expand(32))
        assert kl[i].item() == pytest.approx(torch.distributions.kl_divergence(p, q).mean().item(), rel=1e-10)
