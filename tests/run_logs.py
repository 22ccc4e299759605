"""What a training run logged: its TensorBoard scalars."""

from pathlib import Path


def scalars(logdir: Path, tag: str, run: str = "hf-ddpm") -> list[float]:
    """The values of `tag` in the event stream of `run` (train.py's; hparams have a folder of their own)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in logdir.rglob("events.out.tfevents.*") if p.parent.name == run}
    return [e.value for e in EventAccumulator(str(events)).Reload().Scalars(tag)]
