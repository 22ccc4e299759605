"""How long the demo makes people wait: time to the first streamed frame and to the final images.

    .venv/bin/python benchmarks/demo_latency.py [--repeats 3]

Starts `python -m hf_ddpm.demo` on loopback (a real Gradio server, queue included) and drives it with
gradio_client as a browser would: each request is timed from submission to its first streamed frame (x_t and
the x_0 estimate) and to its last output (the images). The first request of the run, which loads the model,
is reported on its own; the rows are medians over `--repeats` requests.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hf_ddpm.arguments import ArgumentParser, at_least

REPO = Path(__file__).resolve().parents[1]


def start_app(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "hf_ddpm.demo", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the demo exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return process
        except OSError:
            time.sleep(0.5)


def sketch_file(folder: Path) -> str:
    """A 280x280 drawing of a 7 (two white strokes on black), as the sketchpad sends it."""
    image = Image.new("RGB", (280, 280))
    pen = ImageDraw.Draw(image)
    pen.line([(70, 60), (210, 60)], fill="white", width=24)
    pen.line([(205, 65), (120, 230)], fill="white", width=24)
    path = folder / "seven.png"
    image.save(path)
    return str(path)


def timed(client, args: tuple, api_name: str) -> tuple[float, float, int]:
    """(seconds to the first denoising frame, seconds to the images, frames streamed) of one request.

    The frames image is the first output of /generate and the second of /draw (whose first is the sketch
    as the model sees it, sent before sampling starts).
    """
    position = 0 if api_name == "/generate" else 1
    start = time.perf_counter()
    job = client.submit(*args, api_name=api_name)
    first, count = None, 0
    for output in job:
        frame = output[position]
        if frame and not (isinstance(frame, dict) and frame.get("__type__") == "update"):
            first = first or time.perf_counter() - start
            count += 1
    job.result()
    return first or float("nan"), time.perf_counter() - start, count


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=at_least(1), default=3)
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = start_app(port)
    folder = Path(tempfile.mkdtemp())
    sketch = handle_file(sketch_file(folder))
    drawing = {"background": sketch, "layers": [], "composite": sketch}
    complete = "Complete it (RePaint: keep the strokes, regenerate the rest)"
    sdedit = "Turn it into a digit (SDEdit: noise it, then denoise)"
    requests = [
        ("Generate: ddpm-mnist-cfg, DPM-Solver++ 20 steps, 4 images of 7, w=2",
         ("ddpm-mnist-cfg", "dpm-solver", 20, 0, 4, "7", 2.0), "/generate"),
        ("Generate: ddpm-mnist, DDPM ancestral 1000 steps, 4 images",
         ("ddpm-mnist", "ddpm", 1000, 0, 4, "", 2.0), "/generate"),
        ("Generate: flow-mnist, Euler 20 steps, 4 images",
         ("flow-mnist", "flow-euler", 20, 0, 4, "", 2.0), "/generate"),
        ("Draw: RePaint, ddpm-mnist-cfg class 7, n=50 j=5 r=5, 4 images",
         (drawing, complete, "ddpm-mnist-cfg", "7", 2.0, 50, 5, 5, 0.6, 0, 4), "/draw"),
        ("Draw: SDEdit, ddpm-mnist, strength 0.6, 50 steps, 4 images",
         (drawing, sdedit, "ddpm-mnist", "", 2.0, 50, 5, 5, 0.6, 0, 4), "/draw"),
    ]  # fmt: skip
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        cold = timed(client, requests[0][1], requests[0][2])
        usable = len(os.sched_getaffinity(0))
        print(
            f"# {usable} of {os.cpu_count()} CPUs usable; medians of {args.repeats} requests, after a warm-up"
        )
        print(f"# first request of the run (model load included): first frame {cold[0]:.2f} s, "
              f"images {cold[1]:.2f} s")  # fmt: skip
        print("| request | first frame (s) | final images (s) | frames shown |")
        print("|---|---|---|---|")
        for name, request, api_name in requests:
            times = [timed(client, request, api_name) for _ in range(args.repeats)]
            first = statistics.median(t[0] for t in times)
            final = statistics.median(t[1] for t in times)
            print(f"| {name} | {first:.2f} | {final:.2f} | {int(np.median([t[2] for t in times]))} |")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
