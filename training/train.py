"""Train a DDPM (Ho et al. 2020), or with `diffusion.objective: flow_matching` a flow-matching model, on a
`datasets` image source and export a stock `DDPMPipeline` (with `model.class_conditional`, a
`ClassConditionalDDPMPipeline` with classifier-free guidance; with `model.latent_autoencoder`, a
`LatentDDPMPipeline` trained on the autoencoder's latents).

    accelerate launch training/train.py --config training/configs/mnist.yaml [--SECTION.KEY VALUE ...]

Plain `python training/train.py ...` runs the same loop in one process. Every config key can be
overridden from the command line, e.g. `--training.max_train_steps 200 --dataset.path /data/mnist`.
Outputs in `training.output_dir`: `model_index.json`, `unet/`, `scheduler/` (the pipeline, EMA
weights), `config.yaml` (the resolved config), `samples.png` and `samples/step_*.png` (grids),
`README.md` (the model card), `checkpoint-STEP/` (resumable state) and `logs/` (TensorBoard).

The loop itself is `hf_ddpm.training.DiffusionTrainer`; this script is its command line.
"""

from hf_ddpm.training import DiffusionTrainer, run_cli

if __name__ == "__main__":
    run_cli(DiffusionTrainer, description=__doc__)
