"""What a classifier-FID is worth: real train images degraded by known amounts, scored as samples are.

    .venv/bin/python benchmarks/metric_scale.py --datasets mnist textures --num-images 1000

The first row is the data floor (N random train images against the test split, as `hf_ddpm.evaluate`
scores it); every other row scores the same N images after one degradation: a blur (the 3x3 binomial
kernel mixed in at a strength), a contrast change about each image's mean, a brightness shift, or Gaussian
pixel noise (in 0-255 units). A model's number can then be read as "about as far from the data as real
images with this defect".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.data import load_labeled_split
from hf_ddpm.evaluate import load_reference, random_subset, score
from hf_ddpm.files import write_json
from hf_ddpm.metrics import MIN_FID_IMAGES

BINOMIAL = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16


def blur(x: torch.Tensor, strength: float) -> torch.Tensor:
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), BINOMIAL.expand(x.shape[1], 1, 3, 3),
                       groups=x.shape[1])  # fmt: skip
    return torch.lerp(x, blurred, strength)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return mean + factor * (x - mean)


def pixel_noise(x: torch.Tensor, std: float, noise: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=noise)


# (label, degradation of a batch given the pixel-noise generator): the floor first, then each kind from mild
# to strong
ROWS: list[tuple[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None]] = [
    ("real train images (the floor)", None),
    ("blur, strength 0.25", lambda x, noise: blur(x, 0.25)),
    ("blur, strength 0.5", lambda x, noise: blur(x, 0.5)),
    ("blur, strength 1", lambda x, noise: blur(x, 1.0)),
    ("contrast x0.9", lambda x, noise: contrast(x, 0.9)),
    ("contrast x0.8", lambda x, noise: contrast(x, 0.8)),
    ("contrast x1.2", lambda x, noise: contrast(x, 1.2)),
    ("brightness +15", lambda x, noise: x + 15.0),
    ("noise, std 4", lambda x, noise: pixel_noise(x, 4.0, noise)),
    ("noise, std 8", lambda x, noise: pixel_noise(x, 8.0, noise)),
    ("noise, std 16", lambda x, noise: pixel_noise(x, 16.0, noise)),
]


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "textures"], help="names or folders")
    parser.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=1000)
    parser.add_argument("--seed", type=int, default=0, help="which train images, and the pixel noise")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    results = {}
    for dataset in args.datasets:
        ref = load_reference(dataset)
        train_images, _, _ = load_labeled_split(ref.dataset, "train")
        images = random_subset(train_images, args.num_images, args.seed).float()
        noise = torch.Generator().manual_seed(args.seed)
        print(f"\n# {dataset}: {args.num_images} train images against the {len(ref.test_images)} test images")
        print("| images | classifier-FID | x floor | legibility | class entropy |")
        print("|---|---|---|---|---|")
        rows = []
        for label, degrade in ROWS:
            degraded = images if degrade is None else degrade(images, noise)
            metrics = score(degraded.round().clamp(0, 255).to(torch.uint8), ref)
            rows.append({"images": label, **metrics})
            ratio = metrics["classifier_fid"] / rows[0]["classifier_fid"]
            print(f"| {label} | {metrics['classifier_fid']:.1f} | {ratio:.1f}x | "
                  f"{metrics['legibility']:.3f} | {metrics['class_entropy']:.3f} |", flush=True)  # fmt: skip
        results[dataset] = rows
    if args.json:
        report = {"num_images": args.num_images, "seed": args.seed, "datasets": results}
        write_json(args.json, report)


if __name__ == "__main__":
    main()
