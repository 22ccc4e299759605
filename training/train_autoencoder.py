"""Train the autoencoder of latent diffusion (Rombach et al. 2022): a diffusers `AutoencoderKL` that maps
28x28 images to small latents (4x7x7 by default) and back, for `model.latent_autoencoder` in train.py.

    accelerate launch training/train_autoencoder.py --config training/configs/autoencoder-mnist.yaml

Outputs in `training.output_dir`: the autoencoder (`config.json` with its `scaling_factor`,
`diffusion_pytorch_model.safetensors`), `eval.json` (reconstruction error, PSNR, classifier accuracy on
reconstructed test images), `reconstructions.png`, `config.yaml`, `checkpoint-STEP/` and `logs/`.

The loop itself is `hf_ddpm.training.AutoencoderTrainer`; this script is its command line.
"""

from hf_ddpm.training import AutoencoderTrainer, run_cli

if __name__ == "__main__":
    run_cli(AutoencoderTrainer, description=__doc__)
