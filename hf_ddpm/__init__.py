"""hf-ddpm: Denoising Diffusion Probabilistic Models (Ho et al. 2020) for small images, on diffusers.

Imports are lazy so that `import hf_ddpm` stays cheap: torch and diffusers load on first use.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LinearNoiseScheduler": "hf_ddpm.scheduler",
    "Config": "hf_ddpm.config",
    "load_config": "hf_ddpm.config",
    "PRESETS": "hf_ddpm.models",
    "build_unet": "hf_ddpm.models",
    "load_image_dataset": "hf_ddpm.data",
    "ClassConditionalDDPMPipeline": "hf_ddpm.pipelines.class_conditional_ddpm",
    "LatentDDPMPipeline": "hf_ddpm.pipelines.latent_ddpm",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hf_ddpm' has no attribute {name!r}")
