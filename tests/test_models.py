import json

import pytest
import torch
from diffusers import UNet2DModel

from hf_ddpm.models import PRESETS, build_unet, unet_config


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    assert n_params(build_unet("tiny")) < 200_000
    assert 0.8e6 < n_params(build_unet("small")) < 1.3e6


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_keeps_image_shape(preset, channels):
    model = build_unet(preset, 28, channels)
    x = torch.randn(2, channels, 28, 28)
    out = model(x, torch.tensor([0, 999])).sample
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def _has_attention(block):
    return bool(getattr(block, "attentions", None))


def test_small_attends_only_at_7x7_and_mid():
    model = build_unet("small")
    assert [_has_attention(b) for b in model.down_blocks] == [False, False, True]
    assert [_has_attention(b) for b in model.up_blocks] == [True, False, False]
    assert _has_attention(model.mid_block)
    assert [len(b.resnets) for b in model.down_blocks] == [1, 1, 1]
    assert model.config.block_out_channels == (32, 64, 64)


def test_tutorial_attends_everywhere():
    model = build_unet("tutorial")
    assert all(_has_attention(b) for b in [*model.down_blocks, model.mid_block, *model.up_blocks])
    assert [len(b.resnets) for b in model.down_blocks] == [2, 2, 2]
    assert model.time_embedding.linear_2.out_features == 128
    assert model.config.block_out_channels == (64, 128, 256)


def test_shape_overrides_build_the_same_network_as_stock_unet2dmodel():
    """block_out_channels, layers_per_block and attention_levels change the preset exactly as the same
    arguments given to a stock UNet2DModel do: same modules, same parameter count, same output."""
    changes = {
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 2,
        "attention_levels": [False, True, True],
    }
    torch.manual_seed(0)
    ours = build_unet("small", 28, 1, **changes)
    torch.manual_seed(0)
    stock = UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=32,
    )
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 900])
    assert n_params(ours) == n_params(stock)
    assert torch.equal(ours(x, t).sample, stock(x, t).sample)


def test_cpu_preset_doubles_width_as_resolution_halves():
    model = build_unet("cpu")
    assert model.config.block_out_channels == (24, 48, 96)
    assert [_has_attention(b) for b in model.down_blocks] == [False, False, True]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"attention_levels": [True, False]}, r"2 entries for 3 resolution levels"),
        ({"block_out_channels": [12, 32, 64]}, r"multiples of the 'small' preset's norm_num_groups \(8\)"),
    ],
)
def test_shape_overrides_that_cannot_build_fail_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message):
        unet_config("small", **changes)


def test_config_is_plain_unet2dmodel_config(tmp_path):
    model = build_unet("tiny")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = UNet2DModel.from_pretrained(tmp_path)
    public = [k for k in model.config if not k.startswith("_")]
    assert json.dumps({k: reloaded.config[k] for k in public}) == json.dumps(
        {k: model.config[k] for k in public}
    )
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("size, suggestion", [(30, "28 or 32"), (6, "4 or 8"), (2, "4 or 8")])
def test_indivisible_sample_size_fails_when_config_is_built(size, suggestion):
    with pytest.raises(ValueError, match=f"image size {size}.*multiple of 4, such as {suggestion}"):
        unet_config("small", sample_size=size)


def test_unknown_preset():
    with pytest.raises(
        ValueError, match=r"model.preset 'huge'.*\['tiny', 'small', 'cpu', 'tutorial', 'latent-"
    ):
        unet_config("huge")
