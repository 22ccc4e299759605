"""The explanatory pictures: their numbers against the closed forms of Ho et al. 2020, and the PNGs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from hf_ddpm import visualize
from hf_ddpm.data import to_uint8
from hf_ddpm.models import build_unet
from hf_ddpm.pipeline import export_pipeline, generate, load_pipeline
from hf_ddpm.scheduler import LinearNoiseScheduler


@pytest.fixture
def data_env(mnist_dir: Path, textures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with the bundled MNIST sample and the texture stand-in."""
    (tmp_path / "mnist").symlink_to(mnist_dir)
    (tmp_path / "textures").symlink_to(textures_dir)
    monkeypatch.setenv("HF_DDPM_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny UNet exported as a stock DDPMPipeline: fast, and the sampling code is the same."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    export_pipeline(build_unet("tiny", 28, 1), LinearNoiseScheduler(), folder)
    return folder


def assert_real_png(path: Path, min_width: int = 400, min_height: int = 200) -> None:
    assert path.is_file() and path.suffix == ".png"
    assert not path.with_name(path.name + ".partial").exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= min_height, pixels.shape
    # A blank or single-colour canvas would pass the size check; drawn content has many grey levels.
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20


# ---------------------------------------------------------------------------------------------
# Data functions
# ---------------------------------------------------------------------------------------------


def test_pixel_chain_has_the_closed_form_marginals() -> None:
    scheduler = LinearNoiseScheduler()
    n = 4000
    x = visualize.pixel_chain(1.0, num=n, seed=0, scheduler=scheduler)
    alpha_bar = visualize.alpha_bars(scheduler)
    assert x.shape == (n, 1001)
    assert np.all(x[:, 0] == 1.0)
    for t in (1, 50, 200, 500, 1000):
        mean, std = np.sqrt(alpha_bar[t]), np.sqrt(1 - alpha_bar[t])
        # 5 standard errors: of the mean std / sqrt(n), of the standard deviation about std / sqrt(2n).
        assert abs(x[:, t].mean() - mean) < 5 * std / np.sqrt(n), t
        assert abs(x[:, t].std() - std) < 5 * std / np.sqrt(2 * n), t


def test_pixel_chain_is_a_chain_not_independent_draws() -> None:
    x = visualize.pixel_chain(1.0, num=2000, seed=1)
    # One step adds variance beta_t <= 0.02, so neighbours stay nearly equal; fresh eq. 4 draws at each t
    # would be almost uncorrelated at t = 500.
    assert np.corrcoef(x[:, 500], x[:, 501])[0, 1] > 0.98


def test_noised_images_follow_eq4_with_paper_t(data_env: Path) -> None:
    x0 = visualize.load_example("mnist", 0)[None]
    assert x0.shape == (1, 1, 28, 28) and x0.min() == -1 and x0.max() == 1
    images = visualize.noised_images(x0, [0, 500, 1000], seed=0)
    assert images.shape == (1, 3, 1, 28, 28)
    assert torch.equal(images[:, 0], x0)

    # Recover eps from the t = 1000 column, then rebuild t = 500 with paper t -> alpha_bar index t - 1.
    alpha_bar = visualize.alpha_bars(LinearNoiseScheduler())
    assert alpha_bar[1000] == pytest.approx(float(LinearNoiseScheduler().alphas_cumprod[999]))
    x0d, xT = x0.double(), images[:, 2].double()
    eps = (xT - np.sqrt(alpha_bar[1000]) * x0d) / np.sqrt(1 - alpha_bar[1000])
    expected = np.sqrt(alpha_bar[500]) * x0d + np.sqrt(1 - alpha_bar[500]) * eps
    torch.testing.assert_close(images[:, 1].double(), expected, atol=1e-5, rtol=0)
    # t = 1000 has all but lost the digit: unit variance, next to no correlation with x_0.
    assert 0.85 < xT.std() < 1.15
    assert abs(np.corrcoef(xT.flatten(), x0d.flatten())[0, 1]) < 0.15


def test_noised_images_rejects_t_beyond_T() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        visualize.noised_images(torch.zeros(1, 1, 4, 4), [0, 1001])


def test_schedule_curves_are_monotone_and_match_stock_diffusers() -> None:
    curves = visualize.schedule_curves()
    assert set(curves) == set(visualize.PICTURED_SCHEDULES)
    for name, (alpha_bar, log_snr) in curves.items():
        assert alpha_bar.shape == log_snr.shape == (1000,)
        assert np.all(np.diff(alpha_bar) < 0) and np.all((alpha_bar > 0) & (alpha_bar < 1)), name
        assert np.all(np.diff(log_snr) < 0), name
        stock = DDPMScheduler(beta_schedule=name).alphas_cumprod.double().numpy()
        np.testing.assert_allclose(alpha_bar, stock, rtol=1e-6, err_msg=name)
    linear = curves["linear"][0]
    assert linear[-1] == pytest.approx(float(LinearNoiseScheduler().alphas_cumprod[-1]))
    assert 3e-5 < linear[-1] < 5e-5  # Ho et al.'s schedule leaves ~4e-5 of the signal variance at T
    assert curves["linear"][1][-1] == pytest.approx(np.log(linear[-1] / (1 - linear[-1])))


def test_smooth_is_debiased() -> None:
    # An EMA started at 0 without the debiasing would begin near 0.1, far below the data.
    np.testing.assert_allclose(visualize.smooth(np.full(5, 2.0), 0.95), 2.0)
    assert visualize.smooth(np.array([0.0, 10.0]), 0.5)[1] == pytest.approx(10 * 0.5 / 0.75)


def test_reverse_snapshots_end_in_the_pipelines_sample(tiny_pipeline_dir: Path) -> None:
    pipeline = load_pipeline(tiny_pipeline_dir, "ddpm")
    ts, xs, x0_preds = visualize.reverse_snapshots(
        pipeline, num_images=2, seed=3, num_inference_steps=10, every=3
    )
    # 10 leading-spaced steps visit scheduler timesteps 900, 800, ..., 0; kept: steps 0, 3, 6 and the last.
    assert ts == [901, 601, 301, 1]
    assert xs.shape == x0_preds.shape == (4, 2, 1, 28, 28)
    assert x0_preds.abs().max() <= 1.0  # clip_sample
    assert not torch.equal(xs[0], xs[1])
    expected = generate(load_pipeline(tiny_pipeline_dir, "ddpm"), 2, 10, seed=3)
    ours = to_uint8(x0_preds[-1]).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_read_scalars_merges_event_files_and_resumes(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "run" / "logs" / "hf-ddpm"
    with SummaryWriter(logs) as writer:
        for step in range(1, 51):
            writer.add_scalar("loss", 1.0 / step, step)
        for step in (25, 50):
            writer.add_scalar("eval/legibility", step / 100, step)
    # A resumed run: a second file re-logs steps 40..50 (they must win) and goes on to 60.
    with SummaryWriter(logs / "resumed") as writer:
        for step in range(40, 61):
            writer.add_scalar("loss", 2.0, step)

    scalars = visualize.read_scalars(tmp_path / "run")
    assert set(scalars) == {"loss", "eval/legibility"}
    steps, values = scalars["loss"]
    np.testing.assert_array_equal(steps, np.arange(1, 61))
    np.testing.assert_allclose(values[:39], 1.0 / np.arange(1, 40), rtol=1e-6)
    np.testing.assert_allclose(values[39:], 2.0)
    np.testing.assert_array_equal(scalars["eval/legibility"][0], [25, 50])

    assert_real_png(visualize.training_curves(tmp_path / "run", tmp_path / "out"), min_width=600)


def test_read_scalars_without_event_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        visualize.read_scalars(tmp_path)


# ---------------------------------------------------------------------------------------------
# Pictures and CLI
# ---------------------------------------------------------------------------------------------


def test_forward_diffusion_png(data_env: Path, tmp_path: Path) -> None:
    path = visualize.forward_diffusion(tmp_path)
    assert path == tmp_path / "forward_diffusion.png"
    assert_real_png(path, min_width=1000)


def test_pixel_trajectories_and_schedules_png(tmp_path: Path) -> None:
    assert_real_png(visualize.pixel_trajectories(tmp_path))
    assert_real_png(visualize.schedules(tmp_path))


def test_reverse_process_and_sampler_grids_png(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    path = visualize.reverse_process(
        tiny_pipeline_dir, tmp_path, num_images=2, num_inference_steps=4, every=2
    )
    assert_real_png(path, min_height=150, min_width=250)
    runs = (("ddim", 3), ("dpm-solver", 3))
    assert_real_png(visualize.sampler_grids(tiny_pipeline_dir, tmp_path, runs, num_images=4))


def test_cli_writes_what_it_can_and_skips_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    visualize.main(["--out", str(tmp_path), "--only", "schedules", "reverse_process", "training_curves"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        str(tmp_path / "schedules.png"),
        "reverse_process: skipped (needs --model)",
        "training_curves: skipped (needs --run)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schedules.png"]


def test_cli_reports_a_run_without_logs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["--out", str(tmp_path), "--only", "training_curves", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
