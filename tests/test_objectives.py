"""The training objective: Min-SNR weighting puts every prediction target on the same x_0 scale."""

import pytest
import torch

from hf_ddpm.objectives import diffusion_loss, min_snr_weight
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


def test_snr_gamma_changes_the_loss_and_keeps_it_finite():
    scheduler = LinearNoiseScheduler()

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    plain = diffusion_loss(Zero(), scheduler, x0, torch.Generator().manual_seed(1))
    weighted = diffusion_loss(Zero(), scheduler, x0, torch.Generator().manual_seed(1), snr_gamma=5.0)
    # A zero prediction's epsilon loss is ~1 per pixel; min(SNR, 5) / SNR <= 1 only lowers it.
    assert plain.item() == pytest.approx(1.0, abs=0.1)
    assert 0 < weighted.item() < plain.item()
