"""Sample a grid of images from an exported pipeline (a folder or a Hub repo id).

    python -m hf_ddpm.sample --model outputs/ddpm-mnist --sampler ddim --steps 50 --num-images 64 \\
        --seed 0 --out grid.png

A class-conditional model draws the classes in label order, one grid column per class (up to 16), at
`--guidance-scale` (default: the pipeline's).
"""

from __future__ import annotations

import time

from .arguments import ArgumentParser, at_least, non_negative
from .evaluate import default_device
from .samplers import SAMPLERS


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m hf_ddpm.sample", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="folder written by training/train.py, or a Hub repo id"
    )
    parser.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        help="default: the model's own (ddpm, or flow-euler for a flow-matching model)",
    )
    parser.add_argument(
        "--steps", type=at_least(1), help="inference steps (default: the sampler's, e.g. 1000 for ddpm)"
    )
    parser.add_argument("--num-images", type=at_least(1), default=64)
    parser.add_argument("--batch-size", type=at_least(1), default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guidance-scale", type=non_negative, help="class-conditional models: w of the guidance (>= 0)"
    )
    parser.add_argument(
        "--device", default=default_device(), help="cuda (the default where there is one) or cpu"
    )
    parser.add_argument("--out", default="grid.png", help="PNG file for the grid")
    args = parser.parse_args(argv)

    from .pipeline import generate, grid_columns, load_pipeline, save_grid, saved_sampler

    try:
        pipeline = load_pipeline(args.model, args.sampler, args.device)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    if args.guidance_scale is not None and not getattr(pipeline, "num_classes", 0):
        parser.error(f"--guidance-scale: {args.model} is not class-conditional, so there is nothing to guide")
    sampler = args.sampler or saved_sampler(pipeline.scheduler.config)
    steps = args.steps if args.steps is not None else SAMPLERS[sampler].default_steps
    start = time.perf_counter()
    images = generate(pipeline, args.num_images, steps, args.seed, args.batch_size, args.guidance_scale)
    seconds = time.perf_counter() - start
    path = save_grid(images, args.out, cols=grid_columns(pipeline))
    per_image = seconds / args.num_images
    print(f"{args.num_images} images, {sampler} {steps} steps, {per_image:.3f} s/image -> {path}")


if __name__ == "__main__":
    main()
