"""What a training run prints per step: a tqdm bar on a terminal, and elsewhere (nohup, a cluster's log file)
one plain line every `training.logging_steps` steps, with the loss, the learning rate, images per second and
the training time left, and nothing else per step. Rates count optimizer steps only (`TrainingClock`, the
training clock), not sample grids and evaluations."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class TrainingClock:
    """The training clock: the seconds of optimizer steps, summed over every run that led to a checkpoint
    (`seconds` is what a checkpoint stores). The time-to-quality figures and the model card's training time
    read it.

    A stopped process (SIGSTOP, Ctrl-Z, a scheduler's suspend) is continued with SIGCONT; the step it was
    stopped in holds the pause in its wall time, so that step counts as the mean of the steps this process
    timed before it instead. Time shared with other jobs is still counted: it cannot be told apart.
    """

    def __init__(self):
        self.seconds = 0.0
        self._timed = (0, 0.0)  # this process's uninterrupted steps: their number and total seconds
        self._start = 0.0
        self._continued = False

    @contextlib.contextmanager
    def counting(self) -> Iterator[TrainingClock]:
        """Listens for SIGCONT while the loop runs (signal handlers can only be set in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGCONT, self._on_continue)
        try:
            yield self
        finally:
            signal.signal(signal.SIGCONT, previous)

    def _on_continue(self, signum: int, frame) -> None:
        self._continued = True

    def start(self) -> None:
        """Before a step's first batch is drawn."""
        self._start = time.perf_counter()
        self._continued = False

    def stop(self) -> None:
        """After the step's update."""
        seconds = time.perf_counter() - self._start
        steps, total = self._timed
        if self._continued:
            seconds = total / steps if steps else 0.0
        else:
            self._timed = (steps + 1, total + seconds)
        self.seconds += seconds


class Progress:
    """Reports optimizer steps `initial + 1 ... total` of a run whose global batch is `batch` images.

    Args:
        enabled: False on every process but the local main one.
        every: the log line's period in steps, when the output is not a terminal.
        terminal: draw a bar; default: whether stderr is a terminal.
    """

    def __init__(
        self, total: int, initial: int, batch: int, every: int, enabled: bool, terminal: bool | None = None
    ):
        self.total, self.step, self.batch, self.every = total, initial, batch, every
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=initial, desc="train", disable=not (enabled and self.terminal))
        self.since: tuple[int, float] | None = None  # the step and training clock the rate is measured from

    def update(self, loss: float, lr: float, clock: float) -> None:
        """After an optimizer step; `clock` is the training clock in seconds (`TrainLoop.clock`)."""
        self.step += 1
        if not self.enabled:
            return
        if self.terminal:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            return
        if self.since is None:
            self.since = (self.step, clock)  # the first step warms up: rates start after it
        elif self.step % self.every == 0 or self.step == self.total:
            first, start = self.since
            per_step = (clock - start) / max(self.step - first, 1)
            eta = _duration(per_step * (self.total - self.step))
            logger.info(
                f"step {self.step}/{self.total}: loss {loss:.4f}, lr {lr:.2e}, "
                f"{self.batch / max(per_step, 1e-9):.0f} img/s, ETA {eta}"
            )
            self.since = (self.step, clock)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
