"""Tests for `hf_ddpm.scheduler.LinearNoiseScheduler`: parity with stock `diffusers.DDPMScheduler` over the
whole supported config grid, interoperability with diffusers (pipelines, `from_config`, save/load), config
validation, and the paper's identities (eq. 4 / eq. 15, the v-target)."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from hf_ddpm.scheduler import LinearNoiseScheduler, LinearNoiseSchedulerOutput

T = 1000
SHAPE = (2, 1, 4, 4)
PARITY_STEPS = (1000, 250, 50, 10)
STEP_TOL = 1e-6
OUR_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
)


def _grid():
    for schedule, variance, clip, prediction, spacing in itertools.product(
        ("linear", "scaled_linear", "squaredcos_cap_v2"),
        ("fixed_small", "fixed_large"),
        (True, False),
        ("epsilon", "v_prediction", "sample"),
        ("leading", "linspace", "trailing"),
    ):
        for offset in (0, 1) if spacing == "leading" else (0,):
            config = {
                "beta_schedule": schedule,
                "variance_type": variance,
                "clip_sample": clip,
                "prediction_type": prediction,
                "timestep_spacing": spacing,
                "steps_offset": offset,
            }
            name = f"{schedule}-{variance}-{'clip' if clip else 'noclip'}-{prediction}-{spacing}"
            yield pytest.param(config, id=name + (f"+offset{offset}" if offset else ""))


GRID = list(_grid())


def _fixed(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


BASE_SAMPLE = _fixed(1)
BASE_OUTPUT = _fixed(2)


def _step_inputs(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample x_t and a model output that both change with t (and are larger at high t)."""
    sample = BASE_SAMPLE * (0.5 + t / 500)
    model_output = 0.3 * sample + BASE_OUTPUT * float(np.cos(t / 97))
    return sample, model_output


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def dummy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    return 0.1 * x + 0.05 * float(np.sin(int(t) / 50))


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


# ---------------------------------------------------------------------------------------------------------
# Parity with DDPMScheduler over every supported config
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", GRID)
def test_parity_with_ddpm_scheduler(config):
    ours = LinearNoiseScheduler(**config)
    stock = DDPMScheduler(**config)
    assert torch.equal(ours.betas, stock.betas)
    assert torch.equal(ours.alphas, stock.alphas)
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)

    # Forward process at every training timestep in one batched call.
    x0, noise, all_t = _fixed(3, (T, 1, 4, 4)), _fixed(4, (T, 1, 4, 4)), torch.arange(T)
    assert _max_diff(ours.add_noise(x0, noise, all_t), stock.add_noise(x0, noise, all_t)) <= STEP_TOL
    assert _max_diff(ours.get_velocity(x0, noise, all_t), stock.get_velocity(x0, noise, all_t)) <= STEP_TOL

    for n in PARITY_STEPS:
        stock.set_timesteps(n)
        overflow = config["timestep_spacing"] == "leading" and config["steps_offset"] > 0 and n == T
        # Stock silently schedules timestep 1000 here (and fails with IndexError in step); we refuse early.
        assert bool(stock.timesteps.max() >= T) == overflow
        if overflow:
            with pytest.raises(ValueError, match="steps_offset"):
                ours.set_timesteps(n)
            continue
        ours.set_timesteps(n)
        assert ours.timesteps.dtype == torch.int64
        assert torch.equal(ours.timesteps, stock.timesteps), f"n={n}"
        assert ours.num_inference_steps == stock.num_inference_steps == n

        gen_ours, gen_stock = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
        fields = ("prev_sample", "pred_original_sample")
        collected = {name: {field: [] for field in fields} for name in ("ours", "stock")}
        for t in stock.timesteps:
            sample, model_output = _step_inputs(int(t))
            for name, scheduler, gen in (("ours", ours, gen_ours), ("stock", stock, gen_stock)):
                out = scheduler.step(model_output, t, sample, generator=gen)
                for field in fields:
                    collected[name][field].append(out[field])
        for field in fields:
            ours_all = torch.stack(collected["ours"][field]).double()
            stock_all = torch.stack(collected["stock"][field]).double()
            per_t = (ours_all - stock_all).flatten(1).abs().amax(dim=1)
            worst = int(per_t.argmax())
            assert per_t[worst] <= STEP_TOL, (
                f"{field} differs by {per_t[worst].item():.3g} at n={n}, t={int(stock.timesteps[worst])}"
            )
        # Both drew the same number of noise tensors from their generators.
        assert torch.equal(torch.randn(3, generator=gen_ours), torch.randn(3, generator=gen_stock))


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_stock_for_every_step_count(spacing, offset):
    ours = LinearNoiseScheduler(timestep_spacing=spacing, steps_offset=offset)
    stock = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    malformed = []
    for n in range(1, T + 1):
        stock.set_timesteps(n)
        expected = stock.timesteps
        if spacing == "leading" and expected.max() >= T:
            with pytest.raises(ValueError, match="steps_offset"):
                ours.set_timesteps(n)
            continue
        ours.set_timesteps(n)
        got = ours.timesteps
        assert len(got) == n
        assert got.min() >= 0 and got.max() < T
        assert bool((got[:-1] > got[1:]).all())
        if len(expected) != n:
            # Stock's float-stride np.arange can append a spurious timestep -1 (see scheduler.py).
            malformed.append(n)
            assert len(expected) == n + 1 and expected[-1] == -1
            expected = expected[:n]
        assert torch.equal(got, expected), f"n={n}"
    if spacing == "trailing":
        assert 61 in malformed
    else:
        assert malformed == []


def test_custom_timesteps_match_stock():
    schedule = [999, 700, 301, 10]
    for variance in ("fixed_small", "fixed_large"):
        ours = LinearNoiseScheduler(variance_type=variance)
        stock = DDPMScheduler(variance_type=variance)
        ours.set_timesteps(timesteps=schedule)
        stock.set_timesteps(timesteps=schedule)
        assert torch.equal(ours.timesteps, stock.timesteps)
        assert ours.custom_timesteps
        gen_ours, gen_stock = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for t in schedule:
            sample, model_output = _step_inputs(t)
            a = ours.step(model_output, t, sample, generator=gen_ours)
            b = stock.step(model_output, t, sample, generator=gen_stock)
            assert _max_diff(a.prev_sample, b.prev_sample) <= STEP_TOL
            assert _max_diff(a.pred_original_sample, b.pred_original_sample) <= STEP_TOL


@pytest.mark.parametrize("timesteps", [[10, 20], [500, 500, 3], [1000, 5], [5, -1], []])
def test_custom_timesteps_rejected(timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        LinearNoiseScheduler().set_timesteps(timesteps=timesteps)


def test_set_timesteps_needs_exactly_one_argument():
    scheduler = LinearNoiseScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="not both"):
        scheduler.set_timesteps(10, timesteps=[5, 0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_add_noise_dtype_matches_stock(dtype):
    ours, stock = LinearNoiseScheduler(), DDPMScheduler()
    x0, noise, t = _fixed(6, (T, 1, 2, 2)).to(dtype), _fixed(7, (T, 1, 2, 2)).to(dtype), torch.arange(T)
    a = ours.add_noise(x0, noise, t)
    assert a.dtype == dtype
    assert torch.equal(a, stock.add_noise(x0, noise, t))
    v = ours.get_velocity(x0, noise, t)
    assert v.dtype == dtype
    assert torch.equal(v, stock.get_velocity(x0, noise, t))


def test_add_noise_broadcasts_one_timestep_over_the_batch():
    scheduler = LinearNoiseScheduler()
    x0, noise = _fixed(8), _fixed(9)
    one = scheduler.add_noise(x0, noise, torch.tensor(400))
    per_sample = scheduler.add_noise(x0, noise, torch.tensor([400, 400]))
    assert one.shape == SHAPE
    assert torch.equal(one, per_sample)
    assert torch.equal(scheduler.add_noise(x0, noise, 400), one)


# ---------------------------------------------------------------------------------------------------------
# Whole sampling loops
# ---------------------------------------------------------------------------------------------------------

LOOP_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction",
            "variance_type": "fixed_large",
            "clip_sample": False,
            "timestep_spacing": "trailing",
        },
        id="cosine-v-large-noclip-trailing",
    ),
    pytest.param(
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "timestep_spacing": "linspace",
        },
        id="scaled-linear-linspace",
    ),
]


@pytest.mark.parametrize("num_steps", [50, 1000])
@pytest.mark.parametrize("config", LOOP_CONFIGS)
def test_sampling_loop_matches_stock(config, num_steps):
    finals = []
    for cls in (LinearNoiseScheduler, DDPMScheduler):
        scheduler = cls(**config)
        scheduler.set_timesteps(num_steps)
        generator = torch.Generator().manual_seed(1234)
        x = randn_tensor(SHAPE, generator=generator) * scheduler.init_noise_sigma
        start = x.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(dummy_model(x, t), t, x, generator=generator).prev_sample
        assert torch.isfinite(x).all()
        assert not torch.allclose(x, start)
        finals.append(x)
    assert _max_diff(*finals) <= 1e-5


@pytest.mark.parametrize("config", LOOP_CONFIGS[:2])
def test_ddpm_pipeline_with_our_scheduler(config):
    unet = tiny_unet()
    ours = LinearNoiseScheduler(**config)
    images = {}
    for name, scheduler in (("ours", ours), ("stock", DDPMScheduler.from_config(ours.config))):
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.scheduler is scheduler
        out = pipe(
            batch_size=2,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=10,
            output_type="np",
        )
        images[name] = out.images
    assert images["ours"].shape == (2, 8, 8, 1)
    assert images["ours"].std() > 0
    assert np.abs(images["ours"] - images["stock"]).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# Interoperability with diffusers configs
# ---------------------------------------------------------------------------------------------------------

INTEROP_CONFIGS = [
    {},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "timestep_spacing": "trailing",
    },
]


# diffusers' own DPM-Solver code trips a numpy 2 deprecation warning in set_timesteps; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("config", INTEROP_CONFIGS, ids=["defaults", "cosine-v", "scaled-linear"])
@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_other_schedulers_from_our_config(cls, config):
    ours = LinearNoiseScheduler(**config)
    other = cls.from_config(ours.config)
    assert isinstance(other, cls)
    assert torch.equal(other.betas, ours.betas)
    assert torch.equal(other.alphas_cumprod, ours.alphas_cumprod)
    assert other.config.prediction_type == ours.config.prediction_type
    other.set_timesteps(10)
    x = _fixed(10)
    for t in other.timesteps:
        x = other.step(dummy_model(x, t), t, x).prev_sample
    assert x.shape == SHAPE
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("config", INTEROP_CONFIGS, ids=["defaults", "cosine-v", "scaled-linear"])
def test_ddpm_scheduler_from_our_config_and_back(config):
    ours = LinearNoiseScheduler(**{**config, "steps_offset": 1, "clip_sample_range": 2.0})
    stock = DDPMScheduler.from_config(ours.config)
    assert isinstance(stock, DDPMScheduler)
    for key in OUR_KEYS:
        assert stock.config[key] == ours.config[key], key
    assert torch.equal(stock.betas, ours.betas)

    back = LinearNoiseScheduler.from_config(stock.config)
    assert isinstance(back, LinearNoiseScheduler)
    assert {k: back.config[k] for k in OUR_KEYS} == {k: ours.config[k] for k in OUR_KEYS}


def test_from_stock_default_config():
    stock = DDPMScheduler()
    ours = LinearNoiseScheduler.from_config(stock.config)
    assert isinstance(ours, LinearNoiseScheduler)
    assert {k: ours.config[k] for k in OUR_KEYS} == {k: stock.config[k] for k in OUR_KEYS}
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    assert torch.equal(ours.timesteps, stock.timesteps)


def test_compatibles():
    assert "DDPMScheduler" in LinearNoiseScheduler._compatibles
    names = {cls.__name__ for cls in LinearNoiseScheduler().compatibles}
    assert {
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
    } <= names


def test_save_and_load_round_trip(tmp_path):
    ours = LinearNoiseScheduler(
        num_train_timesteps=500,
        beta_schedule="scaled_linear",
        beta_start=0.0005,
        beta_end=0.015,
        variance_type="fixed_large",
        clip_sample=False,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = LinearNoiseScheduler.from_pretrained(tmp_path)
    assert isinstance(loaded, LinearNoiseScheduler)
    public = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    assert set(public) == set(OUR_KEYS)
    assert torch.equal(loaded.betas, ours.betas)
    assert torch.equal(loaded.alphas_cumprod, ours.alphas_cumprod)


def test_lazy_package_export():
    import hf_ddpm

    assert hf_ddpm.LinearNoiseScheduler is LinearNoiseScheduler


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _bad(kwargs: dict, match: str):
    return pytest.param(kwargs, match, id=",".join(f"{k}={v}" for k, v in kwargs.items()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        _bad({"beta_schedule": "sigmoid"}, r"beta_schedule.*linear, scaled_linear, squaredcos_cap_v2"),
        _bad({"variance_type": "learned"}, r"variance_type.*fixed_small, fixed_large"),
        _bad({"prediction_type": "x0"}, r"prediction_type.*epsilon, v_prediction, sample"),
        _bad({"timestep_spacing": "karras"}, r"timestep_spacing.*leading, linspace, trailing"),
        _bad({"beta_start": 0.02, "beta_end": 0.0001}, r"beta_end .* greater than beta_start"),
        _bad({"beta_start": 0.01, "beta_end": 0.01}, r"beta_end .* greater than beta_start"),
        _bad(
            {"beta_schedule": "scaled_linear", "beta_start": 0.012, "beta_end": 0.00085},
            r"beta_end .* greater than beta_start",
        ),
        _bad({"beta_start": 0.0}, r"beta_start .*open interval \(0, 1\)"),
        _bad({"beta_start": -0.001}, r"beta_start .*open interval \(0, 1\)"),
        _bad({"beta_end": 1.0}, r"beta_end .*open interval \(0, 1\)"),
        _bad({"beta_schedule": "scaled_linear", "beta_end": 1.5}, r"beta_end .*open interval \(0, 1\)"),
        _bad({"num_train_timesteps": 0}, r"num_train_timesteps must be an integer >= 1"),
        _bad({"clip_sample_range": 0.0}, r"clip_sample_range must be > 0"),
        _bad({"clip_sample_range": -1.0}, r"clip_sample_range must be > 0"),
        _bad({"steps_offset": -1}, r"steps_offset must be an integer >= 0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearNoiseScheduler(**kwargs)


def test_cosine_schedule_ignores_beta_range():
    # beta_start/beta_end play no part in the cosine schedule, so an "inverted" range is not an error.
    scheduler = LinearNoiseScheduler(beta_schedule="squaredcos_cap_v2", beta_start=0.5, beta_end=0.1)
    assert torch.equal(scheduler.betas, DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas)
    assert scheduler.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("n", [0, -3, T + 1])
def test_bad_num_inference_steps_raises(n):
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\]"):
        LinearNoiseScheduler().set_timesteps(n)


@pytest.mark.parametrize("n", [10.0, 2.5, "10"])
def test_non_integer_num_inference_steps_raises(n):
    with pytest.raises(ValueError, match="num_inference_steps must be an integer"):
        LinearNoiseScheduler().set_timesteps(n)


def test_integer_like_num_inference_steps_accepted():
    scheduler = LinearNoiseScheduler()
    for n in (np.int64(10), torch.tensor(10)):
        scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == list(range(900, -1, -100))
        assert scheduler.num_inference_steps == 10


@pytest.mark.parametrize(("offset", "n"), [(1, 1000), (100, 10), (999, 2), (1000, 1)])
def test_leading_offset_past_last_timestep_raises(offset, n):
    scheduler = LinearNoiseScheduler(steps_offset=offset)
    with pytest.raises(ValueError, match="steps_offset"):
        scheduler.set_timesteps(n)


def test_leading_offset_within_range_is_fine():
    scheduler = LinearNoiseScheduler(steps_offset=99)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    # Other spacings ignore steps_offset entirely, as in DDPMScheduler.
    trailing = LinearNoiseScheduler(steps_offset=5000, timestep_spacing="trailing")
    trailing.set_timesteps(1000)
    assert torch.equal(trailing.timesteps, torch.arange(T - 1, -1, -1))


# ---------------------------------------------------------------------------------------------------------
# Paper identities and API details
# ---------------------------------------------------------------------------------------------------------


def test_get_velocity_formula():
    scheduler = LinearNoiseScheduler(beta_schedule="squaredcos_cap_v2")
    x0, noise, t = _fixed(11, (T, 1, 2, 2)), _fixed(12, (T, 1, 2, 2)), torch.arange(T)
    alpha_bar = scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise.double() - (1 - alpha_bar).sqrt() * x0.double()
    assert _max_diff(scheduler.get_velocity(x0, noise, t), expected) <= 1e-6


@pytest.mark.parametrize(
    ("schedule", "t_max"), [("linear", T - 1), ("scaled_linear", T - 1), ("squaredcos_cap_v2", 990)]
)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_add_noise_then_predicted_x0_recovers_x0(schedule, t_max, prediction):
    """eq. 4 followed by eq. 15 (or its v analogue) with the exact target gives back x_0."""
    scheduler = LinearNoiseScheduler(beta_schedule=schedule, prediction_type=prediction, clip_sample=False)
    x0, noise = _fixed(13), _fixed(14)
    for t in range(0, t_max + 1, 3):
        x_t = scheduler.add_noise(x0, noise, torch.tensor([t]))
        target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, torch.tensor([t]))
        pred_x0 = scheduler.step(target, t, x_t).pred_original_sample
        assert _max_diff(pred_x0, x0) <= 1e-4, f"t={t}"


def test_add_noise_is_eq4_in_float64():
    scheduler = LinearNoiseScheduler()
    x0, noise, t = _fixed(15, (T, 1, 2, 2)), _fixed(16, (T, 1, 2, 2)), torch.arange(T)
    alpha_bar = scheduler.alphas_cumprod.double().view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * noise.double()
    assert _max_diff(scheduler.add_noise(x0, noise, t), expected) <= 1e-6


def test_step_at_every_timestep_is_posterior_mean_eq7():
    """Given x_0 directly, step returns the eq. 7 posterior mean plus sigma_t z (float64 reference)."""
    scheduler = LinearNoiseScheduler(prediction_type="sample", clip_sample=False)
    scheduler.set_timesteps(50)
    alpha_bar = scheduler.alphas_cumprod.double()
    x0, x_t = _fixed(17), _fixed(18)
    timesteps = scheduler.timesteps.tolist()
    t, prev = timesteps[-1], -1  # last step: no noise is added at t = 0
    assert t == 0 and scheduler.previous_timestep(t) == prev
    out = scheduler.step(x0, t, x_t)
    # q(x_{-1} | x_0, x_0) is x_0 itself: coefficient 1 on x_0, 0 on x_t.
    assert _max_diff(out.prev_sample, x0) <= 1e-6
    for t, prev in zip(timesteps[:-1], timesteps[1:], strict=True):
        a_t, a_prev = alpha_bar[t], alpha_bar[prev]
        beta = 1 - a_t / a_prev
        mean = (
            a_prev.sqrt() * beta / (1 - a_t) * x0.double()
            + (a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t) * x_t.double()
        )
        var = (1 - a_prev) / (1 - a_t) * beta
        gen = torch.Generator().manual_seed(t)
        z = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(t))
        got = scheduler.step(x0, t, x_t, generator=gen).prev_sample
        assert _max_diff(got, mean + var.sqrt() * z.double()) <= 1e-5, f"t={t}"


def test_fixed_large_uses_beta_as_variance():
    small = LinearNoiseScheduler(variance_type="fixed_small", prediction_type="sample", clip_sample=False)
    large = LinearNoiseScheduler(variance_type="fixed_large", prediction_type="sample", clip_sample=False)
    x0, x_t, t = _fixed(19), _fixed(20), 600
    z = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(0))
    outs = [
        s.step(x0, t, x_t, generator=torch.Generator().manual_seed(0)).prev_sample for s in (small, large)
    ]
    # Same mean, so the outputs differ only by (sigma_large - sigma_small) * z.
    beta = large.betas.double()[t]
    beta_tilde = (1 - large.alphas_cumprod.double()[t - 1]) / (1 - large.alphas_cumprod.double()[t]) * beta
    assert beta_tilde < beta
    assert _max_diff(outs[1] - outs[0], (beta.sqrt() - beta_tilde.sqrt()) * z.double()) <= 1e-6


def test_noise_drawn_only_for_t_above_zero():
    scheduler = LinearNoiseScheduler()
    sample, model_output = _step_inputs(0)
    gen = torch.Generator().manual_seed(3)
    scheduler.step(model_output, 0, sample, generator=gen)
    assert torch.equal(
        torch.randn(4, generator=gen), torch.randn(4, generator=torch.Generator().manual_seed(3))
    )
    scheduler.step(model_output, 1, sample, generator=gen)
    assert not torch.equal(
        torch.randn(4, generator=gen), torch.randn(4, generator=torch.Generator().manual_seed(3))
    )


def test_clip_sample_range_bounds_pred_x0():
    scheduler = LinearNoiseScheduler(clip_sample_range=0.25)
    sample, model_output = _step_inputs(999)
    pred_x0 = scheduler.step(model_output, 999, sample).pred_original_sample
    assert pred_x0.abs().max().item() == pytest.approx(0.25)
    unclipped = LinearNoiseScheduler(clip_sample=False).step(model_output, 999, sample).pred_original_sample
    assert unclipped.abs().max().item() > 10


def test_initial_state_and_small_api():
    scheduler = LinearNoiseScheduler()
    assert len(scheduler) == T
    assert scheduler.order == 1
    assert scheduler.init_noise_sigma == 1.0
    assert scheduler.num_inference_steps is None
    assert scheduler.timesteps.dtype == torch.int64
    assert torch.equal(scheduler.timesteps, torch.arange(T - 1, -1, -1))
    for table in (scheduler.betas, scheduler.alphas, scheduler.alphas_cumprod):
        assert table.dtype == torch.float32 and table.shape == (T,)
    assert scheduler.betas[0].item() == pytest.approx(1e-4) and scheduler.betas[-1].item() == pytest.approx(
        0.02
    )
    x = _fixed(21)
    assert scheduler.scale_model_input(x, 10) is x


def test_previous_timestep():
    scheduler = LinearNoiseScheduler()
    assert scheduler.previous_timestep(500) == 499
    assert scheduler.previous_timestep(torch.tensor(1)) == 0
    assert scheduler.previous_timestep(0) == -1
    scheduler.set_timesteps(10)
    assert scheduler.previous_timestep(900) == 800
    assert scheduler.previous_timestep(torch.tensor(100)) == 0
    assert scheduler.previous_timestep(0) == -1
    with pytest.raises(ValueError, match="not in the current schedule"):
        scheduler.previous_timestep(850)


def test_step_return_types():
    scheduler = LinearNoiseScheduler()
    sample, model_output = _step_inputs(500)
    out = scheduler.step(model_output, 500, sample, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, LinearNoiseSchedulerOutput) and isinstance(out, BaseOutput)
    prev, pred_x0 = scheduler.step(
        model_output, 500, sample, generator=torch.Generator().manual_seed(0), return_dict=False
    )
    assert torch.equal(prev, out.prev_sample)
    assert torch.equal(pred_x0, out.pred_original_sample)
    assert prev.shape == SHAPE and prev.dtype == torch.float32
