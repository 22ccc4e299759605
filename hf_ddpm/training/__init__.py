"""Training: the loop both trainers share (`loop`), the diffusion trainer (`diffusion`), the autoencoder
trainer of latent diffusion (`autoencoder`), and resumable checkpoints (`checkpoints`).

    from hf_ddpm.config import load_config
    from hf_ddpm.training import DiffusionTrainer

    DiffusionTrainer(load_config("training/configs/tiny.yaml")).train()
"""

from .autoencoder import AutoencoderTrainer
from .diffusion import DiffusionTrainer
from .loop import TrainingError, TrainLoop, run_cli

__all__ = ["AutoencoderTrainer", "DiffusionTrainer", "TrainLoop", "TrainingError", "run_cli"]
