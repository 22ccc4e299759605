"""Latent diffusion: the self-contained `pipelines/latent_ddpm.py` on a tiny VAE (28x28 images <-> 4x7x7
latents) and tiny UNets on its latents, checked against sampling loops written out by hand, and loaded
back by stock diffusers with hf_ddpm blocked."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)
from PIL import Image

from hf_ddpm.pipelines.latent_ddpm import LatentDDPMPipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILE = REPO / "pipelines" / "latent_ddpm.py"
SCALE = 0.37  # the VAE's scaling_factor: far from 1, so a missing or inverted unscale shows
NAMES = ["cat", "dog", "bird"]
NULL = len(NAMES)
STEPS = 8


def tiny_vae(channels: int = 1, seed: int = 0) -> AutoencoderKL:
    """Three encoder blocks, two of which halve: 28x28x`channels` images <-> 4x7x7 latents."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=28,
    )
    vae.register_to_config(scaling_factor=SCALE)
    return vae.eval()


def tiny_unet(num_class_embeds: int | None = None, sample_size=7, seed: int = 1) -> UNet2DModel:
    """One block each way: 7 cannot be halved."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",),
        block_out_channels=(32,),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )
    return unet.eval()


def quiet(pipe: LatentDDPMPipeline) -> LatentDDPMPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def uncond() -> LatentDDPMPipeline:
    return quiet(LatentDDPMPipeline(tiny_vae(), tiny_unet(), DDPMScheduler()))


@pytest.fixture(scope="module")
def cond() -> LatentDDPMPipeline:
    unet = tiny_unet(num_class_embeds=len(NAMES) + 1)
    return quiet(LatentDDPMPipeline(tiny_vae(), unet, DDPMScheduler(), id2label=dict(enumerate(NAMES))))


def by_hand(pipe, batch: int = 0, labels=None, w: float = 1.0, steps: int = STEPS, seed: int = 0):
    """The latents of sampling written out: noise * init_noise_sigma, then scale_model_input / UNet / step;
    with labels, separate conditional and null-class forwards and the guidance mix."""
    unet, scheduler = pipe.unet, pipe.scheduler
    generator = torch.Generator().manual_seed(seed)
    n = batch if labels is None else len(labels)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    z = torch.randn((n, 4, height, width), generator=generator)
    scheduler.set_timesteps(steps)
    z = z * scheduler.init_noise_sigma  # after set_timesteps: sigma-space schedulers derive it from there
    with torch.no_grad():
        for t in scheduler.timesteps:
            z_in = scheduler.scale_model_input(z, t)
            if labels is None:
                eps = unet(z_in, t).sample
            else:
                y, null = torch.tensor(labels), torch.full((n,), NULL)
                conditional = unet(z_in, t, class_labels=y).sample
                unconditional = unet(z_in, t, class_labels=null).sample
                eps = unconditional + w * (conditional - unconditional)
            z = scheduler.step(eps, t, z, generator=generator).prev_sample
    return z


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        image = vae.decode(latents).sample
    return (image.clamp(-1, 1) + 1) / 2


def sample(pipe, seed: int = 0, output_type: str = "pt", **kwargs):
    generator = torch.Generator().manual_seed(seed)
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(generator=generator, output_type=output_type, **kwargs).images


def test_the_vae_maps_28x28_images_to_4x7x7_latents_and_back():
    vae = tiny_vae()
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0))
        decoded = vae.decode(latents).sample
    assert latents.shape == (2, 4, 7, 7)
    assert decoded.shape == (2, 1, 28, 28)
    assert vae.config.scaling_factor == SCALE


def test_output_types_have_the_documented_shapes_and_range(uncond):
    np_images = sample(uncond, batch_size=3, output_type="np")
    assert isinstance(np_images, np.ndarray) and np_images.shape == (3, 28, 28, 1)
    assert np_images.dtype == np.float32 and 0 <= np_images.min() and np_images.max() <= 1
    assert np_images.std() > 0  # not a constant image

    pt_images = sample(uncond, batch_size=3, output_type="pt")
    assert isinstance(pt_images, torch.Tensor) and pt_images.shape == (3, 1, 28, 28)
    assert 0 <= pt_images.min() and pt_images.max() <= 1
    np.testing.assert_allclose(pt_images.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)

    pil_images = sample(uncond, batch_size=3, output_type="pil")
    assert len(pil_images) == 3
    assert all(isinstance(im, Image.Image) and im.mode == "L" and im.size == (28, 28) for im in pil_images)

    latents = sample(uncond, batch_size=3, output_type="latent")
    assert latents.shape == (3, 4, 7, 7)

    assert len(sample(uncond, num_inference_steps=2, output_type="pil")) == 1  # batch_size defaults to 1
    images = uncond(num_inference_steps=2, output_type="np", return_dict=False)
    assert isinstance(images, tuple) and images[0].shape == (1, 28, 28, 1)


def test_rgb_vae_and_rectangular_latents():
    """sample_size (height, width) and a 3-channel VAE: 7x5 latents decode to 28x20 RGB images."""
    pipe = quiet(LatentDDPMPipeline(tiny_vae(channels=3), tiny_unet(sample_size=(7, 5)), DDPMScheduler()))
    assert sample(pipe, batch_size=2, output_type="latent", num_inference_steps=2).shape == (2, 4, 7, 5)
    assert sample(pipe, batch_size=2, output_type="np", num_inference_steps=2).shape == (2, 28, 20, 3)
    pil_images = sample(pipe, batch_size=2, output_type="pil", num_inference_steps=2)
    assert [(im.mode, im.size) for im in pil_images] == [("RGB", (20, 28))] * 2


def test_unconditional_sampling_matches_the_loop_by_hand_and_unscales_before_decoding(uncond):
    latents = by_hand(uncond, batch=3, seed=4)
    torch.testing.assert_close(
        sample(uncond, seed=4, batch_size=3, output_type="latent"), latents, rtol=0, atol=1e-5
    )
    expected = decode(uncond.vae, latents / SCALE)
    images = sample(uncond, seed=4, batch_size=3)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    # The check has teeth: decoding without the unscale, or multiplying by the factor, gives other images.
    for wrong in (latents, latents * SCALE):
        assert (decode(uncond.vae, wrong) - expected).abs().max() > 1e-3


def test_a_list_of_generators_makes_each_image_reproducible_on_its_own(uncond):
    generators = [torch.Generator().manual_seed(s) for s in (10, 11)]
    pair = uncond(batch_size=2, generator=generators, num_inference_steps=STEPS, output_type="pt").images
    for i, seed in enumerate((10, 11)):
        torch.testing.assert_close(pair[i : i + 1], sample(uncond, seed=seed), rtol=0, atol=1e-5)


@pytest.mark.parametrize("w", [0, 1, 3])
def test_guidance_matches_the_definition(cond, w):
    """w = 0: the null-class model alone; w = 1: the conditional model alone; w = 3: the mix of both, whose
    two predictions the pipeline computes in one batched forward."""
    labels = [2, 0, 1, 2]
    expected = decode(cond.vae, by_hand(cond, labels=labels, w=w, seed=5) / SCALE)
    images = sample(cond, seed=5, class_labels=labels, guidance_scale=w)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_guidance_changes_the_images(cond):
    images = [sample(cond, class_labels=[0, 1, 2], guidance_scale=w) for w in (0, 1, 3)]
    assert (images[0] - images[1]).abs().max() > 1e-3 and (images[1] - images[2]).abs().max() > 1e-3


def test_the_unet_sees_the_null_class_or_the_labels_in_one_forward_per_step(cond):
    seen = []
    hook = cond.unet.class_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        for w in (0, 1, 4):
            seen.clear()
            sample(cond, class_labels=[0, "dog", 2], guidance_scale=w, num_inference_steps=3)
            assert len(seen) == 3
            for labels in seen:
                if w == 0:
                    assert labels.tolist() == [NULL] * 3
                elif w == 1:
                    assert labels.tolist() == [0, 1, 2]
                else:  # conditional half, then the null half of the batched forward of 2B
                    assert labels.tolist() == [0, 1, 2] + [NULL] * 3
    finally:
        hook.remove()


def test_labels_by_name_and_by_index_agree(cond):
    a = sample(cond, class_labels=["bird", 0, "dog"])
    b = sample(cond, class_labels=[2, "cat", 1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, sample(cond, class_labels=[2, 0, 0]))
    torch.testing.assert_close(sample(cond, class_labels="dog"), sample(cond, class_labels=1), rtol=0, atol=0)
    assert cond.labels == {"cat": 0, "dog": 1, "bird": 2} and cond.null_class == NULL


def test_default_names_are_the_indices_as_strings():
    pipe = quiet(LatentDDPMPipeline(tiny_vae(), tiny_unet(num_class_embeds=3), DDPMScheduler()))
    assert pipe.labels == {"0": 0, "1": 1}
    torch.testing.assert_close(
        sample(pipe, class_labels=["1", 0], num_inference_steps=2),
        sample(pipe, class_labels=[1, "0"], num_inference_steps=2),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("label", [NULL, -1, "fish", True, 1.0, "null"])
def test_invalid_labels_are_refused_with_the_valid_ones(cond, label):
    with pytest.raises(
        ValueError, match=r"not a class of this model: use an index 0\.\.2 or a name \('cat', 'dog', 'bird'\)"
    ):
        cond(class_labels=[1, label], num_inference_steps=1)


def test_bad_conditional_calls_are_refused(cond):
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        cond(class_labels=[1], guidance_scale=-0.5, num_inference_steps=1)
    with pytest.raises(ValueError, match="class_labels is empty"):
        cond(class_labels=[], num_inference_steps=1)
    with pytest.raises(ValueError, match="the UNet is class-conditional: give class_labels"):
        cond(num_inference_steps=1)
    with pytest.raises(ValueError, match="the UNet is class-conditional: give class_labels"):
        cond(batch_size=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="batch_size=3 but 2 class labels"):
        cond(batch_size=3, class_labels=[0, 1], num_inference_steps=1)
    assert sample(cond, batch_size=2, class_labels=[0, 1], num_inference_steps=1).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="class labels go in class_labels="):
        cond([0, 1], num_inference_steps=1)  # labels passed where batch_size goes


def test_bad_unconditional_calls_are_refused(uncond):
    with pytest.raises(ValueError, match="class_labels were given but the UNet is unconditional"):
        uncond(class_labels=[0], num_inference_steps=1)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        uncond(guidance_scale=-1, num_inference_steps=1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            uncond(batch_size=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type must be"):
        uncond(output_type="latents", num_inference_steps=1)
    with pytest.raises(ValueError, match="no null class"):
        uncond.null_class  # noqa: B018
    assert uncond.labels == {} and uncond.num_classes == 0 and not uncond.is_conditional


def test_bad_components_are_refused():
    with pytest.raises(ValueError, match="UNet has no class embedding"):
        LatentDDPMPipeline(tiny_vae(), tiny_unet(), DDPMScheduler(), id2label={0: "cat"})
    with pytest.raises(ValueError, match=r"id2label must name the classes 0\.\.2"):
        LatentDDPMPipeline(tiny_vae(), tiny_unet(num_class_embeds=4), DDPMScheduler(), id2label={0: "a"})
    with pytest.raises(ValueError, match="number of classes \\+ 1"):
        LatentDDPMPipeline(tiny_vae(), tiny_unet(num_class_embeds=1), DDPMScheduler())
    unet = UNet2DModel(
        sample_size=7,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        block_out_channels=(8,),
        norm_num_groups=8,
    )
    with pytest.raises(ValueError, match="the UNet takes 3 channels but the VAE's latents have 4"):
        LatentDDPMPipeline(tiny_vae(), unet, DDPMScheduler())


def load(folder: Path) -> LatentDDPMPipeline:
    """Assembles a saved pipeline from its components with this repo's class, as hf_ddpm does: any
    `from_pretrained` of the folder would execute the `latent_ddpm.py` copy beside the weights instead."""
    return LatentDDPMPipeline(
        AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True),
        UNet2DModel.from_pretrained(folder, subfolder="unet", use_safetensors=True),
        DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        id2label=json.loads((folder / "model_index.json").read_text())["id2label"],
    )


def test_save_and_load_round_trip(cond, uncond, tmp_path):
    for name, pipe, kwargs in [
        ("cond", cond, {"class_labels": ["bird", 0], "guidance_scale": 2.5}),
        ("uncond", uncond, {"batch_size": 2}),
    ]:
        folder = tmp_path / name
        pipe.save_pretrained(folder)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == ["latent_ddpm", "LatentDDPMPipeline"]
        assert (folder / "latent_ddpm.py").read_bytes() == PIPELINE_FILE.read_bytes()
        assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == SCALE
        loaded = quiet(load(folder))
        assert isinstance(loaded, LatentDDPMPipeline)
        assert loaded.vae.config.scaling_factor == SCALE
        assert loaded.labels == pipe.labels and loaded.is_conditional == pipe.is_conditional
        torch.testing.assert_close(sample(loaded, **kwargs), sample(pipe, **kwargs), rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "uncond" / "model_index.json").read_text())["id2label"] is None
    assert json.loads((tmp_path / "cond" / "model_index.json").read_text())["id2label"] == {
        "0": "cat",
        "1": "dog",
        "2": "bird",
    }


# Stock diffusers alone, hf_ddpm blocked: loads each export as remote code and samples it.
STOCK = textwrap.dedent(
    """
    import inspect, json, sys
    sys.modules["hf_ddpm"] = None
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    report = {}
    for name, folder, out in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
        try:
            DiffusionPipeline.from_pretrained(folder)
        except ValueError as err:
            assert "trust_remote_code=True" in str(err), err
        else:
            raise SystemExit("custom code ran without trust_remote_code")
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        if pipe.config.id2label:
            kwargs = {"class_labels": ["bird", 0], "guidance_scale": 2.5}
        else:
            kwargs = {"batch_size": 2}
        images = pipe(num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np",
                      **kwargs).images
        np.save(out, images)
        report[name] = {"class": type(pipe).__name__, "file": inspect.getfile(type(pipe)),
                        "id2label": pipe.config.id2label, "scaling_factor": pipe.vae.config.scaling_factor}
    print(json.dumps(report))
    """
)


def test_stock_diffusers_loads_the_export_with_its_pipeline_file(cond, uncond, tmp_path):
    args = []
    for name, pipe in [("cond", cond), ("uncond", uncond)]:
        pipe.save_pretrained(tmp_path / name)
        args += [name, tmp_path / name, tmp_path / f"{name}.npy"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", STOCK, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, pipe, kwargs in [
        ("cond", cond, {"class_labels": ["bird", 0], "guidance_scale": 2.5}),
        ("uncond", uncond, {"batch_size": 2}),
    ]:
        info = report[name]
        assert info["class"] == "LatentDDPMPipeline" and info["scaling_factor"] == SCALE
        assert not Path(info["file"]).resolve().is_relative_to(REPO)  # the copy beside the weights ran
        ids = {int(k): v for k, v in (info["id2label"] or {}).items()}
        assert ids == {i: n for n, i in pipe.labels.items()}
        expected = sample(pipe, num_inference_steps=6, output_type="np", **kwargs)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, atol=1e-5)


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_other_schedulers_give_finite_images(cond, uncond, scheduler_class):
    for pipe, kwargs in [(uncond, {"batch_size": 2}), (cond, {"class_labels": [0, 2], "guidance_scale": 3})]:
        swapped = quiet(
            LatentDDPMPipeline(
                pipe.vae,
                pipe.unet,
                scheduler_class.from_config(pipe.scheduler.config),
                id2label=pipe.config.id2label,
            )
        )
        latents = sample(swapped, output_type="latent", num_inference_steps=6, **kwargs)
        # The UNet is untrained, so its predictions need not keep the latents small: finite is the claim.
        assert latents.shape == (2, 4, 7, 7) and torch.isfinite(latents).all()
        images = sample(swapped, output_type="np", num_inference_steps=6, **kwargs)
        assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
        assert 0 <= images.min() and images.max() <= 1


def test_a_sigma_space_scheduler_gets_scaled_noise_and_inputs(uncond):
    """Euler starts from noise * sigma_max and divides the UNet's input by sqrt(sigma^2 + 1): the pipeline
    must do both, as the loop by hand does."""
    euler = EulerDiscreteScheduler.from_config(uncond.scheduler.config)
    pipe = quiet(LatentDDPMPipeline(uncond.vae, uncond.unet, euler))
    latents = by_hand(pipe, batch=2, seed=3)
    assert euler.init_noise_sigma > 1.5
    torch.testing.assert_close(
        sample(pipe, seed=3, batch_size=2, output_type="latent"), latents, rtol=0, atol=1e-4
    )
