"""Stopping on SIGTERM and SIGINT without losing work: what SLURM, Kubernetes and spot instances send before
they take a machine back, and what Ctrl-C sends.

During the training loop the first signal only raises a flag: the loop finishes the optimizer step it is
in, every process agrees to stop at that step (one process's signal stops them all), a checkpoint is written
(atomically, as every checkpoint), one line names it and the resume command, and the process exits with
status `REQUEUE_EXIT_CODE`. A second signal exits at once; checkpoints are written under a temporary name
and renamed when complete, so the last complete one stays what `latest` resumes from. Before the loop
(nothing to save yet) and after it (the final checkpoint is written), the first signal stops the run at
once with the same status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

# EX_TEMPFAIL of sysexits.h, "temporary failure; the user is invited to retry": the status a scheduler's
# requeue rule can match (e.g. a Kubernetes podFailurePolicy onExitCodes, or a SLURM wrapper script).
REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """The run stopped on a signal; the message is the one line naming what was saved and how to resume."""


class StopSignals:
    """Catches SIGTERM and SIGINT for the duration of `catch()`.

    `graceful` is True while a signal may only raise the flag (`signal_name` is then set and polled by the
    loop); otherwise a first signal raises `TrainingStopped` where the program is. `last_words` returns the
    line printed before a second signal exits at once.
    """

    def __init__(self, last_words):
        self.signal_name: str | None = None
        self.graceful = False
        self._last_words = last_words

    @contextlib.contextmanager
    def catch(self) -> Iterator[StopSignals]:
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # the second signal: no more waiting
            print(
                f"\nreceived {name} while stopping: exiting now. {self._last_words()}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        self.signal_name = name
        if not self.graceful:
            raise TrainingStopped(f"stopped by {name}. {self._last_words()}")
        print(f"\nreceived {name}: stopping after this step, with a checkpoint", file=sys.stderr, flush=True)
