"""The training objective: Min-SNR weighting puts every prediction target on the same x_0 scale."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_ddpm.config import load_config
from hf_ddpm.objectives import diffusion_loss, draw_batch, min_snr_weight, p2_weight, training_loss
from hf_ddpm.scheduler import LinearNoiseScheduler

REPO = Path(__file__).resolve().parents[1]


def wrong_prediction(prediction_type: str):
    """A prediction 0.1 off its target at five timesteps, and the x_0 the scheduler's own step derives from it
    (eq. 15 of Ho et al. for epsilon): (scheduler, t, noise, x_t, target, prediction, implied x_0)."""
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
    return scheduler, t, x0, noise, xt, target, prediction, implied_x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_equals_clipped_snr_times_x0_error(prediction_type):
    """For any wrong prediction, weight x (target error)^2 = min(SNR_t, gamma) x (implied x_0 error)^2."""
    scheduler, t, x0, _, _, target, prediction, implied_x0 = wrong_prediction(prediction_type)
    ab = scheduler.alphas_cumprod[t].double()
    gamma = 5.0
    lhs = min_snr_weight(scheduler, t, gamma).double() * (prediction - target).square().mean((1, 2, 3))
    rhs = (ab / (1 - ab)).clamp(max=gamma) * (implied_x0 - x0).square().mean((1, 2, 3))
    assert torch.allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_p2_weight_equals_the_epsilon_loss_over_one_plus_snr(prediction_type):
    """For any wrong prediction, weight x (target error)^2 = (implied epsilon error)^2 / (1 + SNR_t)."""
    scheduler, t, _, noise, xt, target, prediction, implied_x0 = wrong_prediction(prediction_type)
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


class FixedOutput(torch.nn.Module):
    """A 'UNet' whose output is one leaf tensor, whatever its input: the loss's gradient lands on it."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = torch.nn.Parameter(output)

    def forward(self, x, t):
        return type("Out", (), {"sample": self.output})()


def _mnist_like(batch: int = 16) -> torch.Tensor:
    """8-bit images on [-1, 1] (the decoder term needs the 8-bit grid)."""
    images = torch.randint(0, 256, (batch, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    return images.float() / 127.5 - 1


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_hybrid_loss_trains_the_mean_by_l_simple_and_the_variances_by_the_bound(snr_gamma):
    """L_hybrid = L_simple + 0.001 T L_t (Nichol & Dhariwal 2021): its value, and the stop-gradient. The
    gradient on the mean channels is L_simple's alone; on the variance channels, the bound term's alone."""
    from hf_ddpm.likelihood import bound_tables, term_bits
    from hf_ddpm.objectives import VLB_WEIGHT

    scheduler = LinearNoiseScheduler(variance_type="learned_range")
    x0 = _mnist_like()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=g)
    timesteps = torch.tensor([0, 1, 2, 5, 50, 100, 300, 500, 700, 900, 999, 0, 3, 10, 400, 998])
    output = torch.cat(
        [noise + 0.3 * torch.randn(x0.shape, generator=g), torch.rand(x0.shape, generator=g) * 2 - 1], 1
    )
    model = FixedOutput(output.clone())
    loss = diffusion_loss(model, scheduler, x0, snr_gamma=snr_gamma, noise=noise, timesteps=timesteps)
    loss.backward()

    mean_only = FixedOutput(output[:, :1].clone())
    simple = diffusion_loss(
        mean_only, LinearNoiseScheduler(), x0, snr_gamma=snr_gamma, noise=noise, timesteps=timesteps
    )
    simple.backward()
    x_t = scheduler.add_noise(x0, noise, timesteps)
    variance = output[:, 1:].clone().requires_grad_(True)
    frozen = torch.cat([output[:, :1], variance], 1)
    bound = term_bits(
        scheduler, bound_tables(scheduler), frozen, x0, x_t, timesteps, clip_denoised=False
    ).mean()
    bound.backward()
    assert VLB_WEIGHT == 0.001
    assert loss.item() == pytest.approx(simple.item() + 0.001 * 1000 * bound.item(), rel=1e-5)
    torch.testing.assert_close(model.output.grad[:, :1], mean_only.output.grad)
    torch.testing.assert_close(model.output.grad[:, 1:], 0.001 * 1000 * variance.grad, rtol=1e-4, atol=1e-9)
    assert variance.grad.abs().sum() > 0


def test_learned_variance_needs_learned_range_for_training():
    scheduler = LinearNoiseScheduler(variance_type="learned")
    model = FixedOutput(torch.zeros(2, 2, 6, 6))
    with pytest.raises(ValueError, match="cannot keep positive: use learned_range"):
        diffusion_loss(model, scheduler, _mnist_like(2), generator=torch.Generator().manual_seed(0))


def test_a_few_steps_of_l_hybrid_lower_the_bound_on_real_mnist(mnist_dir):
    """The tiny UNet with 2 output channels on real digits: 30 AdamW steps of L_hybrid lower the held-out
    bound term (same noise and timesteps before and after) and L_simple both."""
    from hf_ddpm.config import DatasetConfig
    from hf_ddpm.data import load_image_dataset, to_model_range
    from hf_ddpm.likelihood import bound_tables, term_bits
    from hf_ddpm.models import build_unet

    dataset, _ = load_image_dataset(DatasetConfig(path=str(mnist_dir), max_samples=512), progress=False)
    images = to_model_range(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    scheduler = LinearNoiseScheduler(variance_type="learned_range")
    torch.manual_seed(0)
    unet = build_unet("tiny", variance_type="learned_range")
    assert unet.config.out_channels == 2
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    held_out = draw_batch(99, 0, (64, 1, 28, 28), 1000)
    tables = bound_tables(scheduler)

    def held_out_terms() -> tuple[float, float]:
        with torch.no_grad():
            x0 = images[-64:]
            x_t = scheduler.add_noise(x0, held_out.noise, held_out.timesteps)
            output = unet(x_t, held_out.timesteps).sample
            vlb = term_bits(scheduler, tables, output, x0, x_t, held_out.timesteps, clip_denoised=False)
            return vlb.mean().item(), ((output[:, :1] - held_out.noise) ** 2).mean().item()

    before = held_out_terms()
    for step in range(30):
        batch = images[(step * 32) % 448 :][:32]
        draws = draw_batch(0, step, batch.shape, 1000)
        loss = diffusion_loss(unet, scheduler, batch, noise=draws.noise, timesteps=draws.timesteps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = held_out_terms()
    assert after[0] < 0.7 * before[0] and after[1] < 0.7 * before[1], (before, after)


class Oracle(torch.nn.Module):
    """Outputs a fixed tensor whatever it is asked: a stand-in UNet that knows one target exactly."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, sample, timestep, **conditioning):
        return SimpleNamespace(sample=self.output)


@pytest.mark.parametrize("config, objective", [("mnist.yaml", "v"), ("mnist-flow.yaml", "velocity")])
def test_training_loss_regresses_the_target_the_config_names(config, objective):
    """`training_loss` (train.py's and the benchmarks' loss) is zero for a model that outputs the config's own
    target (v of Salimans & Ho, or flow matching's noise - x_0) and positive for the other objectives'."""
    cfg = load_config(REPO / "training" / "configs" / config)
    shape = (8, 1, 28, 28)
    draws = draw_batch(0, 0, shape, cfg.diffusion.num_train_timesteps)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scheduler = LinearNoiseScheduler(**cfg.diffusion.scheduler_kwargs())
    targets = {
        "epsilon": draws.noise,
        "v": scheduler.get_velocity(x0, draws.noise, draws.timesteps),
        "velocity": draws.noise - x0,
    }
    options = {"diffusion": cfg.diffusion, "training": cfg.training}
    losses = {
        name: training_loss(Oracle(t), scheduler, x0, draws, **options).item() for name, t in targets.items()
    }
    assert losses.pop(objective) < 1e-10
    assert min(losses.values()) > 0.01
