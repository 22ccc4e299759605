"""Sampler sweep: the same trained model sampled with DDPM, DDIM and DPM-Solver++ at several step counts.

    .venv/bin/python benchmarks/sampler_sweep.py --model checkpoints/ddpm-mnist --num-images 256

For every sampler and step count: classifier-FID against the test split, legibility, class entropy and
seconds per image, all in one run on one machine, next to the data-vs-data floor at the same sample count
(FID is biased upwards at small sample counts, so only numbers at equal counts compare).
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.evaluate import data_floor, load_reference, model_dataset, score, to_nchw
from hf_ddpm.files import write_json
from hf_ddpm.metrics import MIN_FID_IMAGES
from hf_ddpm.pipeline import generate, load_pipeline
from hf_ddpm.samplers import SAMPLERS

SWEEP = [
    ("ddpm", 1000),
    ("ddim", 100),
    ("ddim", 50),
    ("ddim", 20),
    ("ddim", 10),
    ("dpm-solver", 20),
    ("dpm-solver", 10),
]


def sampler_steps(text: str) -> tuple[str, int]:
    """`ddim:10` -> ("ddim", 10): a known sampler and at least one step."""
    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SAMPLER:STEPS with a sampler of {list(SAMPLERS)} and at least 1 step"
        )
    return name, int(steps)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported pipeline folder")
    parser.add_argument("--dataset", help="default: from MODEL/config.yaml")
    parser.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", type=sampler_steps, help="subset such as ddim:10 dpm-solver:20")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    sweep = args.only or SWEEP

    ref = load_reference(args.dataset or model_dataset(args.model))
    threads = torch.get_num_threads()
    print(f"# {args.model}: {args.num_images} samples per row, seed {args.seed}, reference "
          f"{ref.dataset} test ({len(ref.test_images)} images), {threads} threads")  # fmt: skip
    print("| sampler | steps | classifier-FID | legibility | class entropy | s/image |")
    print("|---|---|---|---|---|---|")
    rows = []
    for sampler, steps in sweep:
        pipeline = load_pipeline(args.model, sampler)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        images = generate(pipeline, args.num_images, steps, seed=args.seed, batch_size=128)
        seconds = (time.perf_counter() - start) / args.num_images
        rows.append(
            {"sampler": sampler, "steps": steps, **score(to_nchw(images), ref), "s_per_image": seconds}
        )
        print(_row(rows[-1]), flush=True)
    floor = data_floor(ref, args.num_images)
    print(_row({"sampler": "data (train vs test)", "steps": "-", **floor, "s_per_image": float("nan")}))
    if args.json:
        report = {"model": args.model, "num_images": args.num_images, "rows": rows, "floor": floor}
        write_json(args.json, report)


def _row(r: dict) -> str:
    return (
        f"| {r['sampler']} | {r['steps']} | {r['classifier_fid']:.2f} | {r['legibility']:.3f} | "
        f"{r['class_entropy']:.3f} | {r['s_per_image']:.3f} |"
    )


if __name__ == "__main__":
    main()
