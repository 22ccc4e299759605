"""The training loop both trainers share, on `accelerate`.

`TrainLoop.train()` runs one training job from start to export:

1. set up: the `Accelerator`, the output folder (writable, `config.yaml`), the seed, the data, the model,
   the EMA of its weights, AdamW and the LR schedule, all prepared by accelerate;
2. resume from a checkpoint when asked (`training.resume_from_checkpoint latest`);
3. loop over epochs and batches: the trainer's loss on each micro-batch, gradient accumulation, a NaN/inf
   guard that skips the update on every process at once, gradient clipping, the optimizer and LR steps,
   the EMA; a checkpoint every `checkpointing_steps`, the trainer's periodic work (sample grids,
   evaluation) after each step;
4. a final checkpoint, then the trainer's export.

A trainer subclasses `TrainLoop` and says only what differs, as improved-diffusion's `TrainLoop` keeps the
loop in the library and diffusers' example scripts keep each job readable: `build_model`, `compute_loss`,
`after_step`, `export`. `hf_ddpm.training.diffusion.DiffusionTrainer` and
`hf_ddpm.training.autoencoder.AutoencoderTrainer` are the two.

The random numbers of a micro-batch (noise, timesteps, flips) are drawn from a generator keyed by the seed
and the micro-step (`hf_ddpm.objectives.draw_batch`), and the data order depends on the seed and the
epoch alone, so a resumed run trains on exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import LoopConfig, load_config
from ..data import DatasetInfo, check_batches, load_image_dataset
from ..files import write_atomically
from .checkpoints import (
    CheckpointWriteError,
    check_free_space,
    check_writable,
    checkpoint_step,
    load_checkpoint,
    register_ema,
    resolve_checkpoint,
    save_checkpoint,
)

logger = get_logger(__name__, log_level="INFO")


class TrainingError(RuntimeError):
    """Stops a run with a one-line message naming the problem and the fix (`run_cli` prints it)."""


def build_accelerator(training: LoopConfig, output_dir: Path) -> Accelerator:
    """The run's `Accelerator`: precision, gradient accumulation, trackers, and a seedable sampler, so that
    the data order depends on the seed and the epoch alone and a resumed run sees the same batches."""
    return Accelerator(
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        log_with=None if training.report_to == "none" else training.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=training.seed),
    )


def build_optimizer(parameters, training: LoopConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameters,
        lr=training.learning_rate,
        betas=(training.adam_beta1, training.adam_beta2),
        weight_decay=training.adam_weight_decay,
        eps=training.adam_epsilon,
    )


def build_dataloader(dataset, training: LoopConfig, shuffle: bool = True) -> DataLoader:
    # drop_last: every step sees a full batch, so the random numbers of a step have a fixed shape.
    return DataLoader(
        dataset,
        batch_size=training.train_batch_size,
        shuffle=shuffle,
        drop_last=True,
        num_workers=training.dataloader_num_workers,
    )


def build_ema(model: torch.nn.Module, training: LoopConfig) -> EMAModel:
    """diffusers' `EMAModel` of `model`'s weights, with the warmup of `training.ema_warmup`."""
    return EMAModel(
        model.parameters(),
        decay=training.ema_max_decay,
        use_ema_warmup=training.ema_warmup,
        inv_gamma=training.ema_inv_gamma,
        power=training.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )


class TrainLoop:
    """One training run of `cfg` (sections `dataset` and `training`, and the trainer's own).

    Attributes a trainer may read once `train()` has set them up: `accelerator`, `dataset`, `info`
    (`DatasetInfo`), `model` (as prepared by accelerate), `ema`, `global_step`, `output_dir`.
    """

    # The config dataclass of its command line, its TensorBoard project, the checkpoint folder of its EMA.
    config_class: type = object
    tracker_project = "hf-ddpm"
    ema_folder = "model_ema"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.output_dir = Path(cfg.training.output_dir)
        self.global_step = 0
        self.ema: EMAModel | None = None
        self.clock = {"train_seconds": 0.0}  # optimizer steps only (time-to-quality's x axis); checkpointed
        self.nonfinite = {"total": 0, "in_a_row": 0}  # optimizer steps skipped for a NaN or inf loss

    # ------------------------------------------------------------------------------------------------
    # What a trainer says
    # ------------------------------------------------------------------------------------------------

    def load_data(self) -> tuple[torch.utils.data.Dataset, DatasetInfo]:
        """The training split as `(uint8 image, label)` rows."""
        return load_image_dataset(self.cfg.dataset, seed=self.cfg.training.seed)

    def build_model(self) -> torch.nn.Module:
        """The module accelerate prepares and the optimizer trains (called after `load_data`)."""
        raise NotImplementedError

    def ema_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The part of the (unwrapped) trained module whose weights the EMA averages and the export saves."""
        return model

    def compute_loss(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, micro_step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of micro-batch `micro_step` (counted from 0 over the run), and extra numbers to log."""
        raise NotImplementedError

    def before_training(self) -> None:
        """Main process, once the output folder is ready: fail fast on what would fail at the end."""

    def describe(self) -> str:
        """One log line about the model."""
        parameters = sum(p.numel() for p in self.model.parameters())
        return f"{type(self.ema_model(self.unwrapped_model)).__name__} with {parameters:,} parameters"

    def after_step(self) -> None:
        """After each optimizer step, on every process (sample grids, evaluation)."""

    def export(self) -> None:
        """After the final checkpoint, with the EMA weights copied into the model: save the result."""

    # ------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------

    def train(self) -> None:
        self.start_time = time.perf_counter()  # the wall time in the model card
        training = self.cfg.training
        self.accelerator = build_accelerator(training, self.output_dir)
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise TrainingError(
                f"hf-ddpm does not support {self.accelerator.distributed_type.value} yet: its EMA, sample "
                "grids and checkpoints need every process to hold the whole model; use DDP (--multi_gpu, or "
                "training/accelerate_configs/multi_gpu.yaml), every preset fits one GPU"
            )
        if self.accelerator.is_main_process:
            try:
                check_writable(self.output_dir)
            except ValueError as err:
                raise TrainingError(str(err)) from err
            write_atomically(self.output_dir / "config.yaml", self.cfg.to_yaml())
            self.before_training()
        set_seed(training.seed)  # the same initial weights on every process
        try:
            self.dataset, self.info = self.load_data()
            check_batches(self.info.num_rows, training.train_batch_size, self.accelerator.num_processes)
        except (ValueError, RuntimeError) as err:  # hf_ddpm.data's one-line errors (Runtime: Hub unreachable)
            raise TrainingError(str(err)) from err
        model = self.build_model()
        if self.accelerator.is_main_process:
            try:
                check_free_space(self.output_dir, model, training.use_ema)
            except ValueError as err:
                raise TrainingError(str(err)) from err
        if training.use_ema:
            self.ema = build_ema(self.ema_model(model), training)
            self.ema.to(self.accelerator.device)
        optimizer = build_optimizer(model.parameters(), training)
        dataloader = build_dataloader(self.dataset, training, shuffle=not self.cfg.dataset.streaming)
        # The prepared LR scheduler steps once per process per optimizer step, hence the scaling.
        lr_scheduler = get_scheduler(
            training.lr_scheduler,
            optimizer,
            num_warmup_steps=training.lr_warmup_steps * self.accelerator.num_processes,
            num_training_steps=training.max_train_steps * self.accelerator.num_processes,
        )
        self.model, self.optimizer, self.dataloader, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, dataloader, lr_scheduler
        )
        self._register_clock()
        if self.ema is not None:
            register_ema(self.accelerator, self.ema, type(self.ema_model(model)), self.ema_folder)
        self._resume()
        if self.accelerator.is_main_process and training.report_to != "none":
            self.accelerator.init_trackers(self.tracker_project, config=_flat_hparams(self.cfg))
        global_batch = (
            training.train_batch_size * self.accelerator.num_processes * training.gradient_accumulation_steps
        )
        logger.info(
            f"{self.info.num_rows} images from {self.info.source}; {self.describe()}; "
            f"{self.accelerator.num_processes} process(es), global batch {global_batch}"
        )
        self._loop()
        save_checkpoint(self.accelerator, self.output_dir, self.global_step, training.checkpoints_total_limit)
        if self.ema is not None:  # training is over: the EMA weights are the model from here on
            self.ema.copy_to(self.ema_model(self.unwrapped_model).parameters())
            self.ema = None  # so ema_weights() no longer swaps weights in
        self.export()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _resume(self) -> None:
        resume = self.cfg.training.resume_from_checkpoint
        if not resume:
            return
        try:
            path = resolve_checkpoint(self.output_dir, resume)
            if path is None:
                logger.info(f"no checkpoint in {self.output_dir}, starting from scratch")
                return
            load_checkpoint(self.accelerator, path, self.unwrapped_model.state_dict())
        except ValueError as err:
            raise TrainingError(str(err)) from err
        self.global_step = checkpoint_step(path)
        logger.info(f"resumed from {path} at step {self.global_step}")

    def _loop(self) -> None:
        training = self.cfg.training
        accelerator, model = self.accelerator, self.model
        streaming = self.cfg.dataset.streaming
        batches_per_epoch = None if streaming else len(self.dataloader)
        micro_step = self.global_step * training.gradient_accumulation_steps  # batches consumed so far
        epoch, skip = divmod(micro_step, batches_per_epoch) if batches_per_epoch else (0, micro_step)
        self.progress = tqdm(
            total=training.max_train_steps,
            initial=self.global_step,
            desc="train",
            disable=not accelerator.is_local_main_process,
        )
        window_finite = True  # every micro-batch of the current accumulation window had a finite loss
        model.train()
        step_start = time.perf_counter()
        while self.global_step < training.max_train_steps:
            # The seedable sampler reshuffles per epoch; a streaming dataset reshuffles its buffer per epoch.
            for loader in (self.dataloader, self.dataset):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            skip = 0
            for images, labels in batches:
                with accelerator.accumulate(model):
                    loss, extras = self.compute_loss(model, images, labels, micro_step)
                    micro_step += 1
                    # A NaN or inf loss on any process skips the update on every process (the replicas
                    # stay equal); its gradients would turn every weight into NaN.
                    losses = accelerator.gather(loss.detach().reshape(1))
                    finite = bool(torch.isfinite(losses).all())
                    window_finite = window_finite and finite
                    if finite:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and window_finite:
                        if training.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue

                self.global_step += 1  # a skipped step still counts, so the data position stays step-aligned
                skipped, window_finite = not window_finite, True
                self.nonfinite["total"] += skipped
                self.nonfinite["in_a_row"] = self.nonfinite["in_a_row"] + 1 if skipped else 0
                if skipped:
                    self._check_nonfinite(loss)
                elif self.ema is not None:
                    self.ema.step(self.ema_model(self.unwrapped_model).parameters())
                self.clock["train_seconds"] += time.perf_counter() - step_start
                self._log(losses, extras)

                if self.global_step % training.checkpointing_steps == 0 and not self.finished:
                    save_checkpoint(
                        accelerator, self.output_dir, self.global_step, training.checkpoints_total_limit
                    )
                self.after_step()
                if self.finished:
                    break
                step_start = time.perf_counter()
            epoch += 1
        self.progress.close()

    @property
    def finished(self) -> bool:
        return self.global_step >= self.cfg.training.max_train_steps

    def _log(self, losses: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        logs = {
            "loss": losses.mean().item(),  # over the processes: the global batch's loss
            "lr": self.lr_scheduler.get_last_lr()[0],
            "nonfinite_steps": self.nonfinite["total"],
            **{k: v.item() for k, v in extras.items()},
        }
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
        self.accelerator.log(logs, step=self.global_step)

    def _check_nonfinite(self, loss: torch.Tensor) -> None:
        """Warns about a skipped step; stops the run (every process alike) after `max_nonfinite_steps` in a
        row."""
        in_a_row, step = self.nonfinite["in_a_row"], self.global_step
        logger.warning(f"step {step}: loss is {loss.item()}, update skipped ({in_a_row} in a row)")
        if in_a_row >= self.cfg.training.max_nonfinite_steps:
            self.progress.close()  # the error is the last line, not the bar
            raise TrainingError(
                f"the loss was NaN or inf for {in_a_row} steps in a row (up to step {step}), so training "
                "stopped: lower training.learning_rate, keep training.max_grad_norm > 0 or use bf16 rather "
                "than fp16, then resume with --training.resume_from_checkpoint latest"
            )

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[torch.nn.Module]:
        """The unwrapped model holding the EMA weights, in eval mode; the training weights come back after.
        Without an EMA (or once `export` has copied it in) the model as it is."""
        model = self.ema_model(self.unwrapped_model)
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)
            if self.ema is not None:
                self.ema.restore(model.parameters())

    def _register_clock(self) -> None:
        """Puts the training clock in every checkpoint (safetensors). The random numbers of a step are keyed
        by the step (`draw_batch`), so there is no generator state to save."""
        accelerator, clock = self.accelerator, self.clock

        def save_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                seconds = torch.tensor(clock["train_seconds"], dtype=torch.float64)
                save_file({"train_seconds": seconds}, os.path.join(output_dir, "train_clock.safetensors"))

        def load_hook(models, input_dir):
            state = load_file(os.path.join(input_dir, "train_clock.safetensors"))
            clock["train_seconds"] = state["train_seconds"].item()

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)


def _flat_hparams(cfg: Any) -> dict:
    """TensorBoard's hparams take scalars only: `section.key` -> value, None dropped."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    return flat


def parse_config(schema: type, argv: list[str] | None = None, description: str | None = None) -> Any:
    """The config of a training command line: `--config FILE` and any `--SECTION.KEY VALUE` overrides; a
    bad file or key exits with argparse's usage and a one-line error."""
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] or None)
    sections = ", ".join(typing.get_type_hints(schema))
    parser.add_argument("--config", help=f"YAML file with sections {sections}")
    args, overrides = parser.parse_known_args(argv)
    try:
        return load_config(args.config, overrides, schema)
    except ValueError as err:
        parser.error(str(err))


def run_cli(
    trainer_class: type[TrainLoop], argv: list[str] | None = None, description: str | None = None
) -> None:
    """A training command line: reads the config (`parse_config`), runs `trainer_class(cfg).train()` with
    logging to stderr, and turns each error the user can fix (a `TrainingError`, a checkpoint that cannot be
    written, a full disk) into one line and exit status 1."""
    cfg = parse_config(trainer_class.config_class, argv, description)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    try:
        trainer_class(cfg).train()
    except (TrainingError, CheckpointWriteError) as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(
            f"error: no space left on the device writing {err.filename}: free space or choose another "
            "training.output_dir, then resume with --training.resume_from_checkpoint latest"
        )
