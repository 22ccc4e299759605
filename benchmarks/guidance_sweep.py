"""Classifier-free guidance sweep: one class-conditional model sampled at several guidance scales.

    .venv/bin/python benchmarks/guidance_sweep.py --model checkpoints/ddpm-mnist-cfg --num-images 1000 \
        --picture docs/images/guidance.png

For every scale w, with the same sampler, seed and requested classes (every class equally often):
- class accuracy: the share of samples the project's classifier assigns to the requested class;
- classifier-FID against the test split, legibility and class entropy (hf_ddpm.metrics);
- diversity: the within-class spread of the classifier features (grouped by predicted class), relative
  to the same spread of the real test images, so 1.0 is as varied as the data;
- seconds per image (w = 0 and w = 1 need one UNet forward per step, any other w two).
The picture has one row per class and one column per scale; each row starts from the same noise.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from hf_ddpm.arguments import ArgumentParser, at_least, non_negative
from hf_ddpm.classifier import predict
from hf_ddpm.evaluate import load_reference, model_dataset, sample_for_scoring, score
from hf_ddpm.files import write_json
from hf_ddpm.metrics import MIN_FID_IMAGES, within_class_spread
from hf_ddpm.pipeline import load_pipeline


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported class-conditional pipeline folder")
    parser.add_argument("--dataset", help="default: from MODEL/config.yaml")
    parser.add_argument("--scales", type=non_negative, nargs="+", default=[0, 1, 1.25, 1.5, 2, 3, 5])
    parser.add_argument("--sampler", default="dpm-solver", choices=["ddpm", "ddim", "dpm-solver"])
    parser.add_argument("--steps", type=at_least(1), default=20)
    parser.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--picture", help="PNG: one row per class, one column per scale")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    ref = load_reference(args.dataset or model_dataset(args.model))
    pipeline = load_pipeline(args.model, args.sampler)
    if not hasattr(pipeline, "num_classes"):
        parser.error(f"{args.model} is not a class-conditional pipeline")
    test_features, test_probs = predict(ref.classifier, ref.test_images)
    data_spread = within_class_spread(test_features, test_probs.argmax(-1))
    print(f"# {args.model}: {args.num_images} samples per scale, {args.sampler} {args.steps} steps, seed "
          f"{args.seed}, {torch.get_num_threads()} threads; test-split spread {data_spread:.2f}")  # fmt: skip
    print("| w | class accuracy | classifier-FID | legibility | class entropy | diversity | s/image |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for w in args.scales:
        start = time.perf_counter()
        images, labels = sample_for_scoring(pipeline, args.num_images, args.steps, args.seed, 250, w)
        seconds = (time.perf_counter() - start) / args.num_images
        features, probs = predict(ref.classifier, images)
        diversity = within_class_spread(features, probs.argmax(-1)) / data_spread
        rows.append(
            {
                "guidance_scale": w,
                **score(images, ref, labels=labels),
                "diversity": diversity,
                "s_per_image": seconds,
            }
        )
        print(_row(rows[-1]), flush=True)
    if args.json:
        report = {"model": args.model, "sampler": args.sampler, "steps": args.steps, "rows": rows}
        write_json(args.json, report)
    if args.picture:
        _picture(pipeline, args.scales, args.steps, args.seed, args.picture)
        print(f"wrote {args.picture}")


def _row(r: dict) -> str:
    return (
        f"| {r['guidance_scale']:g} | {r['class_accuracy']:.3f} | {r['classifier_fid']:.1f} | "
        f"{r['legibility']:.3f} | {r['class_entropy']:.3f} | {r['diversity']:.2f} | {r['s_per_image']:.3f} |"
    )


def _picture(pipeline, scales: list[float], steps: int, seed: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [pipeline.config.id2label[i] for i in range(pipeline.num_classes)]
    columns = []
    for w in scales:  # the same generator seed per column: every row starts from the same noise
        generator = torch.Generator().manual_seed(seed)
        out = pipeline(list(range(len(names))), w, steps, generator=generator, output_type="np").images
        columns.append(out[..., 0] if out.shape[-1] == 1 else out)
    fig, axes = plt.subplots(
        len(names), len(scales), figsize=(0.9 * len(scales) + 0.6, 0.9 * len(names) + 0.4)
    )
    for col, (w, images) in enumerate(zip(scales, columns, strict=True)):
        for row, image in enumerate(images):
            ax = axes[row, col]
            ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"w = {w:g}", fontsize=9)
            if col == 0:
                ax.set_ylabel(names[row], rotation=0, labelpad=12, fontsize=9, va="center")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
