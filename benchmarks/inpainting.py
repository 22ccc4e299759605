"""Inpainting (RePaint) and SDEdit on real MNIST digits, scored by the project's digit classifier.

    .venv/bin/python benchmarks/inpainting.py --num-images 100 [--picture docs/images/inpainting.png]

Protocol: the first `num-images / 10` test digits of each class. Every completion is classified by the
MNIST classifier (`hf_ddpm/classifiers/mnist`, 99.32% on the test split) and compared with the digit's
true label.

- Inpainting: the top half of each digit (rows 0-13) is kept, the bottom half regenerated, with the
  unconditional `ddpm-mnist` (RePaint with resampling, and without: r = 1, the known pixels merely replaced)
  and with the class-conditional `ddpm-mnist-cfg` told the true class (w = 2) or nothing (its null class).
  Baselines: the original digits, and the half digits with the bottom half black.
- SDEdit: each digit is turned into a coarse sketch (7x7 averages, thresholded at 0.35, blown up to 28x28:
  blocky strokes) and SDEdit denoises it from strength s. Faithfulness is the mean absolute difference from
  the sketch (pixels in [0, 1]); the baseline is the classifier on the sketches themselves.

Columns: agreement (the classifier's class is the true one), legibility (its top probability >= 0.9), and the
seconds per completion (UNet calls dominate: RePaint runs n + (r - 1) j floor((n - 1) / j) of them).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from hf_ddpm.arguments import ArgumentParser, at_least, non_negative, positive
from hf_ddpm.classifier import load_classifier, predict
from hf_ddpm.data import load_labeled_split, to_model_range, to_uint8
from hf_ddpm.metrics import legibility
from hf_ddpm.pipeline import load_pipeline, save_grid
from hf_ddpm.pipelines.inpainting_ddpm import InpaintingDDPMPipeline, SDEditDDPMPipeline


def digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first count / 10 test digits of each class: uint8 (count, 1, 28, 28) and their labels."""
    images, labels, _ = load_labeled_split("mnist", "test")
    picks = torch.cat([(labels == c).nonzero()[: count // 10, 0] for c in range(10)])
    return images[picks], labels[picks]


def coarse_sketch(images: torch.Tensor, threshold: float = 0.35) -> torch.Tensor:
    """uint8 digits -> blocky sketches in [-1, 1]: 4x4 block averages, thresholded, nearest-upsampled."""
    blocks = F.avg_pool2d(images.float() / 255, 4)
    return F.interpolate((blocks >= threshold).float(), scale_factor=4, mode="nearest") * 2 - 1


def scores(classifier, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(agreement with `labels`, legibility) of images in [-1, 1]."""
    _, probs = predict(classifier, to_uint8(images))
    return (probs.argmax(-1) == labels).float().mean().item(), legibility(probs)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=at_least(10), default=100, help="a multiple of 10")
    parser.add_argument("--steps", type=at_least(1), default=50, help="n: positions of the chain")
    parser.add_argument("--jump-length", type=at_least(1), default=5)
    parser.add_argument("--jump-n-sample", type=at_least(1), default=5)
    parser.add_argument("--strengths", type=positive, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--guidance-scale", type=non_negative, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--picture", help="PNG: digits, half digits, completions; sketches, SDEdit results")
    args = parser.parse_args()

    classifier = load_classifier("mnist")
    images, labels = digits(args.num_images)
    x0 = to_model_range(images)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :14, :] = 1
    unconditional = load_pipeline("checkpoints/ddpm-mnist")
    conditional = load_pipeline("checkpoints/ddpm-mnist-cfg")
    print(
        f"# {len(images)} MNIST test digits ({len(images) // 10} per class), seed {args.seed}, "
        f"{torch.get_num_threads()} threads on {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs; "
        "classifier hf_ddpm/classifiers/mnist"
    )

    def timed(pipeline, **kwargs) -> tuple[torch.Tensor, float]:
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        out = pipeline(output_type="pt", generator=torch.Generator().manual_seed(args.seed), **kwargs).images
        return out * 2 - 1, (time.perf_counter() - start) / len(images)

    print(f"\n## Inpainting: keep the top half, regenerate the bottom half (RePaint, n = {args.steps})\n")
    print("| completion | agreement | legibility | s/image |")
    print("|---|---|---|---|")
    half = torch.where(mask.bool(), x0, -torch.ones_like(x0))
    for name, batch in [("original digits", x0), ("half digits, bottom black (no model)", half)]:
        agreement, legible = scores(classifier, batch, labels)
        print(f"| {name} | {agreement:.3f} | {legible:.3f} | - |")
    repaint = {"num_inference_steps": args.steps, "jump_length": args.jump_length}
    picture = [x0, half]
    r, w = args.jump_n_sample, args.guidance_scale
    told = {"class_labels": labels.tolist(), "guidance_scale": w}
    runs = [
        (f"ddpm-mnist, RePaint j={args.jump_length} r={r}", unconditional, {"jump_n_sample": r}),
        ("ddpm-mnist, no resampling (r=1)", unconditional, {"jump_n_sample": 1}),
        (f"ddpm-mnist-cfg, null class, r={r}", conditional, {"jump_n_sample": r}),
        (f"ddpm-mnist-cfg, true class w={w:g}, r={r}", conditional, {"jump_n_sample": r, **told}),
    ]
    for name, base, extra in runs:
        out, seconds = timed(
            InpaintingDDPMPipeline.from_pipe(base), image=x0, mask_image=mask, **repaint, **extra
        )
        assert torch.equal(to_uint8(out)[..., :14, :], images[..., :14, :]), "the kept half changed"
        agreement, legible = scores(classifier, out, labels)
        print(f"| {name} | {agreement:.3f} | {legible:.3f} | {seconds:.3f} |")
        picture.append(out)

    print(f"\n## SDEdit: coarse sketches denoised from strength s ({args.steps} steps for s = 1)\n")
    print("| model | strength | agreement | legibility | mean abs diff from the sketch | s/image |")
    print("|---|---|---|---|---|---|")
    sketches = coarse_sketch(images)
    agreement, legible = scores(classifier, sketches, labels)
    print(f"| the sketches (no model) | - | {agreement:.3f} | {legible:.3f} | 0 | - |")
    picture.append(sketches)
    for name, base, extra in [
        ("ddpm-mnist", unconditional, {}),
        (f"ddpm-mnist-cfg, true class w={w:g}", conditional, told),
    ]:
        for strength in args.strengths:
            sdedit = SDEditDDPMPipeline.from_pipe(base)
            out, seconds = timed(
                sdedit, image=sketches, strength=strength, num_inference_steps=args.steps, **extra
            )
            agreement, legible = scores(classifier, out, labels)
            distance = ((out - sketches).abs() / 2).mean().item()
            cells = [
                name,
                f"{strength:g}",
                f"{agreement:.3f}",
                f"{legible:.3f}",
                f"{distance:.3f}",
                f"{seconds:.3f}",
            ]
            print("| " + " | ".join(cells) + " |")
            if strength == 0.5:
                picture.append(out)

    if args.picture:
        # One row per kind, the first 10 digits (one per class) of each.
        rows = [to_uint8(batch[:: len(images) // 10][:10]).permute(0, 2, 3, 1).numpy() for batch in picture]
        path = save_grid(np.concatenate(rows), args.picture, cols=10)
        print(
            f"\npicture: {path} (rows: digits, half digits, the four completions, sketches, "
            "SDEdit at 0.5 by each model)"
        )


if __name__ == "__main__":
    main()
