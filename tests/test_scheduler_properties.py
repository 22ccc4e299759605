"""Property tests of `LinearNoiseScheduler` with hypothesis: random configs over every DDPMScheduler key (beta
schedules and trained betas, zero terminal SNR, the six variance types with 2C outputs, clipping and dynamic
thresholding, spacings, offsets), random step counts and custom timesteps. Every step of a whole sampling loop
equals stock `DDPMScheduler`'s; `add_noise` is invertible given the exact noise; `step` keeps shape and dtype
and never makes a NaN, at any timestep."""

import numpy as np
import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_ddpm.scheduler import (
    BETA_SCHEDULES,
    LEARNED_VARIANCE_TYPES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    LinearNoiseScheduler,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STEP_TOL = 1e-6


@st.composite
def configs(draw, max_timesteps: int = 1000) -> dict:
    """Keyword arguments of a valid scheduler: any value stock accepts, minus the nonsense we refuse."""
    T = draw(st.integers(2, max_timesteps))
    prediction = draw(st.sampled_from(PREDICTION_TYPES))
    config = {
        "num_train_timesteps": T,
        "variance_type": draw(st.sampled_from(VARIANCE_TYPES)),
        "prediction_type": prediction,
        "clip_sample": draw(st.booleans()),
        "clip_sample_range": draw(st.floats(0.25, 3.0)),
        "thresholding": draw(st.booleans()),
        "dynamic_thresholding_ratio": draw(st.floats(0.5, 1.0)),
        "sample_max_value": draw(st.floats(1.0, 5.0)),
        "timestep_spacing": draw(st.sampled_from(TIMESTEP_SPACINGS)),
        "steps_offset": draw(st.integers(0, 3)),
        # x_0 cannot be recovered from epsilon at zero SNR (refused, see test_scheduler.py)
        "rescale_betas_zero_snr": prediction != "epsilon" and draw(st.booleans()),
    }
    schedule = draw(st.sampled_from([*BETA_SCHEDULES, "trained"]))
    if schedule == "trained":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        config["trained_betas"] = rng.uniform(1e-5, draw(st.floats(1e-3, 0.05)), T).tolist()
    else:
        beta_start = draw(st.floats(1e-5, 1e-2))
        config |= {
            "beta_schedule": schedule,
            "beta_start": beta_start,
            "beta_end": draw(st.floats(beta_start * 1.01, 0.05)),
        }
    return config


def gaussian(shape, dtype, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def model_output(variance_type: str | None, sample: torch.Tensor, seed: int) -> torch.Tensor:
    """A prediction that follows the sample, plus 2C variance channels for learned types: v in (-1, 1) for
    `learned_range`, a positive variance for `learned` (stock reads it raw)."""
    prediction = 0.3 * sample + gaussian(sample.shape, sample.dtype, seed)
    if variance_type not in LEARNED_VARIANCE_TYPES:
        return prediction
    raw = gaussian(sample.shape, sample.dtype, seed + 7)
    variance = torch.tanh(raw) if variance_type == "learned_range" else 1e-3 + 0.05 * raw.abs()
    return torch.cat([prediction, variance], dim=1)


def stock_twin(config: dict) -> DDPMScheduler:
    """Stock samples `fixed_large_log` as NaN (sqrt of log beta); its `fixed_large` is the same variance."""
    if config["variance_type"] == "fixed_large_log":
        config = {**config, "variance_type": "fixed_large"}
    return DDPMScheduler(**config)


@settings(max_examples=150, deadline=None)
@given(configs(), st.sampled_from(["steps", "all", "custom"]), st.sampled_from(DTYPES[:2]), st.data())
def test_every_step_of_a_sampling_loop_equals_stock(config, mode, dtype, data):
    ours, stock = LinearNoiseScheduler(**config), stock_twin(config)
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    T = config["num_train_timesteps"]
    if mode == "custom":
        chosen = data.draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=min(T, 40)))
        schedule = {"timesteps": sorted(chosen, reverse=True)}
    else:
        schedule = {"num_inference_steps": T if mode == "all" else data.draw(st.integers(1, min(T, 60)))}
    stock.set_timesteps(**schedule)
    if stock.timesteps.max() >= T:  # leading spacing pushed past T - 1 by steps_offset: we refuse it early
        return
    ours.set_timesteps(**schedule)
    n = len(ours.timesteps)
    # Stock's trailing spacing can append a spurious timestep -1 (see scheduler.py); we keep the n real ones.
    assert torch.equal(ours.timesteps, stock.timesteps[:n])

    seed = data.draw(st.integers(0, 2**20))
    gen_ours, gen_stock = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    sample_ours = sample_stock = gaussian((2, 1, 3, 3), dtype, seed)
    for i, t in enumerate(ours.timesteps):
        output = model_output(config["variance_type"], sample_stock, seed + i)
        a = ours.step(output, t, sample_ours, generator=gen_ours)
        b = stock.step(output, t, sample_stock, generator=gen_stock)
        for name in ("prev_sample", "pred_original_sample"):
            x, y = a[name].double(), b[name].double()
            assert x.dtype == y.dtype and torch.isfinite(x).all(), (name, int(t))
            error = ((x - y).abs() / y.abs().clamp(min=1)).max().item()
            assert error <= STEP_TOL, f"{name} differs by {error:.3g} at step {i}, t={int(t)}"
        sample_ours, sample_stock = a.prev_sample, b.prev_sample
    assert torch.equal(torch.randn(3, generator=gen_ours), torch.randn(3, generator=gen_stock))


shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8))


@settings(max_examples=200, deadline=None)
@given(configs(), shapes, st.sampled_from(DTYPES), st.data())
def test_x0_is_recovered_from_x_t_and_the_exact_noise(config, shape, dtype, data):
    """eq. 4, then eq. 15 or its v form: x_0 comes back up to rounding, magnified by 1 / sqrt(alpha_bar_t)."""
    scheduler = LinearNoiseScheduler(**config)
    T = scheduler.config.num_train_timesteps
    timesteps = torch.tensor(data.draw(st.lists(st.integers(0, T - 1), min_size=shape[0], max_size=shape[0])))
    x0 = (gaussian(shape, torch.float64, 1).clamp(-3, 3)).to(dtype)
    noise = gaussian(shape, dtype, 2)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    assert x_t.shape == x0.shape and x_t.dtype == dtype

    alpha_bar = scheduler._alpha_bar_for(timesteps, x_t)
    if scheduler.config.prediction_type == "v_prediction":
        output = scheduler.get_velocity(x0, noise, timesteps)
    elif scheduler.config.prediction_type == "sample":
        output = x0
    else:
        output = noise
    recovered = scheduler._predict_original(output, x_t, alpha_bar, 1 - alpha_bar)
    assert recovered.dtype == dtype
    bound = 16 * torch.finfo(dtype).eps * (1 + x0.abs().max() + noise.abs().max()).double()
    error = (recovered.double() - x0.double()).abs()
    assert (error <= bound / alpha_bar.double().sqrt()).all(), error.max()


@settings(max_examples=60, deadline=None)
@given(configs(), shapes, st.sampled_from(DTYPES), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_step_keeps_shape_and_dtype_and_stays_finite_at_every_timestep(config, shape, dtype, steps, seed):
    scheduler = LinearNoiseScheduler(**{**config, "steps_offset": 0})
    steps = min(steps, scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = gaussian(shape, dtype, seed)
    for t in scheduler.timesteps:
        output = model_output(scheduler.config.variance_type, gaussian(shape, dtype, seed + int(t) + 1), seed)
        sample = scheduler.step(output, t, sample, generator=generator).prev_sample
        assert sample.shape == shape and sample.dtype == dtype
        assert torch.isfinite(sample).all(), f"non-finite sample at t={int(t)}"
