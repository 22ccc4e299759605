"""Sampling that shows itself: the intermediate x_t and the model's current x_0 estimate of a pipeline run,
delivered while it runs, for the demo (`hf_ddpm.demo`) or any other viewer.

`watch_steps` makes a pipeline report every step through its scheduler (the pipelines are not changed: the
scheduler's `step` of that one call is wrapped), `frames` runs a sampling call in a worker thread and yields
what it reports as it comes, and `tile_frame` lays a frame out as one image, x_t above x_0.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..pipeline import is_flow


@dataclass
class Frame:
    """One reported step: `step` of `total` (1-based), at scheduler timestep `timestep`.

    `sample` and `x0` are float tensors (N, C, H, W) in the model's range [-1, 1] (x_0 clipped): the x_t that
    went into the step and the x_0 the model's output implies there.
    """

    step: int
    total: int
    timestep: int
    sample: torch.Tensor
    x0: torch.Tensor


class Cancelled(Exception):
    """Raised inside a sampling call whose viewer went away, to stop it at its next step."""


def predicted_original(scheduler, model_output: torch.Tensor, sample: torch.Tensor, timestep) -> torch.Tensor:
    """x_0 implied by a model output at (x_t, t), for any of the project's samplers, clipped to [-1, 1].

    DDPM-family schedulers: eq. 15 of Ho et al. 2020 (or the v / sample forms) on `alphas_cumprod`. Flow
    matching: x_t = (1 - s) x_0 + s eps with velocity v = eps - x_0 gives x_0 = x_t - s v, s = t / T.
    """
    config = scheduler.config
    if is_flow(config):
        sigma = float(timestep) / config.num_train_timesteps
        x0 = sample - sigma * model_output
    else:
        alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
        kind = config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            x0 = (sample - (1 - alpha_bar) ** 0.5 * model_output) / alpha_bar**0.5
        elif kind == "v_prediction":
            x0 = alpha_bar**0.5 * sample - (1 - alpha_bar) ** 0.5 * model_output
        else:
            x0 = model_output
    return x0.clamp(-1, 1)


def watch_steps(pipeline, report: Callable[[Frame], None], decode: Callable | None = None) -> None:
    """Makes `pipeline.scheduler.step` call `report` after every step with the step's x_t and x_0 estimate.

    The wrapper sits on the scheduler object itself, so give each call its own scheduler (the demo builds a
    fresh pipeline per request around shared weights). `decode` turns latents into images (latent models).
    """
    scheduler = pipeline.scheduler
    step = scheduler.step
    count = [0]

    # wraps: pipelines pass `generator` only to a step whose signature takes it, which they read through this.
    @functools.wraps(step)
    def reporting_step(model_output, timestep, sample, *args, **kwargs):
        output = step(model_output, timestep, sample, *args, **kwargs)
        count[0] += 1
        x0 = predicted_original(scheduler, model_output, sample, timestep)
        x_t = sample
        if decode is not None:
            x0, x_t = decode(x0), decode(x_t)
        total = len(scheduler.timesteps)
        report(Frame(count[0], total, int(timestep), x_t.float().cpu(), x0.float().cpu()))
        return output

    scheduler.step = reporting_step


def latent_decoder(pipeline) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> images in [-1, 1] through a latent pipeline's VAE, as its last step decodes."""
    vae = pipeline.vae

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)

    return decode


def frames(run: Callable[[Callable[[Frame], None]], Any], every: int = 1) -> Iterator[Frame | Any]:
    """Runs `run(report)` in a worker thread and yields the first `Frame` it reports, every `every`-th and
    the last, then what `run` returned. An exception in `run` is raised here.

    A viewer slower than the sampler gets the newest frame, never a backlog. Closing the iterator early
    (the viewer left) raises `Cancelled` in the worker at its next report, which ends it.
    """
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()

    def report(frame: Frame) -> None:
        if stop.is_set():
            raise Cancelled
        # The first step at once (something to see right away), then every `every`-th, and the last.
        if frame.step == 1 or frame.step % every == 0 or frame.step == frame.total:
            inbox.put(("frame", frame))

    def work() -> None:
        try:
            inbox.put(("done", run(report)))
        except Cancelled:
            pass
        except BaseException as err:  # handed to the viewer's thread, which raises it
            inbox.put(("error", err))

    worker = threading.Thread(target=work, name="sampling", daemon=True)
    worker.start()
    try:
        while True:
            waiting = [inbox.get()]
            while not inbox.empty():
                waiting.append(inbox.get_nowait())
            # Of the frames that piled up only the newest is shown; the result or error comes last.
            newest = [item for item in waiting if item[0] == "frame"][-1:]
            for kind, value in newest + [item for item in waiting if item[0] != "frame"]:
                if kind == "error":
                    raise value
                yield value
                if kind == "done":
                    return
    finally:
        stop.set()


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), as the pipelines round their outputs."""
    return np.round((images.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def tile_frame(frame: Frame, columns: int = 8, padding: int = 2) -> np.ndarray:
    """One uint8 image (H, W) or (H, W, 3) of a frame: for each block of `columns` images, a row of x_t and
    below it a row of their x_0 estimates, on a gray background."""
    rows = []
    for start in range(0, len(frame.sample), columns):
        rows.append(to_uint8_images(frame.sample[start : start + columns]))
        rows.append(to_uint8_images(frame.x0[start : start + columns]))
    n, h, w, c = rows[0].shape
    columns = min(columns, len(frame.sample))
    grid = np.full((len(rows) * (h + padding) + padding, columns * (w + padding) + padding, c), 128, np.uint8)
    for r, row in enumerate(rows):
        for i, image in enumerate(row):
            y, x = padding + r * (h + padding), padding + i * (w + padding)
            grid[y : y + h, x : x + w] = image
    return grid[..., 0] if c == 1 else grid
