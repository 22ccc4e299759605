"""The training objective: Min-SNR weighting puts every prediction target on the same x_0 scale."""

import pytest
import torch

from hf_ddpm.objectives import diffusion_loss, draw_batch, min_snr_weight, p2_weight
from hf_ddpm.scheduler import LinearNoiseScheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_equals_clipped_snr_times_x0_error(prediction_type):
    """For any wrong prediction, weight x (target error)^2 = min(SNR_t, gamma) x (implied x_0 error)^2."""
    scheduler = LinearNoiseScheduler(prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 100, 500, 999])
    x0, noise = (
        torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    xt = scheduler.add_noise(x0, noise, t)
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[
        prediction_type
    ]
    prediction = target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    # The scheduler's own conversion of the prediction to x_0 (eq. 15 of Ho et al. for epsilon).
    steps = [scheduler.step(p[None], int(s), x[None]) for p, s, x in zip(prediction, t, xt, strict=True)]
    implied_x0 = torch.cat([out.pred_original_sample for out in steps])
    ab = scheduler.alphas_cumprod[t].double()
    gamma = 5.0
    lhs = min_snr_weight(scheduler, t, gamma).double() * (prediction - target).square().mean((1, 2, 3))
    rhs = (ab / (1 - ab)).clamp(max=gamma) * (implied_x0 - x0).square().mean((1, 2, 3))
    assert torch.allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_p2_weight_equals_the_epsilon_loss_over_one_plus_snr(prediction_type):
    """For any wrong prediction, weight x (target error)^2 = (implied epsilon error)^2 / (1 + SNR_t)."""
    scheduler = LinearNoiseScheduler(prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 100, 500, 999])
    x0, noise = (torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    xt = scheduler.add_noise(x0, noise, t)
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[
        prediction_type
    ]
    prediction = target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    steps = [scheduler.step(p[None], int(s), x[None]) for p, s, x in zip(prediction, t, xt, strict=True)]
    implied_x0 = torch.cat([out.pred_original_sample for out in steps])
    ab = scheduler.alphas_cumprod[t].double()[:, None, None, None]
    implied_eps = (xt - ab.sqrt() * implied_x0) / (1 - ab).sqrt()  # eq. 4 of Ho et al. solved for eps
    snr = (ab / (1 - ab)).flatten()
    lhs = p2_weight(scheduler, t).double() * (prediction - target).square().mean((1, 2, 3))
    rhs = (implied_eps - noise).square().mean((1, 2, 3)) / (1 + snr)
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_snr_gamma_changes_the_loss_and_keeps_it_finite():
    scheduler = LinearNoiseScheduler()

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    plain = diffusion_loss(Zero(), scheduler, x0, generator=torch.Generator().manual_seed(1))
    weighted = diffusion_loss(
        Zero(), scheduler, x0, generator=torch.Generator().manual_seed(1), snr_gamma=5.0
    )
    # A zero prediction's epsilon loss is ~1 per pixel; min(SNR, 5) / SNR <= 1 only lowers it.
    assert plain.item() == pytest.approx(1.0, abs=0.1)
    assert 0 < weighted.item() < plain.item()


def test_draw_batch_two_processes_draw_the_rows_of_one():
    """What makes 1 process at batch 2B and 2 at batch B train on the same numbers."""
    shape = (8, 1, 4, 4)
    whole = draw_batch(0, 7, (16, 1, 4, 4), 1000, drop_prob=0.3)
    halves = [draw_batch(0, 7, shape, 1000, 0.3, num_processes=2, process_index=r) for r in (0, 1)]
    for name, value in whole._asdict().items():
        assert torch.equal(torch.cat([getattr(h, name) for h in halves]), value), name
    assert halves[0].noise.shape == shape and halves[0].timesteps.dtype == torch.int64
    assert torch.equal(draw_batch(0, 7, shape, 1000).noise, draw_batch(0, 7, shape, 1000).noise)
    assert not torch.equal(draw_batch(0, 8, shape, 1000).noise, draw_batch(0, 7, shape, 1000).noise)
    assert not torch.equal(draw_batch(1, 7, shape, 1000).noise, draw_batch(0, 7, shape, 1000).noise)


def test_draw_batch_rates():
    draws = draw_batch(3, 0, (20_000, 1, 1, 1), 1000, drop_prob=0.25)
    for mask, p in ((draws.drop, 0.25), (draws.flip, 0.5)):
        sigma = (p * (1 - p) / len(mask)) ** 0.5
        assert abs(mask.float().mean().item() - p) < 5 * sigma
    assert not draw_batch(3, 0, (1000, 1, 1, 1), 1000, drop_prob=0.0).drop.any()
    assert draws.timesteps.min() >= 0 and draws.timesteps.max() <= 999
    assert abs(draws.noise.std().item() - 1) < 0.05
