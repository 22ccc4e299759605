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

import contextlib
import errno
import gc
import itertools
import logging
import math
import os
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import diffusers
import huggingface_hub
import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..arguments import ArgumentParser
from ..config import LoopConfig, load_config
from ..data import DatasetInfo, check_batches, load_image_dataset
from ..files import write_atomically
from .checkpoints import (
    CheckpointWriteError,
    check_free_space,
    check_writable,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    register_ema,
    resolve_checkpoint,
    save_checkpoint,
)
from .progress import Progress, TrainingClock
from .stopping import REQUEUE_EXIT_CODE, StopSignals, TrainingStopped

logger = get_logger(__name__, log_level="INFO")


class TrainingError(RuntimeError):
    """Stops a run with a one-line message naming the problem and the fix (`run_cli` prints it)."""


class FailedElsewhere(TrainingError):
    """Another process failed (and says why); this one stops with it, silently."""


def build_accelerator(training: LoopConfig, output_dir: Path) -> Accelerator:
    """The run's `Accelerator`: precision (`training.mixed_precision`, or the launcher's when that is null),
    gradient accumulation, trackers, and a seedable sampler, so that the data order depends on the seed and
    the epoch alone and a resumed run sees the same batches. Batches reach a GPU without blocking."""
    return Accelerator(
        mixed_precision=resolve_precision(training.mixed_precision),
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        log_with=None if training.report_to == "none" else training.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=training.seed, non_blocking=torch.cuda.is_available()
        ),
    )


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU for which oneDNN
    has bf16 kernels (AVX-512 or AMX). Elsewhere bf16 autocast is emulated, and on an AVX2-only CPU a
    training step of the `small` UNet takes about 10x longer than in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own test; no public API yet
    return False


def resolve_precision(mixed_precision: str | None) -> str | None:
    """`training.mixed_precision` as `Accelerator` takes it: `auto` becomes `bf16` where the run's device
    computes bf16 natively, else `no`."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16(PartialState().device) else "no"


def describe_precision(training: LoopConfig, accelerator: Accelerator) -> str:
    """The precision a run uses and where it comes from, naming a launcher's precision that it overrides."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if training.mixed_precision is None:
        return (
            f"mixed precision {accelerator.mixed_precision} (from accelerate: launcher or accelerate config)"
        )
    source = "training.mixed_precision"
    if training.mixed_precision == "auto":
        native = "computes" if accelerator.mixed_precision == "bf16" else "does not compute"
        source += f" auto: this {accelerator.device.type.upper()} {native} bf16 natively"
    note = ""
    if launcher and launcher != accelerator.mixed_precision:
        note = f"; it overrides the launcher's --mixed_precision {launcher} (set it null to use that)"
    return f"mixed precision {accelerator.mixed_precision} ({source}){note}"


def build_optimizer(parameters, training: LoopConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameters,
        lr=training.learning_rate,
        betas=(training.adam_beta1, training.adam_beta2),
        weight_decay=training.adam_weight_decay,
        eps=training.adam_epsilon,
    )


def build_dataloader(dataset, training: LoopConfig, shuffle: bool = True) -> DataLoader:
    # drop_last: every step sees a full batch, so the random numbers of a step have a fixed shape. Workers
    # live across epochs, and batches are pinned for a GPU's asynchronous copy.
    workers = training.dataloader_num_workers
    return DataLoader(
        dataset,
        batch_size=training.train_batch_size,
        shuffle=shuffle,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def build_ema(model: torch.nn.Module, training: LoopConfig) -> EMAModel:
    """diffusers' `EMAModel` of `model`'s weights, with the warmup of `training.ema_warmup`."""
    return EMAModel(
        model.parameters(),
        decay=training.ema_max_decay,
        use_ema_warmup=training.ema_warmup,
        inv_gamma=training.ema_inv_gamma,
        power=training.ema_power,
        foreach=True,  # one fused update for all weights instead of one kernel per tensor
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
        self.resumed_at = 0  # the step of the checkpoint this process resumed from
        self.ema: EMAModel | None = None
        self.clock = TrainingClock()
        self.nonfinite = {"total": 0, "in_a_row": 0}  # optimizer steps skipped for a NaN or inf loss

    # ------------------------------------------------------------------------------------------------
    # What a trainer says
    # ------------------------------------------------------------------------------------------------

    def load_data(self) -> tuple[torch.utils.data.Dataset, DatasetInfo]:
        """The training split as `(uint8 image, label)` rows."""
        # Streamed rows are split between the processes here: each one decodes only its own share.
        return load_image_dataset(
            self.cfg.dataset,
            seed=self.cfg.training.seed,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            progress=sys.stderr.isatty(),
        )

    def check_batch(self, labels: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """A streamed batch's labels (on the CPU), made usable, and what is wrong with them (None: nothing).
        Every process finishes the step before all of them stop on a problem, so none waits for another."""
        return labels, None

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
        """Runs the whole job. SIGTERM and SIGINT stop it cleanly (`hf_ddpm.training.stopping`)."""
        self.start_time = time.perf_counter()  # the wall time in the model card
        self.signals = StopSignals(self._resume_hint)
        if not sys.stderr.isatty():  # a log file: no progress bars redrawn into it, only log lines
            datasets.disable_progress_bars()
            diffusers.utils.logging.disable_progress_bar()
            huggingface_hub.utils.disable_progress_bars()
        with self.signals.catch():
            self._set_up()
            self.signals.graceful = True
            with self.clock.counting():
                self._loop()
            self.signals.graceful = False
            self.save_checkpoint()
            if self.ema is not None:  # training is over: the EMA weights are the model from here on
                self.ema.copy_to(self.ema_model(self.unwrapped_model).parameters())
                self.ema = None  # so ema_weights() no longer swaps weights in
            self.export()
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()

    def _set_up(self) -> None:
        training = self.cfg.training
        self.accelerator = self.make_accelerator()
        logger.info(describe_precision(training, self.accelerator))
        training.mixed_precision = self.accelerator.mixed_precision  # what config.yaml records
        if self.accelerator.device.type == "cuda" and training.mixed_precision == "no":
            # fp32 matmuls and convolutions on tensor cores (TF32), and cuDNN's fastest kernels for these
            # fixed shapes: faster, at the price of bitwise reproducibility on GPUs.
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = self.accelerator.device.type == "cuda"
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise TrainingError(
                f"hf-ddpm does not support {self.accelerator.distributed_type.value} yet: its EMA, sample "
                "grids and checkpoints need every process to hold the whole model; use DDP (--multi_gpu, or "
                "training/accelerate_configs/multi_gpu.yaml), every preset fits one GPU"
            )
        self.on_main_process(self._prepare_output_dir)
        set_seed(training.seed)  # the same initial weights on every process
        try:
            self.dataset, self.info = self.load_data()
            check_batches(self.info.num_rows, training.train_batch_size, self.accelerator.num_processes)
        except (ValueError, RuntimeError) as err:  # hf_ddpm.data's one-line errors (Runtime: Hub unreachable)
            raise TrainingError(str(err)) from err
        model = self.build_model()
        self.on_main_process(lambda: self._check_free_space(model))
        if training.use_ema:
            self.ema = build_ema(self.ema_model(model), training)
            self.ema.to(self.accelerator.device)
        optimizer = build_optimizer(model.parameters(), training)
        streaming = self.cfg.dataset.streaming
        dataloader = build_dataloader(self.dataset, training, shuffle=not streaming)
        # The prepared LR scheduler steps once per process per optimizer step, hence the scaling.
        lr_scheduler = get_scheduler(
            training.lr_scheduler,
            optimizer,
            num_warmup_steps=training.lr_warmup_steps * self.accelerator.num_processes,
            num_training_steps=training.max_train_steps * self.accelerator.num_processes,
        )
        if streaming:  # already split between the processes: accelerate must not split or dispatch it again
            self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
                model, optimizer, lr_scheduler
            )
            self.dataloader = dataloader
        else:
            self.model, self.optimizer, self.dataloader, self.lr_scheduler = self.accelerator.prepare(
                model, optimizer, dataloader, lr_scheduler
            )
        self._register_clock()
        if self.ema is not None:
            register_ema(self.accelerator, self.ema, type(self.ema_model(model)), self.ema_folder)
        self._resume()
        if self.accelerator.is_main_process and training.report_to != "none":
            # A resumed run hides what a killed run logged after its checkpoint, so each step shows once.
            purge = {"tensorboard": {"purge_step": self.global_step + 1}} if self.global_step else {}
            self.accelerator.init_trackers(self.tracker_project, _flat_hparams(self.cfg), init_kwargs=purge)
        logger.info(
            f"{self.info.num_rows} images from {self.info.source}; {self.describe()}; "
            f"{self.accelerator.num_processes} process(es), global batch {self.global_batch}"
        )

    def make_accelerator(self) -> Accelerator:
        return build_accelerator(self.cfg.training, self.output_dir)

    def _prepare_output_dir(self) -> None:
        try:
            check_writable(self.output_dir)
        except ValueError as err:
            raise TrainingError(str(err)) from err
        write_atomically(self.output_dir / "config.yaml", self.cfg.to_yaml())
        self.before_training()

    def _check_free_space(self, model: torch.nn.Module) -> None:
        try:
            check_free_space(self.output_dir, model, self.cfg.training.use_ema)
        except ValueError as err:
            raise TrainingError(str(err)) from err

    @property
    def global_batch(self) -> int:
        training = self.cfg.training
        return (
            training.train_batch_size * self.accelerator.num_processes * training.gradient_accumulation_steps
        )

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without DDP's and torch.compile's wrappers: its weights' names are the model's own
        (`_orig_mod.` would make resume refuse every checkpoint), and grids run it uncompiled."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def on_main_process(self, work: Callable[[], Any]) -> Any:
        """Runs `work()` on the main process and returns its result there (None elsewhere). Every process
        returns together; when `work` raised, it raises again on the main process and every other process
        raises `FailedElsewhere`, so none waits at a barrier for one that is gone."""
        error, result = None, None
        if self.accelerator.is_main_process:
            try:
                result = work()
            except Exception as err:  # re-raised below, once every process knows
                error = err
        if self.any_process(error is not None):
            raise error if error is not None else FailedElsewhere("the main process stopped")
        return result

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is True on any process (one collective)."""
        flags = self.accelerator.gather(torch.tensor([float(flag)], device=self.accelerator.device))
        return bool(flags.max() > 0)

    def save_checkpoint(self) -> None:
        save_checkpoint(
            self.accelerator, self.output_dir, self.global_step, self.cfg.training.checkpoints_total_limit
        )

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
        self.global_step = self.resumed_at = checkpoint_step(path)
        logger.info(f"resumed from {path} at step {self.global_step}")
        self.after_resume()

    def after_resume(self) -> None:
        """After a checkpoint was loaded: forget what a killed run did past it (logs, records)."""

    def _loop(self) -> None:
        training = self.cfg.training
        accelerator, model = self.accelerator, self.model
        accumulation = training.gradient_accumulation_steps
        batches_per_epoch = None if self.cfg.dataset.streaming else len(self.dataloader)
        micro_step = self.global_step * accumulation  # batches consumed so far
        epoch, skip = divmod(micro_step, batches_per_epoch) if batches_per_epoch else (0, micro_step)
        self.progress = Progress(
            training.max_train_steps,
            self.global_step,
            self.global_batch,
            every=training.logging_steps,
            enabled=accelerator.is_local_main_process,
        )
        window = []  # the losses (and extra numbers) of the current accumulation window's micro-batches
        problem = None  # what a streamed batch had wrong, for every process to stop on together
        streaming = self.cfg.dataset.streaming
        model.train()
        self.clock.start()
        while not self.finished:
            # The seedable sampler reshuffles per epoch; a streaming dataset reshuffles its buffer per epoch.
            for loader in (self.dataloader, self.dataset):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            if streaming:  # not prepared by accelerate: skipping means reading past the batches
                batches = itertools.islice(self.dataloader, skip, None)
            else:
                batches = accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            skip = 0
            for images, labels in batches:
                if streaming:
                    labels, found = self.check_batch(labels)
                    problem = problem or found
                    images = images.to(accelerator.device, non_blocking=True)
                    labels = labels.to(accelerator.device, non_blocking=True)
                with accelerator.accumulate(model):
                    loss, extras = self.compute_loss(model, images, labels, micro_step)
                    micro_step += 1
                    accelerator.backward(loss)
                    window.append(torch.stack([loss.detach().float(), *(v.float() for v in extras.values())]))
                    if accelerator.sync_gradients:
                        # One collective and one host sync per optimizer step: the global batch's numbers,
                        # whether any process was told to stop, and whether any found a problem in its data.
                        # A NaN or inf loss on any process skips the update on every process (the replicas
                        # stay equal): its gradients would turn every weight into NaN.
                        flags = [self.signals.signal_name is not None, problem is not None]
                        local = torch.cat(
                            [torch.stack(window).mean(0), torch.tensor(flags, device=loss.device)]
                        )
                        numbers = accelerator.gather(local[None].float()).cpu()
                        window = []
                        if numbers[:, -1].max() > 0:
                            self._stop_on_problem(problem)
                        finite = bool(torch.isfinite(numbers[:, 0]).all())
                        if finite:
                            if training.max_grad_norm > 0:
                                accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                            self.optimizer.step()
                            self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue

                self.global_step += 1  # a skipped step still counts, so the data position stays step-aligned
                skipped = not finite or accelerator.optimizer_step_was_skipped  # fp16: the scaler's overflow
                self.nonfinite["total"] += skipped
                self.nonfinite["in_a_row"] = self.nonfinite["in_a_row"] + 1 if skipped else 0
                if skipped:
                    self._check_nonfinite(numbers[:, 0].tolist())
                elif self.ema is not None:
                    self.ema.step(self.ema_model(self.unwrapped_model).parameters())
                self.clock.stop()
                self._log(numbers[:, :-2].mean(0).tolist(), list(extras))

                stopping = bool(numbers[:, -2].max() > 0)
                if stopping or (self.global_step % training.checkpointing_steps == 0 and not self.finished):
                    self.save_checkpoint()
                if stopping:
                    self.progress.close()
                    raise TrainingStopped(
                        f"stopped by {self.signals.signal_name or 'a signal to another process'} after step "
                        f"{self.global_step}. {self._resume_hint()}"
                    )
                self.after_step()
                if self.finished:
                    break
                self.clock.start()
            epoch += 1
        self.progress.close()

    def _stop_on_problem(self, problem: str | None) -> None:
        """Every process raises the problem one of them found (the main process prints it)."""
        problems = [problem]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            problems = gather_object([problem])
        self.progress.close()
        raise TrainingError(next(p for p in problems if p))

    @property
    def finished(self) -> bool:
        return self.global_step >= self.cfg.training.max_train_steps

    def _log(self, numbers: list[float], extra_names: list[str]) -> None:
        loss, *extras = numbers  # means over the processes: the global batch's
        logs = {
            "loss": loss,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "nonfinite_steps": self.nonfinite["total"],
        }
        logs.update(zip(extra_names, extras, strict=True))
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value
        self.progress.update(loss, logs["lr"], self.clock.seconds)
        self.accelerator.log(logs, step=self.global_step)

    def _check_nonfinite(self, losses: list[float]) -> None:
        """Warns about a skipped step; stops the run (every process alike) after `max_nonfinite_steps` in a
        row."""
        in_a_row, step = self.nonfinite["in_a_row"], self.global_step
        what = "the gradients overflowed in fp16" if all(map(math.isfinite, losses)) else f"loss {losses}"
        logger.warning(f"step {step}: {what}, update skipped ({in_a_row} in a row)")
        if in_a_row >= self.cfg.training.max_nonfinite_steps:
            self.progress.close()  # the error is the last line, not the bar
            raise TrainingError(
                f"the loss was NaN or inf for {in_a_row} steps in a row (up to step {step}), so training "
                "stopped: lower training.learning_rate, keep training.max_grad_norm > 0 or use bf16 rather "
                "than fp16, then resume with --training.resume_from_checkpoint latest"
            )

    def _resume_hint(self) -> str:
        """Which checkpoint a resumed run starts from, and the command that resumes."""
        found = list_checkpoints(self.output_dir)
        saved = f"The last complete checkpoint is {found[-1]}" if found else "No checkpoint was written yet"
        script = sys.argv[0]
        command = f"accelerate launch {script}" if script.endswith(".py") else script
        config = self.output_dir / "config.yaml"
        return f"{saved}; resume with: {command} --config {config} --training.resume_from_checkpoint latest"

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
                seconds = torch.tensor(clock.seconds, dtype=torch.float64)
                save_file({"train_seconds": seconds}, os.path.join(output_dir, "train_clock.safetensors"))

        def load_hook(models, input_dir):
            state = load_file(os.path.join(input_dir, "train_clock.safetensors"))
            clock.seconds = state["train_seconds"].item()

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
    parser = ArgumentParser(description=next(iter((description or "").strip().splitlines()), None))
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
    written, a full disk) into one line and exit status 1, and a stop on a signal into one line and
    `REQUEUE_EXIT_CODE`. With several processes, the main one prints the line."""
    cfg = parse_config(trainer_class.config_class, argv, description)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    main = int(os.environ.get("RANK", "0")) == 0
    say, line, status = False, "", 0
    try:
        trainer_class(cfg).train()
    except TrainingStopped as stop:
        say, line, status = main, str(stop), REQUEUE_EXIT_CODE
    except FailedElsewhere:
        status = 1
    except (TrainingError, CheckpointWriteError) as err:  # raised on every process alike: one says it
        say, line, status = main, f"error: {err}", 1
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        say, status = True, 1
        line = (
            f"error: no space left on the device writing {err.filename}: free space or choose another "
            "training.output_dir, then resume with --training.resume_from_checkpoint latest"
        )
    # The trainer is now garbage held only by reference cycles, and its DDP model holds the process group.
    # Left to the interpreter's shutdown, destroying a gloo group there can abort the process (SIGABRT) after
    # a run that succeeded; collected here, it goes while everything it needs is still alive.
    gc.collect()
    if say:
        print(line, file=sys.stderr, flush=True)
    if status:
        sys.exit(status)
