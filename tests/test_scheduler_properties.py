"""Property tests of `LinearNoiseScheduler` with hypothesis: random configs, shapes, dtypes and timestep
batches. `add_noise` is invertible given the exact noise, and `step` keeps shape and dtype and never makes
a NaN, at any timestep."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_ddpm.scheduler import LinearNoiseScheduler

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@st.composite
def schedulers(draw) -> LinearNoiseScheduler:
    schedule = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]))
    beta_start = draw(st.floats(1e-5, 1e-2))
    beta_end = draw(st.floats(beta_start * 1.01, 0.05))
    return LinearNoiseScheduler(
        num_train_timesteps=draw(st.integers(2, 1000)),
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=schedule,
        variance_type=draw(st.sampled_from(["fixed_small", "fixed_large"])),
        clip_sample=draw(st.booleans()),
        prediction_type=draw(st.sampled_from(["epsilon", "v_prediction", "sample"])),
        timestep_spacing=draw(st.sampled_from(["leading", "linspace", "trailing"])),
    )


shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8))


def gaussian(shape, dtype, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@settings(max_examples=200, deadline=None)
@given(schedulers(), shapes, st.sampled_from(DTYPES), st.data())
def test_x0_is_recovered_from_x_t_and_the_exact_noise(scheduler, shape, dtype, data):
    """eq. 4, then eq. 15 or its v form: x_0 comes back up to rounding, magnified by 1 / sqrt(alpha_bar_t)."""
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
@given(schedulers(), shapes, st.sampled_from(DTYPES), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_step_keeps_shape_and_dtype_and_stays_finite_at_every_timestep(scheduler, shape, dtype, steps, seed):
    steps = min(steps, scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = gaussian(shape, dtype, seed)
    for t in scheduler.timesteps:
        model_output = gaussian(shape, dtype, seed + int(t) + 1)
        sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        assert sample.shape == shape and sample.dtype == dtype
        assert torch.isfinite(sample).all(), f"non-finite sample at t={int(t)}"
