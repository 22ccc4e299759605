"""Flow matching (`diffusion.objective: flow_matching`): the straight path and its velocity, the samplers that
follow it back, training on real MNIST through `accelerate launch`, and the export stock diffusers samples."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from run_logs import scalars
from safetensors.torch import load_file

from hf_ddpm.config import DatasetConfig, load_config
from hf_ddpm.data import load_image_dataset, to_model_range
from hf_ddpm.launch import accelerate_launch
from hf_ddpm.models import build_unet
from hf_ddpm.objectives import draw_batch, flow_matching_loss, flow_times, interpolate, velocity
from hf_ddpm.pipeline import generate, load_pipeline, make_scheduler

REPO = Path(__file__).resolve().parents[1]
FLOW = [
    *("--diffusion.objective", "flow_matching"),
    *("--training.sampler", "flow-euler", "--training.eval_sampler", "flow-euler"),
]


def pair(shape=(4, 1, 6, 6), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def test_the_path_starts_at_the_data_ends_at_the_noise_and_moves_at_the_velocity():
    x0, noise = pair()
    ones = torch.ones(len(x0), dtype=torch.float64)
    assert torch.equal(interpolate(x0, noise, 0 * ones), x0)
    assert torch.equal(interpolate(x0, noise, ones), noise)
    assert torch.equal(velocity(x0, noise), noise - x0)
    # d x_t / dt is the target at every t, including the ends: the path is a straight line.
    for t in (0.0, 0.3, 1.0 - 1e-6):
        h = 1e-6
        slope = (interpolate(x0, noise, (t + h) * ones) - interpolate(x0, noise, t * ones)) / h
        torch.testing.assert_close(slope, velocity(x0, noise), atol=1e-6, rtol=0)


class Oracle(torch.nn.Module):
    """A 'UNet' that knows the path: its output is the exact velocity noise - x_0 at every timestep. It also
    checks that each x_t it is shown lies on the path at the time its timestep names (t = timestep / T)."""

    def __init__(self, x0, noise, atol, num_train_timesteps=1000):
        super().__init__()
        self.x0, self.noise, self.atol, self.T, self.times = x0, noise, atol, num_train_timesteps, []

    def forward(self, sample, timestep, **_):
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(len(sample)) / self.T
        on_path = interpolate(self.x0, self.noise, t)
        torch.testing.assert_close(sample.double(), on_path, atol=self.atol, rtol=0)
        self.times.append(float(t[0]))
        return type("Out", (), {"sample": velocity(self.x0, self.noise).to(sample.dtype)})()


# diffusers' flow-mode DPM-Solver starts its schedule at t = 1 - 1/T, not 1, so it takes the noise for x_t at
# t = 0.999 and stays within 1/T x |noise - x_0| of the path; Euler starts at t = 1 exactly.
@pytest.mark.parametrize("sampler, first_t, atol", [("flow-euler", 1.0, 1e-5), ("dpm-solver", 0.999, 1e-2)])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_the_samplers_follow_the_training_path_back_to_the_data(sampler, first_t, atol, steps):
    """With the exact velocity, each sampler's x_t is the training path's at t = timestep / 1000 (so training
    and sampling agree on the time scale and the sign), and any step count lands on x_0."""
    x0, noise = pair()
    x0, noise = x0.float(), noise.float()
    scheduler = make_scheduler(sampler, FlowMatchEulerDiscreteScheduler().config)
    scheduler.set_timesteps(steps)
    oracle, sample = Oracle(x0.double(), noise.double(), atol), noise
    for timestep in scheduler.timesteps:
        sample = scheduler.step(oracle(sample, timestep).sample, timestep, sample).prev_sample
    assert oracle.times[0] == pytest.approx(first_t) and len(oracle.times) == steps
    torch.testing.assert_close(sample, x0, atol=atol, rtol=0)


def test_flow_times_uniform_and_logit_normal():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(flow_times(u, "uniform"), u)
    t = flow_times(u, "logit_normal", mean=0.5, std=0.8)
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)
    assert torch.all(torch.diff(t[torch.argsort(u)]) >= 0), "a monotone map of u: same random numbers"


def test_a_few_steps_on_real_mnist_lower_the_flow_matching_loss(mnist_dir):
    dataset, _ = load_image_dataset(DatasetConfig(path=str(mnist_dir), max_samples=512), progress=False)
    images = to_model_range(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    torch.manual_seed(0)
    unet = build_unet("tiny")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    held_out = draw_batch(99, 0, (64, 1, 28, 28), 1000)  # the same noise and times before and after

    def held_out_loss() -> float:
        with torch.no_grad():
            t = flow_times(held_out.uniform, "uniform")
            return flow_matching_loss(
                unet, images[-64:], noise=held_out.noise, t=t, num_train_timesteps=1000
            ).item()

    before = held_out_loss()
    for step in range(40):
        batch = images[(step * 32) % 448 :][:32]
        draws = draw_batch(0, step, batch.shape, 1000)
        t = flow_times(draws.uniform, "uniform")
        loss = flow_matching_loss(unet, batch, noise=draws.noise, t=t, num_train_timesteps=1000)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # Untrained, the output is about 0 and the loss about E|noise - x_0|^2 = 1 + E[x_0^2] (about 1.7).
    assert before > 1.3
    assert held_out_loss() < 0.75 * before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--training.snr_gamma", "5"], "training.snr_gamma (Min-SNR) weights the DDPM objective"),
        (["--diffusion.prediction_type", "v_prediction"], "flow matching always predicts the velocity"),
        (["--training.sampler", "ddpm"], "training.sampler 'ddpm' cannot sample a flow-matching model"),
        (["--diffusion.logit_std", "0"], "diffusion.logit_std is 0.0: it must be positive"),
    ],
)
def test_settings_of_the_other_objective_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(REPO / "training" / "configs" / "mnist-flow.yaml", overrides)


def test_a_ddpm_config_refuses_the_flow_sampler_and_each_model_its_wrong_samplers():
    with pytest.raises(ValueError, match="training.sampler 'flow-euler' cannot sample a DDPM model"):
        load_config(REPO / "training" / "configs" / "mnist.yaml", ["--training.sampler", "flow-euler"])
    flow_config = FlowMatchEulerDiscreteScheduler().config
    with pytest.raises(ValueError, match=r"'ddim' cannot sample a flow-matching model: choose one of"):
        make_scheduler("ddim", flow_config)
    ddpm_config = load_pipeline(REPO / "checkpoints" / "ddpm-mnist").scheduler.config
    with pytest.raises(ValueError, match=r"'flow-euler' cannot sample a DDPM model"):
        make_scheduler("flow-euler", ddpm_config)
    solver = make_scheduler("dpm-solver", flow_config)
    # The same solver as stock diffusers' flow mode built by hand: same sigmas, same step.
    stock = DPMSolverMultistepScheduler.from_config(
        flow_config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0
    )
    for scheduler in (solver, stock):
        scheduler.set_timesteps(8)
    assert torch.equal(solver.sigmas, stock.sigmas) and torch.equal(solver.timesteps, stock.timesteps)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t = solver.timesteps[0]
    assert torch.equal(solver.step(v, t, x).prev_sample, stock.step(v, t, x).prev_sample)


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, mnist_dir):
    """The tiny preset as a flow-matching model, 40 steps on 1,024 real MNIST digits, `auto` precision, under
    `accelerate launch`."""
    out = tmp_path_factory.mktemp("flow") / "flow-tiny"
    train = [REPO / "training" / "train.py", "--config", REPO / "training" / "configs" / "tiny.yaml"]
    run(
        accelerate_launch(*train, *FLOW, "--training.output_dir", out,
         "--dataset.path", mnist_dir, "--dataset.max_samples", "1024",
         "--training.max_train_steps", "40", "--training.checkpointing_steps", "20",
         "--training.mixed_precision", "auto", "--training.report_to", "tensorboard",
         "--training.num_inference_steps", "10"),
        out.parent,
    )  # fmt: skip
    return out


def test_train_py_lowers_the_loss_and_exports_a_flow_pipeline(flow_run):
    losses = scalars(flow_run / "logs", "loss")
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    scheduler = json.loads((flow_run / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert json.loads((flow_run / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    card = (flow_run / "README.md").read_text()
    assert "a flow-matching model" in card and "MSE on the velocity ε - x_0 (flow matching)" in card
    assert "- flow-matching" in card and "- ddpm\n" not in card


@pytest.mark.parametrize("sampler", [None, "dpm-solver"])
@pytest.mark.parametrize("steps", [1, 10])
def test_the_saved_pipeline_loads_back_and_samples_finite_28x28_images(flow_run, sampler, steps):
    pipeline = load_pipeline(flow_run, sampler)
    expected = FlowMatchEulerDiscreteScheduler if sampler is None else DPMSolverMultistepScheduler
    assert type(pipeline.scheduler) is expected
    saved = load_file(flow_run / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in pipeline.unet.state_dict().items())
    ema = load_file(flow_run / "checkpoint-40" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], ema[k]) for k in saved), "the export holds the EMA weights"
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = pipeline(batch_size=4, num_inference_steps=steps, generator=generator, output_type="pt").images
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    assert images.std() > 0.05, "not a constant image"


STOCK = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None  # stock diffusers only
    import numpy as np, torch
    from diffusers import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    np.save(sys.argv[2], images)
    print(type(pipe.scheduler).__name__)
    """
)


def test_stock_ddpm_pipeline_samples_the_export_as_hf_ddpm_does(flow_run, tmp_path):
    result = run([sys.executable, "-c", STOCK, flow_run, tmp_path / "stock.npy"], tmp_path)
    assert result.stdout.split() == ["FlowMatchEulerDiscreteScheduler"]
    ours = generate(load_pipeline(flow_run), 3, 10, seed=0)
    stock = np.round(np.load(tmp_path / "stock.npy") * 255).astype(np.uint8)
    np.testing.assert_array_equal(stock, ours)


def test_sample_cli_defaults_to_the_models_own_sampler(flow_run, tmp_path):
    cli = [sys.executable, "-m", "hf_ddpm.sample", "--model", flow_run, "--num-images", "4", "--steps", "3",
           "--out", tmp_path / "grid.png"]  # fmt: skip
    assert "flow-euler 3 steps" in run(cli, REPO).stdout
    wrong = subprocess.run([*map(str, cli), "--sampler", "ddpm"], cwd=REPO, capture_output=True, text=True)
    assert wrong.returncode == 2
    last = wrong.stderr.strip().splitlines()[-1]
    assert (
        "sampler 'ddpm' cannot sample a flow-matching model: choose one of ['dpm-solver', 'flow-euler']"
        in last
    )


def test_the_class_conditional_pipeline_samples_a_flow_matching_unet(tmp_path):
    """The optional pipelines take the flow scheduler too (it has no init_noise_sigma or scale_model_input):
    given the exact velocity towards one image (for every class), 3 guided Euler steps land on it, which
    they do only if the pipeline passes timesteps of 1000 t and takes Euler steps in t."""
    from hf_ddpm.pipeline import export_pipeline

    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=3)
    export_pipeline(unet, FlowMatchEulerDiscreteScheduler(), tmp_path, id2label={0: "a", 1: "b"})
    pipeline = load_pipeline(tmp_path)
    assert type(pipeline.scheduler) is FlowMatchEulerDiscreteScheduler
    target = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28)

    class ToTarget(torch.nn.Module):  # the exact velocity towards `target` from any x_t: (x_t - target) / t
        config, dtype, device = unet.config, unet.dtype, unet.device

        def forward(self, sample, timestep, class_labels=None):
            t = torch.as_tensor(timestep, dtype=sample.dtype) / 1000
            return type("Out", (), {"sample": (sample - target) / t})()

    pipeline.unet = ToTarget()
    images = pipeline(["a", "b"], 2.0, 3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 28, 28)
    torch.testing.assert_close(images, ((target + 1) / 2).clamp(0, 1).expand(2, 1, 28, 28), atol=1e-5, rtol=0)
