"""`UNet2DModel` presets for 28x28 images, and for the 4x7x7 latents of latent diffusion (`latent-*`).

Every preset is a plain `UNet2DModel` config, so stock diffusers loads what we save. The down path
halves the resolution after every block but the last (28 -> 14 -> 7); the up path mirrors it with
skip connections; the timestep enters through diffusers' sinusoidal embedding and an MLP.

Differences from the reference tutorial's network that `UNet2DModel` forces on the `tutorial` preset:
- One attention head size for the whole net (`attention_head_dim`): 32 channels per head gives 2, 4 and
  8 heads at 64, 128 and 256 channels (the tutorial uses 4 heads everywhere).
- The sinusoidal embedding has `block_out_channels[0]` = 64 dimensions; `time_embedding_dim=128` sets
  the width of the MLP after it (the tutorial's sinusoid itself is 128-d).
- The mid block is ResNet, attention, ResNet (the tutorial stacks two such layers), and up blocks hold
  `layers_per_block + 1` ResNets, one per skip connection.
"""

from __future__ import annotations

from typing import Any

_DOWN = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")

PRESETS: dict[str, dict[str, Any]] = {
    # For tests: a few seconds of CPU training shows the loss fall.
    "tiny": dict(
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        down_block_types=_DOWN,
        up_block_types=_UP,
        norm_num_groups=8,
        attention_head_dim=16,
        time_embedding_dim=32,
    ),
    # CPU-friendly: self-attention only at 7x7 and in the mid block.
    "small": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=_DOWN,
        up_block_types=_UP,
        norm_num_groups=8,
        attention_head_dim=32,
    ),
    # Designed for CPU training: a conv's cost grows with channels^2 x pixels, so the width doubles as the
    # resolution halves (24 at 28x28, 96 at 7x7) and every level costs about the same; 25% fewer FLOPs per
    # step than `small`, with 40% more parameters, most of them at 7x7 where attention sits.
    "cpu": dict(
        block_out_channels=(24, 48, 96),
        layers_per_block=1,
        down_block_types=_DOWN,
        up_block_types=_UP,
        norm_num_groups=8,
        attention_head_dim=32,
    ),
    # The reference tutorial's network, for a GPU: attention at every resolution.
    "tutorial": dict(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        down_block_types=("AttnDownBlock2D",) * 3,
        up_block_types=("AttnUpBlock2D",) * 3,
        norm_num_groups=32,
        attention_head_dim=32,
        time_embedding_dim=128,
    ),
    # Latent diffusion on the 4x7x7 latents of training/train_autoencoder.py: 7 cannot be halved, so one
    # level of ResNets with self-attention at 7x7 (49 positions), a mid block, and the mirrored up level.
    "latent-small": dict(
        block_out_channels=(96,),
        layers_per_block=2,
        down_block_types=("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",),
        norm_num_groups=32,
        attention_head_dim=32,
    ),
    "latent-tiny": dict(
        block_out_channels=(32,),
        layers_per_block=1,
        down_block_types=("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",),
        norm_num_groups=8,
        attention_head_dim=16,
        time_embedding_dim=32,
    ),
}


def unet_config(
    preset: str,
    sample_size: int = 28,
    in_channels: int = 1,
    out_channels: int | None = None,
    attention_levels: list[bool] | None = None,
    variance_type: str = "fixed_small",
    **overrides: Any,
) -> dict[str, Any]:
    """Returns the `UNet2DModel` keyword arguments of a preset for the given image geometry.

    Args:
        preset: a key of `PRESETS`.
        sample_size: height and width of the images; must survive the preset's downsamplings.
        in_channels: image channels (1 for MNIST and the textures, 3 for RGB).
        out_channels: defaults to `in_channels` (epsilon, v and x_0 all have the image's shape), twice that
            for a learned `variance_type`.
        attention_levels: one flag per resolution level, from the image size down: whether its down and
            up blocks hold self-attention (the mid block always does). None keeps the preset's.
        variance_type: the scheduler's (`diffusion.variance_type`): `learned` and `learned_range` models
            output the prediction and then the variances, 2 x `in_channels` channels, which the scheduler
            splits (Nichol & Dhariwal 2021).
        overrides: any other `UNet2DModel` argument, e.g. `dropout=0.1`, `block_out_channels=[16, 32, 64]`.
    """
    if preset not in PRESETS:
        raise ValueError(f"model.preset {preset!r} is unknown: choose one of {list(PRESETS)}")
    config = {**PRESETS[preset], **overrides}
    levels = len(config["block_out_channels"])
    if attention_levels is None:
        attention_levels = [kind.startswith("Attn") for kind in config["down_block_types"]]
    if len(attention_levels) != levels:
        raise ValueError(
            f"model.attention_levels has {len(attention_levels)} entries for {levels} resolution levels "
            f"(block_out_channels {list(config['block_out_channels'])}): give one true/false per level"
        )
    config["down_block_types"] = tuple(f"{'Attn' if a else ''}DownBlock2D" for a in attention_levels)
    config["up_block_types"] = tuple(f"{'Attn' if a else ''}UpBlock2D" for a in reversed(attention_levels))
    groups = config["norm_num_groups"]
    if any(c % groups for c in config["block_out_channels"]):
        raise ValueError(
            f"model.block_out_channels {list(config['block_out_channels'])} must be multiples of the "
            f"{preset!r} preset's norm_num_groups ({groups})"
        )
    num_down = len(config["block_out_channels"]) - 1
    factor = 2**num_down
    if sample_size < factor or sample_size % factor:
        lower = max(factor, sample_size // factor * factor)
        raise ValueError(
            f"image size {sample_size} cannot be halved {num_down} times by the {preset!r} UNet "
            f"(the skip connections would not line up): use a multiple of {factor}, "
            f"such as {lower} or {lower + factor}, for dataset.image_size"
        )
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels
        or in_channels * (2 if variance_type in ("learned", "learned_range") else 1),
        **config,
    )


def build_unet(preset: str, sample_size: int = 28, in_channels: int = 1, **overrides: Any):
    """A freshly initialised `diffusers.UNet2DModel` from a preset (see `unet_config`; `variance_type=` sets
    the output channels of learned variances)."""
    from diffusers import UNet2DModel

    config = unet_config(preset, sample_size, in_channels, **overrides)
    config["block_out_channels"] = tuple(config["block_out_channels"])
    return UNet2DModel(**config)


def load_pretrained_weights(unet, source: str) -> None:
    """Copies the weights of the UNet in `source` (a pipeline folder or Hub repo, its `unet/` subfolder) into
    `unet`, which must have the same shape. The one exception: a class-conditional `unet` may start from an
    unconditional UNet; its class embedding is set to zero, so every class, the null class included, starts as
    the unconditional model and guidance starts as a no-op."""
    import torch
    from diffusers import UNet2DModel

    name = "model.pretrained_model_name_or_path"
    try:
        pretrained = UNet2DModel.from_pretrained(source, subfolder="unet", use_safetensors=True).state_dict()
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{name} {source!r} holds no UNet2DModel in unet/: give an exported pipeline (safetensors)"
        ) from err
    ours = unet.state_dict()
    missing = set(ours) - set(pretrained) - {"class_embedding.weight"}
    different = sorted(
        (set(pretrained) - set(ours))
        | missing
        | {k for k in set(ours) & set(pretrained) if ours[k].shape != pretrained[k].shape}
    )
    if different:
        raise ValueError(
            f"{name} {source!r} has a UNet of another shape ({len(different)} tensors differ, first "
            f"{different[0]!r}): set model.preset and its shape keys to the pretrained model's"
        )
    unet.load_state_dict(pretrained, strict=False)
    if "class_embedding.weight" not in pretrained and "class_embedding.weight" in ours:
        torch.nn.init.zeros_(unet.class_embedding.weight)
