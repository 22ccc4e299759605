"""Tests for `hf_ddpm.scheduler.LinearNoiseScheduler`: parity with stock `diffusers.DDPMScheduler` over every
config key (six variance types with 2C outputs, thresholding, trained betas, zero terminal SNR, custom
timesteps), interoperability with diffusers (pipelines, `from_config`, save/load, other schedulers' configs),
config validation, and the paper's identities (eq. 4 / eq. 15, the v-target)."""

import inspect
import itertools
import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from hf_ddpm.scheduler import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    LinearNoiseScheduler,
    LinearNoiseSchedulerOutput,
)

T = 1000
SHAPE = (2, 1, 4, 4)
PARITY_STEPS = (1000, 250, 50, 10)
STEP_TOL = 1e-6
# Every argument of stock DDPMScheduler.__init__: the config keys both schedulers must share.
STOCK_KEYS = tuple(k for k in inspect.signature(DDPMScheduler.__init__).parameters if k != "self")
TRAINED_BETAS = np.linspace(2e-4, 0.03, T) ** 1.3  # a curved schedule no beta_schedule produces


def _grid():
    """A covering grid: every beta schedule (and trained betas) x variance type x prediction type, with the
    other keys (clipping, thresholding, spacing, offset, zero terminal SNR) cycling through their values."""
    combos = itertools.product((*BETA_SCHEDULES, "trained"), VARIANCE_TYPES, PREDICTION_TYPES)
    for i, (schedule, variance, prediction) in enumerate(combos):
        spacing = TIMESTEP_SPACINGS[i % 3]
        config = {
            "variance_type": variance,
            "prediction_type": prediction,
            "timestep_spacing": spacing,
            "clip_sample": i % 2 == 0,
            "thresholding": i % 4 == 1,
            "steps_offset": 1 if spacing == "leading" and i % 5 == 0 else 0,
            "rescale_betas_zero_snr": prediction != "epsilon" and i % 3 == 2,
        }
        if config["thresholding"]:
            config |= {"dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5 + i % 3}
        if schedule == "trained":
            config["trained_betas"] = TRAINED_BETAS.tolist()
        else:
            config["beta_schedule"] = schedule
        keys = [k for k in ("thresholding", "rescale_betas_zero_snr") if config[k]]
        name = f"{schedule}-{variance}-{prediction}-{spacing}{''.join('+' + k for k in keys)}"
        yield pytest.param(config, id=name + ("+offset" if config["steps_offset"] else ""))


GRID = list(_grid())


def _fixed(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


BASE_SAMPLE = _fixed(1)
BASE_OUTPUT = _fixed(2)
BASE_VARIANCE = _fixed(22)


def _step_inputs(t: int, variance_type: str | None = "fixed_small") -> tuple[torch.Tensor, torch.Tensor]:
    """A sample x_t and a model output that both change with t (and are larger at high t). Learned variance
    types get 2C channels: the prediction, then v in (-1, 1) (`learned_range`) or a positive variance."""
    sample = BASE_SAMPLE * (0.5 + t / 500)
    model_output = 0.3 * sample + BASE_OUTPUT * float(np.cos(t / 97))
    if variance_type == "learned_range":
        model_output = torch.cat([model_output, torch.tanh(BASE_VARIANCE * float(np.cos(t / 53)))], dim=1)
    elif variance_type == "learned":
        model_output = torch.cat([model_output, 1e-3 + 0.02 * (BASE_VARIANCE * (1 + t / 300)).abs()], dim=1)
    return sample, model_output


def _stock_twin(config: dict) -> DDPMScheduler:
    """Stock's scheduler for a config; `fixed_large_log`, which stock samples as NaN (sqrt of log beta), is
    compared with stock's `fixed_large`, the same variance."""
    if config.get("variance_type") == "fixed_large_log":
        config = {**config, "variance_type": "fixed_large"}
    return DDPMScheduler(**config)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def dummy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    return 0.1 * x + 0.05 * float(np.sin(int(t) / 50))


def tiny_unet(out_channels: int = 1) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


# ---------------------------------------------------------------------------------------------------------
# Parity with DDPMScheduler over every config key
# ---------------------------------------------------------------------------------------------------------


def test_every_stock_key_with_stock_defaults():
    ours = inspect.signature(LinearNoiseScheduler.__init__).parameters
    stock = inspect.signature(DDPMScheduler.__init__).parameters
    assert tuple(k for k in ours if k != "self") == STOCK_KEYS
    for key in STOCK_KEYS:
        assert ours[key].default == stock[key].default, key
    assert set(LinearNoiseScheduler().config) - {"_class_name", "_diffusers_version"} >= set(STOCK_KEYS)


@pytest.mark.parametrize("config", GRID)
def test_parity_with_ddpm_scheduler(config):
    ours = LinearNoiseScheduler(**config)
    stock = _stock_twin(config)
    assert torch.equal(ours.betas, stock.betas)
    assert torch.equal(ours.alphas, stock.alphas)
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    variance = config["variance_type"]

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
            sample, model_output = _step_inputs(int(t), variance)
            for name, scheduler, gen in (("ours", ours, gen_ours), ("stock", stock, gen_stock)):
                out = scheduler.step(model_output, t, sample, generator=gen)
                for field in fields:
                    collected[name][field].append(out[field])
        for field in fields:
            ours_all = torch.stack(collected["ours"][field]).double()
            stock_all = torch.stack(collected["stock"][field]).double()
            assert torch.isfinite(ours_all).all(), f"{field} not finite at n={n}"
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


@pytest.mark.parametrize("variance", VARIANCE_TYPES)
def test_custom_timesteps_match_stock(variance):
    schedule = [999, 700, 301, 10]
    ours = LinearNoiseScheduler(variance_type=variance)
    stock = _stock_twin({"variance_type": variance})
    ours.set_timesteps(timesteps=schedule)
    stock.set_timesteps(timesteps=schedule)
    assert torch.equal(ours.timesteps, stock.timesteps)
    assert ours.custom_timesteps and stock.custom_timesteps
    gen_ours, gen_stock = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in schedule:
        sample, model_output = _step_inputs(t, variance)
        a = ours.step(model_output, t, sample, generator=gen_ours)
        b = stock.step(model_output, t, sample, generator=gen_stock)
        assert _max_diff(a.prev_sample, b.prev_sample) <= STEP_TOL
        assert _max_diff(a.pred_original_sample, b.pred_original_sample) <= STEP_TOL


@pytest.mark.parametrize(
    "timesteps, match",
    [
        ([10, 20], r"strictly decreasing .* pass sorted\(set\(timesteps\), reverse=True\)"),
        ([500, 500, 3], "strictly decreasing"),
        ([1000, 5], r"must lie in \[0, 999\] .* drop the ones outside"),
        ([5, -1], r"must lie in \[0, 999\]"),
        ([], "non-empty"),
    ],
)
def test_custom_timesteps_rejected_in_one_line(timesteps, match):
    with pytest.raises(ValueError, match=match) as err:
        LinearNoiseScheduler().set_timesteps(timesteps=timesteps)
    assert "\n" not in str(err.value)
    if timesteps and timesteps != [5, -1]:  # stock refuses these too (negative timesteps it lets through)
        with pytest.raises(ValueError):
            DDPMScheduler().set_timesteps(timesteps=timesteps)


def test_set_timesteps_needs_exactly_one_argument():
    scheduler = LinearNoiseScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="not both: timesteps=.* sets the number of steps itself"):
        scheduler.set_timesteps(10, timesteps=[5, 0])
    with pytest.raises(ValueError):
        DDPMScheduler().set_timesteps(10, timesteps=[5, 0])


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


@pytest.mark.parametrize("num_steps", [10, 50])
def test_ddpm_pipeline_with_learned_range_variances(num_steps):
    """A 2C-output UNet sampled by DDPMPipeline: our scheduler splits its output as stock does, draws the same
    noise, and gives the same images; the variances matter (fixed_small draws other images)."""
    unet = tiny_unet(out_channels=2)
    images = {}
    for name, scheduler in (
        ("ours", LinearNoiseScheduler(variance_type="learned_range")),
        ("stock", DDPMScheduler(variance_type="learned_range")),
    ):
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        images[name] = pipe(
            batch_size=2, generator=generator, num_inference_steps=num_steps, output_type="np"
        ).images
    assert images["ours"].shape == (2, 8, 8, 1) and images["ours"].std() > 0
    assert np.abs(images["ours"] - images["stock"]).max() <= 1e-5
    # The same UNet read with fixed variances: its second channel is not the prediction, so refused.
    pipe = DDPMPipeline(unet=unet, scheduler=LinearNoiseScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="2-channel output .* needs variance_type learned_range or learned"):
        pipe(batch_size=1, num_inference_steps=2)


@pytest.mark.parametrize("variance", ["learned", "learned_range"])
def test_learned_variance_needs_twice_the_channels(variance):
    sample, model_output = _step_inputs(500)
    with pytest.raises(
        ValueError, match=r"needs a model output of 2 channels .* build the UNet with out_channels=2"
    ):
        LinearNoiseScheduler(variance_type=variance).step(model_output, 500, sample)


def test_get_variance_matches_stock_for_every_variance_type():
    """`_get_variance`, which diffusers pipelines call, in each type's stored form (variance, standard
    deviation or log), before and after set_timesteps (jumps), and with an explicit variance_type argument."""
    predicted = torch.tanh(BASE_VARIANCE)
    for variance in VARIANCE_TYPES:
        ours, stock = LinearNoiseScheduler(variance_type=variance), DDPMScheduler(variance_type=variance)
        for n in (None, 50):
            if n:
                ours.set_timesteps(n)
                stock.set_timesteps(n)
            for t in (999, 500, 20, 1) if n is None else stock.timesteps.tolist()[:-1]:
                value = predicted.abs() + 0.01 if variance == "learned" else predicted
                a, b = ours._get_variance(t, value), stock._get_variance(t, value)
                assert _max_diff(a, b) <= 1e-6, (variance, n, t)
        for other in VARIANCE_TYPES:  # the explicit argument wins over the config
            value = predicted.abs() + 0.01
            a, b = ours._get_variance(40, value, other), stock._get_variance(40, value, other)
            assert _max_diff(a, b) <= 1e-6, (variance, other)


def test_fixed_large_log_samples_beta_where_stock_samples_nan():
    """Stock takes sqrt(log beta_t) for `fixed_large_log`, which is NaN; ours takes the `fixed_large` step,
    sqrt(beta_t) z (documented in the class). If diffusers fixes this, this test says so."""
    sample, model_output = _step_inputs(600)
    step = {}
    for name, scheduler in (
        ("ours", LinearNoiseScheduler(variance_type="fixed_large_log")),
        ("large", DDPMScheduler(variance_type="fixed_large")),
        ("stock", DDPMScheduler(variance_type="fixed_large_log")),
    ):
        step[name] = scheduler.step(model_output, 600, sample, generator=torch.Generator().manual_seed(0))
    assert torch.equal(step["ours"].prev_sample, step["large"].prev_sample)
    assert torch.isnan(step["stock"].prev_sample).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dynamic_thresholding_matches_stock(dtype):
    """Saharia et al.'s dynamic thresholding: per-image quantile s of |x_0|, clamp(x_0, -s, s) / s; the
    quantile in float32 for half precision, the result in the input dtype."""
    config = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}
    ours, stock = LinearNoiseScheduler(**config), DDPMScheduler(**config)
    x0 = (3 * _fixed(23, (4, 3, 5, 5))).to(dtype)
    a, b = ours._threshold_sample(x0), stock._threshold_sample(x0)
    assert a.dtype == dtype and torch.equal(a, b)
    # Per image: within [-1, 1], and an image whose quantile is below 1 is only clipped (s = 1).
    assert a.abs().max() <= 1
    small = torch.full((1, 1, 4, 4), 0.5, dtype=dtype)
    assert torch.equal(ours._threshold_sample(small), small)


def test_zero_terminal_snr_and_trained_betas_match_stock():
    ours = LinearNoiseScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    stock = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert ours.alphas_cumprod[-1] == 0 and stock.alphas_cumprod[-1] == 0
    assert torch.equal(ours.betas, stock.betas)
    # Lin et al.'s Algorithm 1 keeps alpha_bar_0 and makes sqrt(alpha_bar) an affine map of the original.
    plain = LinearNoiseScheduler().alphas_cumprod.double().sqrt()
    rescaled = ours.alphas_cumprod.double().sqrt()
    assert rescaled[0] == pytest.approx(plain[0].item(), rel=1e-6)
    slope = (rescaled[0] - rescaled[-1]) / (plain[0] - plain[-1])
    assert _max_diff(rescaled, (plain - plain[-1]) * slope) <= 1e-6
    # Without it, the paper's schedule leaves 4e-5 of the signal variance at T.
    assert 3e-5 < LinearNoiseScheduler().alphas_cumprod[-1] < 5e-5

    trained = LinearNoiseScheduler(trained_betas=TRAINED_BETAS)
    assert torch.equal(trained.betas, DDPMScheduler(trained_betas=TRAINED_BETAS).betas)
    assert torch.equal(trained.betas, torch.tensor(TRAINED_BETAS, dtype=torch.float32))


@pytest.mark.parametrize("schedule", ["sigmoid", "laplace"])
def test_sigmoid_and_laplace_schedules_match_stock(schedule):
    ours, stock = LinearNoiseScheduler(beta_schedule=schedule), DDPMScheduler(beta_schedule=schedule)
    assert torch.equal(ours.betas, stock.betas)
    assert bool((ours.alphas_cumprod.diff() < 0).all())


def test_previous_timestep_returns_what_stock_returns():
    ours, stock = LinearNoiseScheduler(), DDPMScheduler()
    assert ours.previous_timestep(500) == stock.previous_timestep(500) == 499
    assert type(ours.previous_timestep(500)) is int
    assert torch.equal(ours.previous_timestep(torch.tensor(7)), stock.previous_timestep(torch.tensor(7)))
    for sets in ({"num_inference_steps": 10}, {"timesteps": [999, 400, 3]}):
        ours.set_timesteps(**sets)
        stock.set_timesteps(**sets)
        for t in stock.timesteps:
            a, b = ours.previous_timestep(t), stock.previous_timestep(t)
            assert isinstance(a, torch.Tensor) and a.ndim == 0 and a.dtype == b.dtype and a == b


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
    for key in STOCK_KEYS:
        assert stock.config[key] == ours.config[key], key
    assert torch.equal(stock.betas, ours.betas)

    back = LinearNoiseScheduler.from_config(stock.config)
    assert isinstance(back, LinearNoiseScheduler)
    assert {k: back.config[k] for k in STOCK_KEYS} == {k: ours.config[k] for k in STOCK_KEYS}


def test_from_stock_default_config():
    stock = DDPMScheduler()
    ours = LinearNoiseScheduler.from_config(stock.config)
    assert isinstance(ours, LinearNoiseScheduler)
    assert {k: ours.config[k] for k in STOCK_KEYS} == {k: stock.config[k] for k in STOCK_KEYS}
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    assert torch.equal(ours.timesteps, stock.timesteps)


def _all_diffusers_schedulers() -> list[type]:
    import diffusers.schedulers as module

    found = []
    for name in sorted(dir(module)):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, SchedulerMixin) and cls is not SchedulerMixin:
            found.append(cls)
    return found


# Some diffusers schedulers (LMS, KDPM2) trip numpy 2 deprecation warnings when built; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_diffusers_scheduler_config_loads_with_stocks_numbers_or_is_refused():
    """Each diffusers scheduler's saved config (its JSON, as on the Hub) either loads into ours with the noise
    schedule it describes, or is refused in one line: never a silently different process."""
    outcomes = {}
    for cls in _all_diffusers_schedulers():
        try:
            saved = json.loads(cls().to_json_string())
        except TypeError:  # needs arguments of its own (masks, vocabularies): not a noise schedule
            continue
        try:
            ours = LinearNoiseScheduler.from_config(saved)
        except ValueError as err:
            assert "\n" not in str(err)
            outcomes[cls.__name__] = "refused"
            continue
        outcomes[cls.__name__] = "loaded"
        source = getattr(cls(), "alphas_cumprod", None)
        assert source is not None, f"{cls.__name__} has no alpha_bar table, yet its config loaded"
        assert torch.equal(ours.alphas_cumprod, torch.as_tensor(source)), cls.__name__
        stock = DDPMScheduler.from_config(saved)
        assert {k: ours.config[k] for k in STOCK_KEYS} == {k: stock.config[k] for k in STOCK_KEYS}
    for name in ("DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "PNDMScheduler",
                 "UniPCMultistepScheduler", "LCMScheduler", "UnCLIPScheduler", "DDPMScheduler"):  # fmt: skip
        assert outcomes[name] == "loaded", name
    for name in ("FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler", "ScoreSdeVeScheduler",
                 "DDPMWuerstchenScheduler", "CogVideoXDDIMScheduler", "IPNDMScheduler"):  # fmt: skip
        assert outcomes[name] == "refused", name


@pytest.mark.parametrize(
    "config, match",
    [
        (
            {"beta_shedule": "squaredcos_cap_v2"},
            r"unknown scheduler config key 'beta_shedule': .* fix the spelling",
        ),
        ({"predict_epsilon": False}, r"predict_epsilon=False .* write prediction_type: sample"),
        (
            {"use_flow_sigmas": True, "flow_shift": 3.0},
            "use_flow_sigmas=True .* FlowMatchEulerDiscreteScheduler",
        ),
        ({"timestep_type": "continuous"}, "continuous timesteps"),
        ({"snr_shift_scale": 2.0}, "CogVideoXDDIMScheduler"),
        (
            {"_class_name": "IPNDMScheduler", "num_train_timesteps": 1000},
            "IPNDMScheduler config cannot be loaded",
        ),
    ],
)
def test_config_keys_that_change_the_process_are_refused(config, match):
    with pytest.raises(ValueError, match=match) as err:
        LinearNoiseScheduler.from_config(config)
    assert "\n" not in str(err.value)


def test_config_keys_of_other_samplers_are_kept_and_harmless(tmp_path):
    """DPM-Solver's and Euler's own settings travel through our scheduler and back to them; private keys and
    the neutral values of process keys pass."""
    solver = DPMSolverMultistepScheduler(
        solver_order=3, use_karras_sigmas=True, beta_schedule="squaredcos_cap_v2"
    )
    ours = LinearNoiseScheduler.from_config(solver.config)
    assert torch.equal(ours.alphas_cumprod, DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod)
    again = DPMSolverMultistepScheduler.from_config(ours.config)
    assert again.config.solver_order == 3 and again.config.use_karras_sigmas
    euler = EulerDiscreteScheduler(timestep_type="discrete", interpolation_type="log_linear")
    assert isinstance(LinearNoiseScheduler.from_config(euler.config), LinearNoiseScheduler)
    # A folder with a typo is refused by from_pretrained too.
    (tmp_path / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timestep": 10})
    )
    with pytest.raises(ValueError, match="unknown scheduler config key 'num_train_timestep'"):
        LinearNoiseScheduler.from_pretrained(tmp_path)
    # An override passed to from_config is checked like a key.
    with pytest.raises(ValueError, match="unknown scheduler config key 'clip_samples'"):
        LinearNoiseScheduler.from_config(DDPMScheduler().config, clip_samples=False)


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
        trained_betas=np.linspace(1e-4, 0.04, 500).tolist(),
        variance_type="learned_range",
        clip_sample=False,
        prediction_type="v_prediction",
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=3.0,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
    )
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = LinearNoiseScheduler.from_pretrained(tmp_path)
    assert isinstance(loaded, LinearNoiseScheduler)
    public = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    assert set(public) == set(STOCK_KEYS)
    assert torch.equal(loaded.betas, ours.betas)
    assert torch.equal(loaded.alphas_cumprod, ours.alphas_cumprod)
    stock = DDPMScheduler.from_pretrained(tmp_path)
    assert torch.equal(stock.alphas_cumprod, ours.alphas_cumprod) and stock.variance_type == "learned_range"


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
        _bad(
            {"beta_schedule": "cosine"},
            r"beta_schedule.*linear, scaled_linear, squaredcos_cap_v2, sigmoid, laplace",
        ),
        _bad(
            {"variance_type": "learned_log"}, r"variance_type.*fixed_small, fixed_small_log, .*learned_range"
        ),
        _bad({"prediction_type": "x0"}, r"prediction_type.*epsilon, v_prediction, sample"),
        _bad({"timestep_spacing": "karras"}, r"timestep_spacing.*leading, linspace, trailing"),
        _bad(
            {"beta_schedule": "sigmoid", "beta_start": 0.02, "beta_end": 0.001}, r"beta_end .* greater than"
        ),
        _bad(
            {"trained_betas": [0.01] * 999},
            r"one beta per training timestep: got shape \(999,\) .* set num_train",
        ),
        _bad({"trained_betas": [0.0] + [0.01] * 999}, r"trained_betas must lie in \(0, 1\)"),
        _bad({"trained_betas": [0.01] * 500 + [1.0] + [0.01] * 499}, r"only the last may"),
        _bad({"rescale_betas_zero_snr": True}, r"zero terminal SNR.* use prediction_type v_prediction"),
        _bad(
            {"trained_betas": [0.01] * 999 + [1.0]},
            r"x_0 cannot be recovered from epsilon",
        ),
        _bad(
            {"rescale_betas_zero_snr": True, "num_train_timesteps": 1, "prediction_type": "sample"},
            "needs num_train",
        ),
        _bad({"sample_max_value": 0.5}, r"sample_max_value must be >= 1"),
        _bad(
            {"dynamic_thresholding_ratio": 0.0}, r"dynamic_thresholding_ratio must be a quantile in \(0, 1\]"
        ),
        _bad({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio must be a quantile"),
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
    with pytest.raises(ValueError, match=match) as err:
        LinearNoiseScheduler(**kwargs)
    assert "\n" not in str(err.value)


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
