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


# Each preset as its documentation describes it, spelled out here apart from hf_ddpm.models.PRESETS.
PLAIN, ATTN_7 = ("DownBlock2D",) * 2, ("AttnDownBlock2D",)
DOCUMENTED = {
    "tiny": dict(block_out_channels=(16, 16, 32), layers_per_block=1, down=PLAIN + ATTN_7, norm_num_groups=8,
                 attention_head_dim=16, time_embedding_dim=32),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, down=PLAIN + ATTN_7, norm_num_groups=8,
                  attention_head_dim=32),
    "cpu": dict(block_out_channels=(24, 48, 96), layers_per_block=1, down=PLAIN + ATTN_7, norm_num_groups=8,
                attention_head_dim=32),
    "tutorial": dict(block_out_channels=(64, 128, 256), layers_per_block=2, down=("AttnDownBlock2D",) * 3,
                     norm_num_groups=32, attention_head_dim=32, time_embedding_dim=128),
    "latent-small": dict(block_out_channels=(96,), layers_per_block=2, down=ATTN_7, norm_num_groups=32,
                         attention_head_dim=32),
    "latent-tiny": dict(block_out_channels=(32,), layers_per_block=1, down=ATTN_7, norm_num_groups=8,
                        attention_head_dim=16, time_embedding_dim=32),
}  # fmt: skip


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_each_preset_is_the_documented_stock_unet(preset, channels):
    """build_unet(preset) computes exactly what a stock UNet2DModel built from the documented arguments does,
    at the same seed: same parameters, same output."""
    size = 7 if preset.startswith("latent") else 28
    spec = dict(DOCUMENTED[preset])
    down = spec.pop("down")
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    torch.manual_seed(0)
    ours = build_unet(preset, size, channels)
    torch.manual_seed(0)
    stock = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, down_block_types=down,
                        up_block_types=up, **spec)  # fmt: skip
    x, t = torch.randn(2, channels, size, size), torch.tensor([0, 999])
    assert n_params(ours) == n_params(stock)
    out = ours(x, t).sample
    assert out.shape == x.shape and torch.equal(out, stock(x, t).sample)


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
