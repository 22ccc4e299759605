"""The diffusion trainer: a DDPM (Ho et al. 2020) or, with `diffusion.objective: flow_matching`, a
flow-matching model, trained on a `datasets` image source and exported as a stock `DDPMPipeline` (with
`model.class_conditional`, a `ClassConditionalDDPMPipeline` with classifier-free guidance; with
`model.latent_autoencoder`, a `LatentDDPMPipeline` trained on the autoencoder's latents).

What it adds to `TrainLoop`: the UNet, the loss of the objective on each micro-batch, sample grids from
the EMA weights every `save_images_steps`, evaluation every `eval_every` steps (with the best model kept in
`best/`), and at the end the export, its sample grid, `eval.json`, the model card and the Hub push.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers import UNet2DModel

from ..config import Config
from ..data import DatasetInfo, to_model_range
from ..evaluate import data_floor, describe_protocol, evaluate_unet, load_reference
from ..files import replace_folder, write_atomically, write_json
from ..hub import HubPushError, create_repo, push_to_hub
from ..latents import encode_dataset, load_autoencoder
from ..model_card import RunInfo, describe_hardware, save_run_info, write_model_card
from ..models import build_unet, load_pretrained_weights
from ..objectives import draw_batch, training_loss
from ..pipeline import (
    export_pipeline,
    generate,
    grid_columns,
    make_pipeline,
    make_scheduler,
    save_grid,
    training_scheduler,
)
from .loop import TrainingError, TrainLoop

logger = get_logger(__name__, log_level="INFO")
EVAL_LOG = "eval_log.jsonl"  # one JSON record per evaluation: the step, the training minutes, the metrics


class DiffusionTrainer(TrainLoop):
    config_class = Config
    tracker_project = "hf-ddpm"
    ema_folder = "unet_ema"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.repo_id = cfg.training.hub_model_id
        self.scheduler = training_scheduler(cfg.diffusion)
        self.reference = None  # the evaluation's test split and classifier (main process, eval_every > 0)
        self.best_fid = _best_fid(self.output_dir)  # a resumed run never replaces best/ with a worse model
        self.last_eval: tuple[int | None, dict | None] = (None, None)  # eval.json reuses the final step's
        # What an export holds besides the UNet: the class names, the autoencoder of a latent model.
        self.components: dict = {"id2label": None, "vae": None}

    def before_training(self) -> None:
        training = self.cfg.training
        if training.push_to_hub:
            # Before training, as diffusers' examples do, so a bad token or endpoint fails in seconds; it also
            # gives the card the full id of a bare `name`.
            try:
                name = training.hub_model_id or self.output_dir.name
                self.repo_id = create_repo(name, training.hub_private_repo, training.hub_token)
            except HubPushError as err:
                raise TrainingError(str(err)) from err

    def load_data(self) -> tuple[torch.utils.data.Dataset, DatasetInfo]:
        cfg = self.cfg
        dataset, info = super().load_data()
        if cfg.training.eval_every and self.accelerator.is_main_process:
            source = cfg.dataset.path or cfg.dataset.name
            self.reference = load_reference(source, cfg.training.eval_classifier, self.accelerator.device)
        if cfg.model.class_conditional:
            if not info.class_names:
                raise ValueError(
                    f"model.class_conditional needs class labels, but dataset.label_column "
                    f"{cfg.dataset.label_column!r} is not a ClassLabel column: name the right column or set "
                    "model.class_conditional false"
                )
            self.components["id2label"] = dict(enumerate(info.class_names))
            if not cfg.dataset.streaming and (dataset.tensors[1] < 0).any():
                raise ValueError(self._unlabelled_rows())
        if cfg.model.latent_autoencoder:
            vae = load_autoencoder(cfg.model.latent_autoencoder, info.channels, self.accelerator.device)
            dataset = encode_dataset(vae, dataset, cfg.dataset.random_flip)
            self.components["vae"] = vae
        return dataset, info

    def check_batch(self, labels: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        if self.components["id2label"] and (labels < 0).any():
            return labels.clamp(min=0), self._unlabelled_rows()  # usable until every process stops
        return labels, None

    def _unlabelled_rows(self) -> str:
        return (
            f"rows without a label in {self.cfg.dataset.label_column!r}: a class-conditional model needs "
            "every row labelled (filter the data or set model.class_conditional false)"
        )

    @property
    def sample_shape(self) -> tuple[int, int]:
        """(channels, size) of what the UNet denoises: the images, or a latent model's latents."""
        if self.components["vae"] is not None:
            latents = self.dataset.tensors[0]  # (N, views, C, h, w)
            return latents.shape[-3], latents.shape[-1]
        return self.info.channels, self.info.image_size

    def build_model(self) -> UNet2DModel:
        cfg = self.cfg
        id2label = self.components["id2label"]
        conditioning = {"num_class_embeds": len(id2label) + 1} if id2label else {}  # + the null class
        channels, size = self.sample_shape
        try:
            unet = build_unet(
                cfg.model.preset,
                size,
                channels,
                variance_type=cfg.diffusion.variance_type,  # learned variances: twice the output channels
                **cfg.model.unet_kwargs(),
                **conditioning,
            )
            if cfg.model.pretrained_model_name_or_path:
                load_pretrained_weights(unet, cfg.model.pretrained_model_name_or_path)
        except ValueError as err:
            raise TrainingError(str(err)) from err
        if cfg.training.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        return unet

    def describe(self) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        return f"UNet preset {self.cfg.model.preset!r} with {parameters:,} parameters"

    def compute_loss(self, model, images, labels, micro_step):
        cfg, training = self.cfg, self.cfg.training
        channels, size = self.sample_shape
        draws = draw_batch(
            training.seed,
            micro_step,
            (len(images), channels, size, size),
            cfg.diffusion.num_train_timesteps,
            drop_prob=training.cond_drop_prob,
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            device=images.device,
        )
        if self.components["vae"] is not None:  # scaled latents (B, views, C, h, w); view 1 is mirrored
            x0 = images[:, 0]
            if cfg.dataset.random_flip:
                x0 = torch.where(draws.flip[:, None, None, None], images[:, 1], x0)
        else:
            x0 = to_model_range(images)
            if cfg.dataset.random_flip:
                x0 = torch.where(draws.flip[:, None, None, None], x0.flip(-1), x0)
        class_labels = None
        id2label = self.components["id2label"]
        if id2label:  # labels were checked when loaded (in memory) or by `check_batch` (streamed)
            class_labels = torch.where(draws.drop, len(id2label), labels)  # the null class
        loss = training_loss(
            model,
            self.scheduler,
            x0,
            draws,
            diffusion=cfg.diffusion,
            training=training,
            class_labels=class_labels,
        )
        return loss, {}

    def after_step(self) -> None:
        training, step = self.cfg.training, self.global_step
        if step % training.save_images_steps == 0 and not self.finished:
            self.sample_grid(self.output_dir / f"samples/step_{step:06d}.png")
        if training.eval_every and step % training.eval_every == 0:
            self.evaluate()

    def sample_grid(self, path: Path) -> Path:
        """`num_sample_images` from the EMA weights with the run's seed and sampler (main process only)."""
        self.on_main_process(lambda: self._sample_grid(path))
        return path

    def _sample_grid(self, path: Path) -> None:
        training = self.cfg.training
        start = time.perf_counter()
        with self.ema_weights() as model:
            sampler = make_scheduler(training.sampler, self.scheduler.config)
            pipeline = make_pipeline(model, sampler, **self.components)
            pipeline.set_progress_bar_config(disable=True)
            images = generate(
                pipeline,
                training.num_sample_images,
                training.num_inference_steps,
                training.seed,
                guidance_scale=training.guidance_scale,
            )
            save_grid(images, path, cols=grid_columns(pipeline))
        seconds = time.perf_counter() - start
        logger.info(
            f"wrote {path} ({training.sampler}, {training.num_inference_steps} steps, {seconds:.0f} s)"
        )

    def evaluate(self) -> None:
        """Scores EMA samples (main process), logs them, and exports the pipeline to best/ when its
        classifier-FID is the lowest so far."""
        self.on_main_process(self._evaluate)

    def _evaluate(self) -> None:
        step = self.global_step
        with self.ema_weights() as model:
            metrics = self._eval_metrics(model)
            if metrics["classifier_fid"] < self.best_fid:
                self.best_fid = metrics["classifier_fid"]
                with replace_folder(self.output_dir / "best") as best:
                    export_pipeline(model, self.scheduler, best, **self.components)
                    write_json(best / "eval.json", {"step": step, **metrics})
        self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        record = {"step": step, "train_minutes": self.clock.seconds / 60, **metrics}
        with open(self.output_dir / EVAL_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info(
            f"step {step}: classifier-FID {metrics['classifier_fid']:.2f}, legibility "
            f"{metrics['legibility']:.3f}, class entropy {metrics['class_entropy']:.3f} "
            f"(best classifier-FID {self.best_fid:.2f})"
        )
        self.last_eval = (step, metrics)

    def after_resume(self) -> None:
        """Drops the evaluations a killed run logged after the checkpoint, which the resumed run repeats."""

        def prune() -> None:
            path = self.output_dir / EVAL_LOG
            if path.is_file():
                lines = path.read_text().splitlines()
                kept = [line for line in lines if json.loads(line)["step"] <= self.global_step]
                write_atomically(path, "".join(line + "\n" for line in kept))

        self.on_main_process(prune)

    def _eval_metrics(self, model: UNet2DModel) -> dict[str, float]:
        training = self.cfg.training
        return evaluate_unet(
            model,
            self.scheduler.config,
            self.reference,
            sampler=training.eval_sampler,
            steps=training.eval_num_inference_steps,
            num_images=training.eval_num_images,
            seed=training.seed,
            guidance_scale=training.guidance_scale,
            vae=self.components["vae"],
        )

    def export(self) -> None:
        """The pipeline (EMA weights), eval.json, the final grid, the model card, and the Hub push."""
        model = self.unwrapped_model
        self.on_main_process(lambda: self._export_pipeline(model))
        grid = self.sample_grid(self.output_dir / "samples.png")  # the model holds the EMA weights already
        self.on_main_process(lambda: self._publish(grid))

    def _export_pipeline(self, model: UNet2DModel) -> None:
        export_pipeline(model, self.scheduler, self.output_dir, **self.components)
        if self.reference is not None:  # the final model's numbers go into eval.json and the model card
            self._final_report(model)

    def _publish(self, grid: Path) -> None:
        training = self.cfg.training
        run = RunInfo(
            wall_time_s=time.perf_counter() - self.start_time,
            hardware=describe_hardware(self.accelerator.device),
            num_processes=self.accelerator.num_processes,
            steps=self.global_step,
            num_images=self.info.num_rows,
            data_source=self.info.source,
            train_time_s=self.clock.seconds,
            resumed_at=self.resumed_at,
        )
        save_run_info(self.output_dir, run)
        card = write_model_card(self.output_dir, self.cfg, run, self.repo_id)
        logger.info(f"pipeline saved to {self.output_dir}, samples in {grid}, model card {card}")
        if training.push_to_hub:
            try:
                url = push_to_hub(
                    self.output_dir, self.repo_id, training.hub_private_repo, training.hub_token
                )
            except HubPushError as err:
                retry = f"python -m hf_ddpm.hub push {self.output_dir} ID"
                raise TrainingError(f"{err}; the run is saved, push it with: {retry}") from err
            logger.info(f"pushed to {url}")

    def _final_report(self, model: UNet2DModel) -> None:
        """eval.json: the final weights' metrics (sampled here unless the last eval already scored them)."""
        training = self.cfg.training
        step, metrics = self.last_eval
        if step != self.global_step:
            model.eval()
            metrics = self._eval_metrics(model)
            model.train()
        sampling = {
            "sampler": training.eval_sampler,
            "steps": training.eval_num_inference_steps,
            "seed": training.seed,
        }
        if self.cfg.model.class_conditional:
            sampling["guidance_scale"] = training.guidance_scale
        protocol = describe_protocol(self.reference, training.eval_num_images, **sampling)
        floor = data_floor(self.reference, training.eval_num_images)
        write_json(self.output_dir / "eval.json", {"protocol": protocol, "samples": metrics, "floor": floor})


def _best_fid(output_dir: Path) -> float:
    """The classifier-FID of best/ from an earlier (resumed) run, so a worse model never replaces it."""
    path = output_dir / "best" / "eval.json"
    return json.loads(path.read_text())["classifier_fid"] if path.is_file() else float("inf")
