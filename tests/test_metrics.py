"""Metrics: the Frechet distance, the committed classifiers on real data, Inception FID, the evaluate CLI."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from hf_ddpm.classifier import load_classifier, predict
from hf_ddpm.data import load_labeled_split
from hf_ddpm.metrics import (
    _resize_like_tf,
    class_entropy,
    classifier_metrics,
    frechet_distance,
    gaussian_stats,
    inception_fid,
    legibility,
    reference_stats,
)


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The textbook formula with scipy's general matrix square root, as reference FID code computes it."""
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    cov_a, cov_b = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_scipy_and_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g) @ torch.randn(8, 8, generator=g)
    b = torch.randn(400, 8, generator=g) * 2 + 1
    assert frechet_distance(gaussian_stats(a), gaussian_stats(b)) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert frechet_distance(gaussian_stats(a), gaussian_stats(a)) == pytest.approx(0, abs=1e-6)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2.
    mu_a, mu_b, var_a, var_b = (
        torch.tensor([1.0]),
        torch.tensor([3.0]),
        torch.tensor([[4.0]]),
        torch.tensor([[1.0]]),
    )
    assert frechet_distance((mu_a, var_a), (mu_b, var_b)) == pytest.approx(4 + 1)


def test_legibility_and_entropy_on_known_probabilities():
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.1, 0.9]])
    assert legibility(probs) == 0.75
    assert class_entropy(probs) == pytest.approx(-(0.5 * math.log(0.5)) * 2)
    assert class_entropy(torch.eye(10)) == pytest.approx(math.log(10))
    assert class_entropy(torch.eye(10)[[3] * 7]) == 0


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    train = load_labeled_split(str(mnist_dir), "train", max_samples=2000)
    test = load_labeled_split(str(mnist_dir), "test")
    return train, test


def test_committed_mnist_classifier_is_accurate(mnist):
    (_, _, names), (test_x, test_y, _) = mnist
    model = load_classifier("mnist")
    assert model.config.class_names == names
    assert model.config.test_accuracy >= 0.99
    _, probs = predict(model, test_x)
    assert (probs.argmax(-1) == test_y).float().mean() >= 0.99


def test_metrics_rank_real_data_above_noise_and_collapse(mnist):
    """Real digits score near the floor; noise and a single repeated digit do not, though a CNN may call
    the repeated digit legible: that is why legibility is only reported with entropy and FID."""
    (train_x, _, _), (test_x, _, _) = mnist
    model = load_classifier("mnist")
    ref = reference_stats(model, test_x)
    real = classifier_metrics(train_x[:1000], model, ref)
    noise = torch.randint(
        0, 256, (1000, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    collapsed = train_x[:1].expand(1000, -1, -1, -1)
    bad = [classifier_metrics(x, model, ref) for x in (noise, collapsed)]
    assert real["legibility"] >= 0.95 and real["class_entropy"] >= 2.25
    assert all(m["classifier_fid"] > 20 * real["classifier_fid"] for m in bad)
    assert bad[1]["legibility"] == 1.0 and bad[1]["class_entropy"] == 0


def test_textures_classifier_separates_textures(shared_data):
    test_x, test_y, names = load_labeled_split(str(shared_data / "textures"), "test")
    model = load_classifier("textures")
    assert model.config.num_classes == len(names) == 99
    _, probs = predict(model, test_x)
    accuracy = (probs.argmax(-1) == test_y).float().mean().item()
    assert accuracy == pytest.approx(model.config.test_accuracy, abs=2e-3)  # thread counts may flip a tie
    assert accuracy > 10 / 99  # far above chance; the closing note reports the value


def test_floor_subset_spans_the_classes_of_a_sorted_split(textures_dir):
    """The textures splits are sorted by class: a floor from the first rows would see one class."""
    from hf_ddpm.evaluate import random_subset

    _, labels, _ = load_labeled_split(str(textures_dir), "train")  # 10 classes of 110
    assert len(labels[:100].unique()) == 1
    assert len(random_subset(labels, 100).unique()) == 10
    assert torch.equal(random_subset(labels, 300), random_subset(labels, 300))  # seeded


def test_tf_resize_samples_the_legacy_grid():
    x = torch.arange(28.0).repeat(28, 1)[None, None]  # value = column index
    y = _resize_like_tf(x, 299)
    # TF1 resize_bilinear (no half-pixel centres): output column j reads input column j * 28 / 299.
    cols = torch.tensor([0, 10, 150, 280])
    expected = (cols * 28 / 299).clamp(max=27)
    assert torch.allclose(y[0, 0, 5, cols], expected, atol=1e-4)


def test_inception_fid_separates_datasets(mnist, textures_dir):
    (train_x, _, _), (test_x, _, _) = mnist
    textures, _, _ = load_labeled_split(str(textures_dir), "test", max_samples=40)
    same = inception_fid(train_x[:40], test_x[:40])
    other = inception_fid(textures, test_x[:40])
    assert other > 3 * same > 0


def test_evaluate_cli_scores_a_random_model_far_below_the_floor(tmp_path, mnist_dir):
    from hf_ddpm.models import build_unet
    from hf_ddpm.pipeline import export_pipeline
    from hf_ddpm.scheduler import LinearNoiseScheduler

    torch.manual_seed(0)
    export_pipeline(build_unet("tiny", 28, 1), LinearNoiseScheduler(), tmp_path / "model")
    cmd = [sys.executable, "-m", "hf_ddpm.evaluate", "--model", str(tmp_path / "model"), "--dataset",
           str(mnist_dir), "--classifier", "mnist", "--num-images", "100", "--steps", "3",
           "--inception-images", "16"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| classifier_fid |" in result.stdout
    report = json.loads((tmp_path / "model" / "eval.json").read_text())
    assert report["protocol"]["num_images"] == 100 and report["protocol"]["steps"] == 3
    samples, floor = report["samples"], report["floor"]
    assert samples["classifier_fid"] > 10 * floor["classifier_fid"]
    # Untrained, it draws one blob over and over: a CNN may even call that legible, but not diverse.
    assert samples["class_entropy"] < 0.5 * floor["class_entropy"]
    assert samples["seconds_per_image"] > 0
    assert samples["inception_fid"] > 2 * floor["inception_fid"]  # both against the same 16 test images
