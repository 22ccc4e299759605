"""Train a DDPM (Ho et al. 2020), or with `diffusion.objective: flow_matching` a flow-matching model, on a
`datasets` image source and export a stock `DDPMPipeline` (or, with `model.class_conditional`, a
`ClassConditionalDDPMPipeline` with classifier-free guidance; with `model.latent_autoencoder`, a
`LatentDDPMPipeline` trained on the autoencoder's latents).

    accelerate launch training/train.py --config training/configs/mnist.yaml [--SECTION.KEY VALUE ...]

Plain `python training/train.py ...` runs the same loop in one process. Every config key can be
overridden from the command line, e.g. `--training.max_train_steps 200 --dataset.path /data/mnist`.
Outputs in `training.output_dir`: `model_index.json`, `unet/`, `scheduler/` (the pipeline, EMA
weights), `config.yaml` (the resolved config), `samples.png` and `samples/step_*.png` (grids),
`README.md` (the model card), `checkpoint-STEP/` (resumable state) and `logs/` (TensorBoard).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_ddpm.checkpoints import (
    CheckpointWriteError,
    check_free_space,
    check_writable,
    checkpoint_step,
    load_checkpoint,
    register_ema,
    resolve_checkpoint,
    save_checkpoint,
)
from hf_ddpm.config import Config, load_config
from hf_ddpm.data import check_batches, load_image_dataset, to_model_range
from hf_ddpm.evaluate import data_floor, describe_protocol, evaluate_unet, load_reference, write_report
from hf_ddpm.hub import HubPushError, create_repo, push_to_hub
from hf_ddpm.latents import encode_dataset, load_autoencoder
from hf_ddpm.model_card import RunInfo, describe_hardware, save_run_info, write_model_card
from hf_ddpm.models import build_unet
from hf_ddpm.objectives import diffusion_loss, draw_batch, flow_matching_loss, flow_times
from hf_ddpm.pipeline import (
    export_pipeline,
    generate,
    grid_columns,
    make_pipeline,
    make_scheduler,
    save_grid,
    training_scheduler,
)

logger = get_logger(__name__, log_level="INFO")


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with sections dataset, model, diffusion, training")
    args, overrides = parser.parse_known_args(argv)
    try:
        return load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))


def main(cfg: Config) -> None:
    start = time.perf_counter()  # the wall time in the model card
    t = cfg.training
    output_dir = Path(t.output_dir)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        # Data order depends on the seed and the epoch alone, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        sys.exit(
            f"error: train.py does not support {accelerator.distributed_type.value} yet: its EMA, sample "
            "grids and checkpoints need every process to hold the whole model; use DDP (--multi_gpu, or "
            "training/accelerate_configs/multi_gpu.yaml), every preset fits one GPU"
        )
    repo_id = t.hub_model_id
    if accelerator.is_main_process:
        try:
            check_writable(output_dir)
        except ValueError as err:
            sys.exit(f"error: {err}")
        cfg.save(output_dir / "config.yaml")
        if t.push_to_hub:
            # Before training, as diffusers' examples do, so a bad token or endpoint fails in seconds;
            # it also gives the card the full id of a bare `name`.
            try:
                repo_id = create_repo(t.hub_model_id or output_dir.name, t.hub_private_repo, t.hub_token)
            except HubPushError as err:
                sys.exit(f"error: {err}")
    set_seed(t.seed)  # the same initial weights on every process

    try:
        dataset, info = load_image_dataset(cfg.dataset, seed=t.seed)
        check_batches(info.num_rows, t.train_batch_size, accelerator.num_processes)
    except (ValueError, RuntimeError) as err:  # hf_ddpm.data's one-line errors (Runtime: Hub unreachable)
        sys.exit(f"error: {err}")
    reference = None
    if t.eval_every and accelerator.is_main_process:
        reference = load_reference(cfg.dataset.path or cfg.dataset.name, t.eval_classifier)
    try:
        id2label = _class_labels(cfg, info.class_names)
    except ValueError as err:
        sys.exit(f"error: {err}")
    vae, size, channels = None, info.image_size, info.channels
    if cfg.model.latent_autoencoder:
        try:
            vae = load_autoencoder(cfg.model.latent_autoencoder, info.channels, accelerator.device)
            dataset = encode_dataset(vae, dataset, cfg.dataset.random_flip)
        except ValueError as err:
            sys.exit(f"error: {err}")
        channels, size = dataset.tensors[0].shape[-3], dataset.tensors[0].shape[-1]
    # What an export holds besides the UNet: the class names, the autoencoder of a latent model.
    components = {"id2label": id2label, "vae": vae}
    conditioning = {"num_class_embeds": len(id2label) + 1} if id2label else {}  # + the null class
    try:
        unet = build_unet(
            cfg.model.preset,
            size,
            channels,
            dropout=cfg.model.dropout,
            variance_type=cfg.diffusion.variance_type,
            **conditioning,
        )
    except ValueError as err:
        sys.exit(f"error: {err}")
    if accelerator.is_main_process:
        try:
            check_free_space(output_dir, unet, t.use_ema)
        except ValueError as err:
            sys.exit(f"error: {err}")
    scheduler = training_scheduler(cfg.diffusion)
    ema = None
    if t.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=t.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=t.ema_inv_gamma,
            power=t.ema_power,
            model_cls=UNet2DModel,
            model_config=unet.config,
        )
        ema.to(accelerator.device)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        weight_decay=t.adam_weight_decay,
        eps=t.adam_epsilon,
    )
    dataloader = DataLoader(
        dataset,
        batch_size=t.train_batch_size,
        shuffle=not cfg.dataset.streaming,
        drop_last=True,
        num_workers=t.dataloader_num_workers,
    )
    # The prepared LR scheduler steps once per process per optimizer step, hence the scaling.
    lr_scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=t.max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    clock = {"train_seconds": 0.0}  # optimizer steps only (the x axis of time-to-quality); checkpointed
    _register_clock(accelerator, clock)
    if ema is not None:
        register_ema(accelerator, ema, UNet2DModel, "unet_ema")

    global_step = 0
    if t.resume_from_checkpoint:
        path = resolve_checkpoint(output_dir, t.resume_from_checkpoint)
        if path is None:
            logger.info(f"no checkpoint in {output_dir}, starting from scratch")
        else:
            try:
                load_checkpoint(accelerator, path, accelerator.unwrap_model(unet).state_dict())
            except ValueError as err:
                sys.exit(f"error: {err}")
            global_step = checkpoint_step(path)
            logger.info(f"resumed from {path} at step {global_step}")

    if accelerator.is_main_process and t.report_to != "none":
        accelerator.init_trackers("hf-ddpm", config=_flat_hparams(cfg))
    logger.info(
        f"{info.num_rows} images from {info.source}, {info.channels}x{info.image_size}x{info.image_size}; "
        f"UNet preset {cfg.model.preset!r} with {sum(p.numel() for p in unet.parameters()):,} parameters; "
        f"{accelerator.num_processes} process(es), global batch "
        f"{t.train_batch_size * accelerator.num_processes * t.gradient_accumulation_steps}"
    )

    T = scheduler.config.num_train_timesteps
    batches_per_epoch = len(dataloader) if not cfg.dataset.streaming else None
    micro_step = global_step * t.gradient_accumulation_steps  # batches consumed; keys the random numbers
    epoch, skip = divmod(micro_step, batches_per_epoch) if batches_per_epoch else (0, micro_step)
    progress = tqdm(
        total=t.max_train_steps,
        initial=global_step,
        desc="train",
        disable=not accelerator.is_local_main_process,
    )
    best_fid = _best_fid(output_dir)
    last_eval = (None, None)  # (step, metrics): eval.json reuses them when they scored the final weights
    nonfinite = {"total": 0, "in_a_row": 0}  # optimizer steps skipped for a NaN or inf loss
    window_finite = True  # every micro-batch of the current accumulation window had a finite loss
    unet.train()
    step_start = time.perf_counter()
    while global_step < t.max_train_steps:
        _set_epoch(dataloader, dataset, epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        skip = 0
        for images, labels in batches:
            draws = draw_batch(
                t.seed,
                micro_step,
                (len(images), channels, size, size),
                T,
                t.cond_drop_prob,
                accelerator.num_processes,
                accelerator.process_index,
                images.device,
            )
            micro_step += 1
            if vae is not None:  # scaled latents (B, views, C, h, w); view 1 is the mirrored image's
                x0 = images[:, 0]
                if cfg.dataset.random_flip:
                    x0 = torch.where(draws.flip[:, None, None, None], images[:, 1], x0)
            else:
                x0 = to_model_range(images)
                if cfg.dataset.random_flip:
                    x0 = torch.where(draws.flip[:, None, None, None], x0.flip(-1), x0)
            class_labels = None
            if id2label:
                if (labels < 0).any():
                    sys.exit(
                        f"error: rows without a label in {cfg.dataset.label_column!r}: a class-conditional "
                        "model needs every row labelled (filter the data or set model.class_conditional "
                        "false)"
                    )
                class_labels = torch.where(draws.drop, len(id2label), labels)  # the null class
            with accelerator.accumulate(unet):
                if cfg.diffusion.flow_matching:
                    d = cfg.diffusion
                    times = flow_times(draws.uniform, d.time_sampling, d.logit_mean, d.logit_std)
                    loss = flow_matching_loss(unet, x0, draws.noise, times, T, class_labels)
                else:
                    loss = diffusion_loss(
                        unet, scheduler, x0, None, t.snr_gamma, class_labels, draws.noise, draws.timesteps
                    )
                # A NaN or inf loss on any process skips the update on every process (the replicas stay
                # equal); its gradients would turn every weight into NaN.
                losses = accelerator.gather(loss.detach().reshape(1))
                finite = bool(torch.isfinite(losses).all())
                window_finite = window_finite and finite
                if finite:
                    accelerator.backward(loss)
                if accelerator.sync_gradients and window_finite:
                    if t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(unet.parameters(), t.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue

            global_step += 1  # a skipped step still counts, so the data position stays step-aligned
            skipped, window_finite = not window_finite, True
            nonfinite["total"] += skipped
            nonfinite["in_a_row"] = nonfinite["in_a_row"] + 1 if skipped else 0
            if skipped:
                _check_nonfinite(nonfinite, global_step, t.max_nonfinite_steps, loss, progress)
            elif ema is not None:
                ema.step(unet.parameters())
            clock["train_seconds"] += time.perf_counter() - step_start
            logs = {
                "loss": losses.mean().item(),  # over the processes: the global batch's loss
                "lr": lr_scheduler.get_last_lr()[0],
                "nonfinite_steps": nonfinite["total"],
            }
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            accelerator.log(logs, step=global_step)

            if global_step % t.checkpointing_steps == 0 and global_step < t.max_train_steps:
                save_checkpoint(accelerator, output_dir, global_step, t.checkpoints_total_limit)
            if global_step % t.save_images_steps == 0 and global_step < t.max_train_steps:
                grid = output_dir / f"samples/step_{global_step:06d}.png"
                _sample_grid(accelerator, unet, ema, scheduler, cfg, grid, components)
            if t.eval_every and global_step % t.eval_every == 0:
                best_fid, metrics = _evaluate(
                    accelerator,
                    unet,
                    ema,
                    scheduler,
                    cfg,
                    reference,
                    global_step,
                    clock["train_seconds"],
                    best_fid,
                    components,
                )
                last_eval = (global_step, metrics)
            if global_step >= t.max_train_steps:
                break
            step_start = time.perf_counter()
        epoch += 1
    progress.close()

    save_checkpoint(accelerator, output_dir, global_step, t.checkpoints_total_limit)
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(model.parameters())  # training is over: the EMA weights are the model from here on
    if accelerator.is_main_process:
        export_pipeline(model, scheduler, output_dir, **components)
        if reference is not None:  # the final model's numbers go into eval.json and the model card
            final = last_eval[1] if last_eval[0] == global_step else None
            _final_report(model, scheduler, cfg, reference, output_dir / "eval.json", final, vae)
    # ema=None: the model already holds the EMA weights, no swap needed.
    grid = _sample_grid(accelerator, unet, None, scheduler, cfg, output_dir / "samples.png", components)
    if accelerator.is_main_process:
        run = RunInfo(
            wall_time_s=time.perf_counter() - start,
            hardware=describe_hardware(accelerator.device),
            num_processes=accelerator.num_processes,
            steps=global_step,
            num_images=info.num_rows,
            data_source=info.source,
        )
        save_run_info(output_dir, run)
        card = write_model_card(output_dir, cfg, run, repo_id)
        logger.info(f"pipeline saved to {output_dir}, samples in {grid}, model card {card}")
        if t.push_to_hub:
            try:
                url = push_to_hub(output_dir, repo_id, t.hub_private_repo, t.hub_token)
            except HubPushError as err:
                retry = f"python -m hf_ddpm.hub push {output_dir} ID"
                sys.exit(f"error: {err}; the run is saved, push it with: {retry}")
            logger.info(f"pushed to {url}")
    accelerator.end_training()


@contextlib.contextmanager
def _ema_weights(accelerator, unet, ema):
    """The unwrapped model holding the EMA weights, in eval mode; the training weights come back after."""
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield model
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())


def _sample_grid(accelerator, unet, ema, scheduler, cfg: Config, path: Path, components: dict) -> Path | None:
    """Samples `num_sample_images` from the EMA weights with a fixed seed (main process only)."""
    if accelerator.is_main_process:
        t = cfg.training
        with _ema_weights(accelerator, unet, ema) as model:
            pipeline = make_pipeline(model, make_scheduler(t.sampler, scheduler.config), **components)
            pipeline.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            images = generate(
                pipeline, t.num_sample_images, t.num_inference_steps, t.seed, guidance_scale=t.guidance_scale
            )
            save_grid(images, path, cols=grid_columns(pipeline))
        logger.info(
            f"wrote {path} ({t.sampler}, {t.num_inference_steps} steps, {time.perf_counter() - start:.0f} s)"
        )
    accelerator.wait_for_everyone()
    return path


def _evaluate(
    accelerator,
    unet,
    ema,
    scheduler,
    cfg: Config,
    reference,
    step: int,
    train_seconds: float,
    best_fid: float,
    components: dict,
) -> tuple[float, dict | None]:
    """Scores EMA samples (main process), logs them, and exports the pipeline to best/ when the
    classifier-FID is the lowest so far. Returns the best classifier-FID and the metrics (None off main)."""
    metrics = None
    if accelerator.is_main_process:
        t = cfg.training
        output_dir = Path(t.output_dir)
        with _ema_weights(accelerator, unet, ema) as model:
            metrics = _eval_metrics(model, scheduler, cfg, reference, components["vae"])
            if metrics["classifier_fid"] < best_fid:
                best_fid = metrics["classifier_fid"]
                best = output_dir / "best"
                _export_atomically(model, scheduler, best, {"step": step, **metrics}, components)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        record = {"step": step, "train_minutes": train_seconds / 60, **metrics}
        with open(output_dir / "eval_log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info(
            f"step {step}: classifier-FID {metrics['classifier_fid']:.2f}, legibility "
            f"{metrics['legibility']:.3f}, class entropy {metrics['class_entropy']:.3f} "
            f"(best classifier-FID {best_fid:.2f})"
        )
    accelerator.wait_for_everyone()
    return best_fid, metrics


def _eval_metrics(model, scheduler, cfg: Config, reference, vae) -> dict[str, float]:
    t = cfg.training
    return evaluate_unet(
        model,
        scheduler.config,
        reference,
        t.eval_sampler,
        t.eval_num_inference_steps,
        t.eval_num_images,
        t.seed,
        t.guidance_scale,
        vae,
    )


def _final_report(model, scheduler, cfg: Config, reference, path: Path, metrics: dict | None, vae) -> None:
    """eval.json: the final weights' metrics (sampled here unless the last eval already scored them)."""
    t = cfg.training
    if metrics is None:
        model.eval()
        metrics = _eval_metrics(model, scheduler, cfg, reference, vae)
        model.train()
    sampling = {"sampler": t.eval_sampler, "steps": t.eval_num_inference_steps, "seed": t.seed}
    if cfg.model.class_conditional:
        sampling["guidance_scale"] = t.guidance_scale
    protocol = describe_protocol(reference, t.eval_num_images, **sampling)
    write_report(
        path, {"protocol": protocol, "samples": metrics, "floor": data_floor(reference, t.eval_num_images)}
    )


def _export_atomically(model, scheduler, folder: Path, metrics: dict, components: dict) -> None:
    """Exports the pipeline beside `folder` and swaps it in, so a kill never leaves a half-written best/."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    export_pipeline(model, scheduler, partial, **components)
    (partial / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _best_fid(output_dir: Path) -> float:
    """The classifier-FID of best/ from an earlier (resumed) run, so a worse model never replaces it."""
    path = output_dir / "best" / "eval.json"
    return json.loads(path.read_text())["classifier_fid"] if path.is_file() else float("inf")


def _register_clock(accelerator: Accelerator, clock: dict) -> None:
    """Puts the training clock in every checkpoint (safetensors). The random numbers of a step are keyed by
    the step (`draw_batch`), so there is no generator state to save."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            seconds = torch.tensor(clock["train_seconds"], dtype=torch.float64)
            save_file({"train_seconds": seconds}, os.path.join(output_dir, "train_clock.safetensors"))

    def load_hook(models, input_dir):
        state = load_file(os.path.join(input_dir, "train_clock.safetensors"))
        clock["train_seconds"] = state["train_seconds"].item()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _class_labels(cfg: Config, class_names: list[str] | None) -> dict[int, str] | None:
    """id2label of a class-conditional run (from the label column's ClassLabel), else None."""
    if not cfg.model.class_conditional:
        return None
    if not class_names:
        raise ValueError(
            f"model.class_conditional needs class labels, but dataset.label_column "
            f"{cfg.dataset.label_column!r} is not a ClassLabel column: name the right column or set "
            "model.class_conditional false"
        )
    if not 0 <= cfg.training.cond_drop_prob < 1:
        raise ValueError(
            f"training.cond_drop_prob is {cfg.training.cond_drop_prob}: use a probability in [0, 1) "
            "(0.1 is usual; 0 never trains the unconditional model that guidance needs)"
        )
    return dict(enumerate(class_names))


def _check_nonfinite(counts: dict, step: int, limit: int, loss: torch.Tensor, progress) -> None:
    """Warns about a skipped step; stops the run (every process alike) after `limit` in a row."""
    logger.warning(f"step {step}: loss is {loss.item()}, update skipped ({counts['in_a_row']} in a row)")
    if counts["in_a_row"] >= limit:
        progress.close()  # the error is the last line, not the bar
        sys.exit(
            f"error: the loss was NaN or inf for {counts['in_a_row']} steps in a row (up to step {step}), so "
            "training stopped: lower training.learning_rate, keep training.max_grad_norm > 0 or use bf16 "
            "rather than fp16, then resume with --training.resume_from_checkpoint latest"
        )


def _set_epoch(dataloader, dataset, epoch: int) -> None:
    # The seedable sampler reshuffles per epoch; a streaming dataset reshuffles its buffer per epoch.
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _flat_hparams(cfg: Config) -> dict:
    """TensorBoard's hparams take scalars only: `section.key` -> value, None dropped."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    return flat


def cli(argv: list[str] | None = None) -> None:
    """`main` with the command line's config; a full disk stops the run in one line."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    try:
        main(parse_args(argv))
    except CheckpointWriteError as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(
            f"error: no space left on the device writing {err.filename}: free space or choose another "
            "training.output_dir, then resume with --training.resume_from_checkpoint latest"
        )


if __name__ == "__main__":
    cli()
