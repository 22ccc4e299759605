"""Evaluate an exported pipeline against real data: classifier-FID, legibility, class entropy, Inception FID.

    python -m hf_ddpm.evaluate --model outputs/ddpm-mnist --sampler dpm-solver --steps 20 --num-images 1000
    python -m hf_ddpm.evaluate --model outputs/ddpm-mnist --nll --nll-images 256

Prints a table next to the data-vs-data floor (real train images scored the same way as the samples;
for a latent pipeline also those images encoded and decoded by its autoencoder, `autoencoder_floor`) and
writes the numbers with their protocol to `--out` (default `MODEL/eval.json`, which the model card picks
up). `--nll` computes the variational bound on the negative log-likelihood of test images in bits per
dimension instead (`hf_ddpm.likelihood`) and adds it to that file under `nll`, keeping the rest.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .arguments import ArgumentParser, at_least, non_negative
from .classifier import Classifier, load_classifier
from .data import load_labeled_split
from .files import write_json
from .metrics import (
    MIN_FID_IMAGES,
    classifier_metrics,
    frechet_distance,
    gaussian_stats,
    inception_features,
    load_inception,
    reference_stats,
)
from .model_card import refresh_model_card


@dataclass
class Reference:
    """What generated images are compared with: the test split and a classifier's view of it."""

    dataset: str
    classifier_name: str
    test_images: torch.Tensor  # uint8 (N, C, H, W)
    classifier: Classifier
    stats: tuple[torch.Tensor, torch.Tensor]  # Gaussian of the test features
    # Inception Gaussians of n random test images, by n: computed once, shared by samples and floor.
    inception_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def default_device() -> str:
    """`cuda` where a GPU is, else `cpu`: the default `--device` of the sampling and scoring commands."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def dataset_key(dataset: str) -> str:
    """`ylecun/mnist`, `/data/mnist` and `mnist` all name the `mnist` classifier."""
    return dataset.rstrip("/").split("/")[-1]


def load_reference(
    dataset: str, classifier: str | None = None, device: str | torch.device = "cpu"
) -> Reference:
    """The test split of `dataset` and its classifier (on `device`, where the scoring then runs)."""
    test_images, _, _ = load_labeled_split(dataset, "test")
    name = classifier or dataset_key(dataset)
    model = load_classifier(name, device)
    return Reference(dataset, name, test_images, model, reference_stats(model, test_images))


def describe_protocol(ref: Reference, num_images: int, inception_images: int = 0, **sampling) -> dict:
    """What every reported number depends on; stored with the numbers in eval.json."""
    accuracy = ref.classifier.config.test_accuracy
    return {
        "dataset": ref.dataset,
        "reference": f"test split, {len(ref.test_images)} images",
        "classifier": f"{ref.classifier_name} (test accuracy {accuracy:.4f})",
        "num_images": num_images,
        "inception_images": inception_images,
        **sampling,
    }


def to_nchw(images) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy from `generate` -> uint8 torch (N, C, H, W)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def score(
    images: torch.Tensor, ref: Reference, inception_images: int = 0, labels: torch.Tensor | None = None
) -> dict[str, float]:
    """Classifier metrics of uint8 images (N, C, H, W), with class accuracy when the requested `labels`
    (N,) are given; Inception FID on the first `inception_images` of them against as many test images
    (0 skips it: about 0.15 s per image on 2 CPU cores)."""
    result = classifier_metrics(images, ref.classifier, ref.stats, labels)
    if inception_images:
        n = min(inception_images, len(images), len(ref.test_images))
        model = load_inception(next(ref.classifier.parameters()).device)
        if n not in ref.inception_stats:
            ref.inception_stats[n] = gaussian_stats(
                inception_features(random_subset(ref.test_images, n), model)
            )
        samples = gaussian_stats(inception_features(images[:n], model))
        result["inception_fid"] = frechet_distance(samples, ref.inception_stats[n])
    return result


def random_subset(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n rows drawn without replacement with a fixed seed: splits may be sorted by class (the textures
    are), so their first n rows would hold only a few classes."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def floor_images(ref: Reference, num_images: int) -> torch.Tensor:
    """`num_images` random real train images (uint8, N, C, H, W), the same ones at every call."""
    train_images, _, _ = load_labeled_split(ref.dataset, "train")
    return random_subset(train_images, num_images)


def data_floor(ref: Reference, num_images: int, inception_images: int = 0) -> dict[str, float]:
    """The metrics of `num_images` random real train images: the best a model can score at this count."""
    return score(floor_images(ref, num_images), ref, inception_images)


def evaluate_unet(
    unet,
    scheduler_config: dict,
    ref: Reference,
    *,
    sampler: str,
    steps: int,
    num_images: int,
    seed: int,
    guidance_scale: float | None = None,
    vae=None,
) -> dict[str, float]:
    """Samples `num_images` from a UNet (in eval mode; a latent one decoded by `vae`) and scores them; used
    by training's `eval_every`. A class-conditional UNet draws every class equally often, with
    `guidance_scale`."""
    from .pipeline import make_pipeline, make_scheduler

    pipeline = make_pipeline(unet, make_scheduler(sampler, scheduler_config), vae=vae)
    start = time.perf_counter()
    images, labels = sample_for_scoring(pipeline, num_images, steps, seed, guidance_scale=guidance_scale)
    return score(images, ref, labels=labels) | {"sample_seconds": time.perf_counter() - start}


def sample_for_scoring(
    pipeline,
    num_images: int,
    steps: int,
    seed: int,
    batch_size: int = 250,
    guidance_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 samples (N, C, H, W) and, from a class-conditional pipeline, the labels requested (N,)."""
    from .pipeline import balanced_labels, generate

    pipeline.set_progress_bar_config(disable=True)
    images = generate(pipeline, num_images, steps, seed, batch_size, guidance_scale)
    num_classes = getattr(pipeline, "num_classes", None)
    labels = balanced_labels(num_images, num_classes) if num_classes else None
    return to_nchw(images), labels


def model_dataset(model: str | Path) -> str | None:
    """The dataset a training output folder was trained on, from its `config.yaml`."""
    config = Path(model) / "config.yaml"
    if not config.is_file():
        return None
    section = (yaml.safe_load(config.read_text()) or {}).get("dataset", {})
    return section.get("path") or section.get("name")


def main(argv: list[str] | None = None) -> None:
    from .latents import reconstruct
    from .pipeline import load_pipeline
    from .samplers import SAMPLERS

    parser = ArgumentParser(prog="python -m hf_ddpm.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported pipeline folder or Hub id; omit with --floor-only")
    parser.add_argument("--dataset", help="mnist, textures or a folder (default: from MODEL/config.yaml)")
    parser.add_argument(
        "--classifier", help="classifier folder, data set name or Hub id (default: the dataset's)"
    )
    parser.add_argument("--sampler", default="dpm-solver", choices=list(SAMPLERS))
    parser.add_argument("--steps", type=at_least(1), default=20)
    # A Frechet distance compares covariances: 2 images at the very least, many more for a stable number.
    parser.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=1000)
    parser.add_argument("--batch-size", type=at_least(1), default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance-scale", type=non_negative, help="class-conditional models (default: the pipeline's own)"
    )
    parser.add_argument(
        "--inception-images", type=at_least(0), default=0, help="also Inception FID on this many (0 or >= 2)"
    )
    parser.add_argument("--floor-only", action="store_true", help="score real train images only")
    parser.add_argument(
        "--device", default=default_device(), help="cuda (the default where there is one) or cpu"
    )
    parser.add_argument(
        "--nll", action="store_true", help="the variational bound in bits/dim on test images, not samples"
    )
    parser.add_argument(
        "--nll-images",
        type=at_least(0),
        default=256,
        help="random test images for --nll (0: the whole split)",
    )
    parser.add_argument("--out", help="JSON file (default MODEL/eval.json)")
    args = parser.parse_args(argv)
    if args.inception_images == 1:
        parser.error(
            f"--inception-images 1: a Frechet distance needs at least {MIN_FID_IMAGES} images (or 0: none)"
        )
    if not args.model and not args.floor_only:
        parser.error("--model is required (or --floor-only with --dataset)")
    dataset = args.dataset or (model_dataset(args.model) if args.model else None)
    if dataset is None:
        parser.error("--dataset is required: the model folder has no config.yaml naming its data")

    if args.nll:
        try:
            report = nll_report(args.model, dataset, args.nll_images, args.seed, args.batch_size)
        except ValueError as err:
            parser.error(str(err))
        print(
            f"NLL <= {report['bits_per_dim']:.4f} +- {report['standard_error']:.4f} bits/dim "
            f"({report['images']} test images, seed {report['seed']})"
        )
        out = Path(args.out) if args.out else Path(args.model) / "eval.json"
        results = json.loads(out.read_text()) if out.is_file() else {}
        write_json(out, {**results, "nll": report})
        print(f"wrote {out}")
        if out == Path(args.model) / "eval.json" and refresh_model_card(args.model):
            print(f"updated the model card {Path(args.model) / 'README.md'}")
        return

    try:
        ref = load_reference(dataset, args.classifier, args.device)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        parser.error(str(err))
    sampling, guidance, pipeline = {}, args.guidance_scale, None
    if not args.floor_only:
        try:
            pipeline = load_pipeline(args.model, args.sampler, args.device)
        except ValueError as err:
            parser.error(str(err))
        sampling = {"model": str(args.model), "sampler": args.sampler, "steps": args.steps, "seed": args.seed}
        if getattr(pipeline, "num_classes", 0):  # recorded even when it is the pipeline's default
            if guidance is None:
                guidance = inspect.signature(pipeline.__call__).parameters["guidance_scale"].default
            sampling["guidance_scale"] = guidance
    protocol = describe_protocol(ref, args.num_images, args.inception_images, **sampling)
    real = floor_images(ref, args.num_images)
    results = {"protocol": protocol, "floor": score(real, ref, args.inception_images)}
    if getattr(pipeline, "vae", None) is not None:
        # A latent model draws only what its decoder can draw: the floor's images, encoded and decoded,
        # are what a perfect latent model would score.
        results["autoencoder_floor"] = score(reconstruct(pipeline.vae, real), ref, args.inception_images)
    if not args.floor_only:
        start = time.perf_counter()
        images, labels = sample_for_scoring(
            pipeline, args.num_images, args.steps, args.seed, args.batch_size, guidance
        )
        seconds = (time.perf_counter() - start) / args.num_images
        results["samples"] = score(images, ref, args.inception_images, labels) | {
            "seconds_per_image": seconds
        }

    print(format_table(results))
    out = Path(args.out) if args.out else (Path(args.model) / "eval.json" if args.model else None)
    if out is not None and (out.parent.is_dir() or args.out):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, results)
        print(f"wrote {out}")
        if args.model and out == Path(args.model) / "eval.json" and refresh_model_card(args.model):
            print(f"updated the model card {Path(args.model) / 'README.md'}")


def nll_report(model: str | Path, dataset: str, num_images: int, seed: int, batch_size: int = 250) -> dict:
    """The variational bound (Ho et al. 2020, eq. 5) of an unconditional pixel-space DDPM on `num_images`
    random test images (0: all), every timestep evaluated, with its protocol; see `hf_ddpm.likelihood`."""
    from diffusers import DDPMPipeline

    from .likelihood import variational_bound
    from .pipeline import is_flow, load_pipeline
    from .scheduler import LinearNoiseScheduler

    pipeline = load_pipeline(model)
    if type(pipeline) is not DDPMPipeline or is_flow(pipeline.scheduler.config):
        raise ValueError(
            f"--nll takes unconditional pixel-space DDPMs (a DDPMPipeline with a DDPMScheduler): {model} is "
            f"a {type(pipeline).__name__} with a {type(pipeline.scheduler).__name__}"
        )
    scheduler = LinearNoiseScheduler.from_config(pipeline.scheduler.config)
    test_images, _, _ = load_labeled_split(dataset, "test")
    n = len(test_images) if num_images <= 0 else min(num_images, len(test_images))
    images = test_images if n == len(test_images) else random_subset(test_images, n, seed)
    start = time.perf_counter()
    result = variational_bound(
        pipeline.unet.eval(), scheduler, images, seed=seed, batch_size=batch_size, progress=True
    )
    config = scheduler.config
    processing = "thresholded" if config.thresholding else "clipped" if config.clip_sample else "as predicted"
    return {
        **result.to_dict(),
        "images": n,
        "subset": "the whole test split" if n == len(test_images) else f"random, seed {seed}",
        "split": f"{dataset} test ({len(test_images)} images)",
        "seed": seed,
        "timesteps": len(scheduler),
        "x0": processing,
        "seconds": time.perf_counter() - start,
    }


def format_table(results: dict) -> str:
    """A markdown table, one column per scored set (samples, floor, a latent model's autoencoder floor)."""
    sets = [name for name in ("samples", "floor", "autoencoder_floor") if name in results]
    metrics = list(dict.fromkeys(key for name in sets for key in results[name]))
    lines = [
        "protocol: " + ", ".join(f"{k} {v}" for k, v in results["protocol"].items()),
        "| metric | " + " | ".join(sets) + " |",
        "|---" * (len(sets) + 1) + "|",
    ]
    for metric in metrics:
        cells = [f"{results[name][metric]:.4g}" if metric in results[name] else "" for name in sets]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
