"""Class-conditional DDPM with classifier-free guidance: training on real MNIST through `accelerate launch`,
the self-contained pipeline file, and loading it back with and without hf_ddpm."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from hf_ddpm.launch import accelerate_launch
from hf_ddpm.metrics import within_class_spread
from hf_ddpm.models import build_unet, load_pretrained_weights
from hf_ddpm.pipeline import balanced_labels, load_pipeline
from hf_ddpm.pipelines.class_conditional_ddpm import ClassConditionalDDPMPipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILE = REPO / "pipelines" / "class_conditional_ddpm.py"
TRAIN = [str(REPO / "training" / "train.py"), "--config", str(REPO / "training" / "configs" / "tiny.yaml")]
DIGITS = [str(i) for i in range(10)]
NULL = 10


def run(cmd, cwd, ok=True, **env):
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True
    )
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_args(out: Path, mnist_dir: Path, *extra: str) -> list:
    return [*TRAIN, "--model.class_conditional", "true", "--dataset.path", mnist_dir,
            "--dataset.max_samples", "512", "--training.max_train_steps", "30",
            "--training.mixed_precision", "auto", "--training.checkpointing_steps", "10",
            "--training.checkpoints_total_limit", "null", "--training.num_sample_images", "20",
            "--training.num_inference_steps", "5", "--training.output_dir", out, *extra]  # fmt: skip


def class_accuracy(model: Path, num_images: int, steps: int, guidance_scale: float) -> float:
    """The fraction of DPM-Solver samples (seed 0) that the MNIST classifier files under the class asked for,
    computed here from the images: what the metric claims to measure."""
    from hf_ddpm.classifier import load_classifier, predict
    from hf_ddpm.evaluate import sample_for_scoring

    pipeline = load_pipeline(model, "dpm-solver")
    images, asked = sample_for_scoring(pipeline, num_images, steps, 0, guidance_scale=guidance_scale)
    assert asked.tolist() == [i % 10 for i in range(num_images)]  # every digit in turn
    _, probs = predict(load_classifier("mnist"), images)
    return (probs.argmax(-1) == asked).double().mean().item()


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, mnist_dir):
    """The tiny preset with 10 digit classes + the null class, 30 steps on 512 real MNIST digits, `auto`
    precision and EMA, launched by `accelerate launch`, scored by the MNIST classifier at the last step."""
    out = tmp_path_factory.mktemp("cond") / "ddpm-cfg"
    extra = ["--training.eval_every", "30", "--training.eval_num_images", "40",
             "--training.eval_num_inference_steps", "5"]  # fmt: skip
    run(accelerate_launch(*train_args(out, mnist_dir, *extra), mixed_precision="bf16"), cwd=out.parent)
    return out


@pytest.fixture(scope="module")
def pipeline(cond_run):
    pipe = load_pipeline(cond_run, "ddpm")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def by_hand(pipe, labels: list[int], w: float, steps: int, seed: int) -> torch.Tensor:
    """Guided ancestral sampling written out: separate conditional and null-class forwards, then the mix."""
    unet, scheduler = pipe.unet, pipe.scheduler
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 1, 28, 28), generator=generator)
    y, null = torch.tensor(labels), torch.full((len(labels),), NULL)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            if w == 0:
                eps = unet(x, t, class_labels=null).sample
            elif w == 1:
                eps = unet(x, t, class_labels=y).sample
            else:
                conditional, unconditional = (
                    unet(x, t, class_labels=y).sample,
                    unet(x, t, class_labels=null).sample,
                )
                eps = unconditional + w * (conditional - unconditional)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def sample(pipe, labels, w: float, steps: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        labels, guidance_scale=w, num_inference_steps=steps, generator=generator, output_type="pt"
    ).images


def test_training_exports_the_guided_pipeline_with_the_class_names_of_the_data(cond_run):
    index = json.loads((cond_run / "model_index.json").read_text())
    assert index["_class_name"] == ["class_conditional_ddpm", "ClassConditionalDDPMPipeline"]
    assert index["id2label"] == {str(i): name for i, name in enumerate(DIGITS)}  # MNIST's ClassLabel names
    assert (cond_run / "class_conditional_ddpm.py").read_bytes() == PIPELINE_FILE.read_bytes()
    assert json.loads((cond_run / "unet" / "config.json").read_text())["num_class_embeds"] == 11
    with Image.open(cond_run / "samples.png") as grid:
        assert grid.size == (2 + 10 * 30, 2 + 2 * 30)  # one column per digit
    record = json.loads((cond_run / "eval_log.jsonl").read_text().splitlines()[-1])
    # best/ holds the weights that step scored; the same protocol sampled again gives the same accuracy.
    assert record["step"] == 30 and json.loads((cond_run / "best" / "eval.json").read_text())["step"] == 30
    assert record["class_accuracy"] == pytest.approx(class_accuracy(cond_run / "best", 40, 5, 2.0), abs=1e-6)
    assert json.loads((cond_run / "eval.json").read_text())["protocol"]["guidance_scale"] == 2.0
    card = (cond_run / "README.md").read_text()
    assert "trust_remote_code=True" in card and "labels = [" in card and "| Conditioning |" in card
    assert "diffusers:ClassConditionalDDPMPipeline" in card


def test_resume_with_label_dropout_continues_exactly(cond_run, tmp_path, mnist_dir):
    """Label dropout draws from the checkpointed generator: resuming at step 20 gives the same weights.
    Launched the same way as the first run: bitwise equality also needs the same CPU thread count."""
    resumed = tmp_path / "resumed"
    shutil.copytree(cond_run / "checkpoint-20", resumed / "checkpoint-20")
    run(
        accelerate_launch(
            *train_args(resumed, mnist_dir, "--training.resume_from_checkpoint", "latest"),
            mixed_precision="bf16",
        ),
        tmp_path,
    )
    for name in ["model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"]:
        a, b = load_file(cond_run / "checkpoint-30" / name), load_file(resumed / "checkpoint-30" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("w", [0, 1, 3])
def test_guidance_matches_the_definition(pipeline, w):
    """w = 0: the null-class model alone; w = 1: the conditional model alone; w = 3: the mix of both, whose
    two predictions the pipeline computes in one batched forward."""
    labels = [3, 7, 0, 9]
    expected = by_hand(pipeline, labels, w, steps=8, seed=5)
    np.testing.assert_allclose(sample(pipeline, labels, w, seed=5), expected, atol=1e-4)


def test_guidance_changes_the_images(pipeline):
    labels = [1, 2, 3, 4]
    images = [sample(pipeline, labels, w) for w in (0, 1, 5)]
    assert all((a - b).abs().max() > 1e-3 for a, b in [(images[0], images[1]), (images[1], images[2])])


def test_labels_by_name_and_by_index_agree(pipeline):
    named = ClassConditionalDDPMPipeline(
        pipeline.unet, DDIMScheduler.from_config(pipeline.scheduler.config), id2label=dict(enumerate(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    )  # fmt: skip
    named.set_progress_bar_config(disable=True)
    a = sample(named, ["three", 7, "nine"], 2.0)
    b = sample(named, [3, "seven", 9], 2.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, sample(named, [3, 6, 9], 2.0))
    # The model's own names are the digits' strings: "3" is class 3.
    torch.testing.assert_close(
        sample(pipeline, ["3", 7], 2.0), sample(pipeline, [3, "7"], 2.0), rtol=0, atol=0
    )


@pytest.mark.parametrize("label", [NULL, -1, "ten", True, 3.0, "null"])
def test_invalid_labels_are_refused_with_the_valid_ones(pipeline, label):
    with pytest.raises(
        ValueError, match=r"not a class of this model: use an index 0\.\.9 or a name \('0', '1'"
    ):
        pipeline([1, label], num_inference_steps=1)


def test_negative_guidance_and_empty_labels_are_refused(pipeline):
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        pipeline([1], guidance_scale=-0.5, num_inference_steps=1)
    with pytest.raises(ValueError, match="class_labels is empty"):
        pipeline([], num_inference_steps=1)


def test_requested_classes_never_reach_the_unet_as_the_null_class(pipeline):
    seen = []
    hook = pipeline.unet.class_embedding.register_forward_hook(
        lambda m, args, out: seen.append(args[0].clone())
    )
    try:
        for w in (0, 1, 4):
            seen.clear()
            sample(pipeline, [0, 5, 9], w, steps=3)
            assert len(seen) == 3
            for labels in seen:
                if w == 0:
                    assert labels.tolist() == [NULL] * 3
                elif w == 1:
                    assert labels.tolist() == [0, 5, 9]
                else:  # conditional half, then the null half of the batched forward
                    assert labels.tolist() == [0, 5, 9] + [NULL] * 3
    finally:
        hook.remove()
    assert set(balanced_labels(1000, 10).tolist()) == set(range(10))  # what evaluation requests: no null


def test_save_and_load_keep_id2label(tmp_path):
    names = [f"D{i:03d}" for i in range(1, 6)]
    unet = build_unet("tiny", num_class_embeds=len(names) + 1)
    ClassConditionalDDPMPipeline(unet, DDPMScheduler(), id2label=dict(enumerate(names))).save_pretrained(
        tmp_path
    )
    loaded = load_pipeline(tmp_path, "ddim")
    assert isinstance(loaded, ClassConditionalDDPMPipeline)
    assert loaded.labels == {name: i for i, name in enumerate(names)}
    assert loaded.null_class == 5
    with pytest.raises(ValueError, match="'D001', 'D002'"):
        loaded(["D006"], num_inference_steps=1)


def test_a_unet_without_class_embedding_is_refused():
    with pytest.raises(ValueError, match="num_class_embeds = number of classes \\+ 1"):
        ClassConditionalDDPMPipeline(build_unet("tiny"), DDPMScheduler())


# Stock diffusers alone, hf_ddpm blocked: loads the export as remote code and samples it.
STOCK = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_ddpm"] = None
    import numpy as np, torch
    from diffusers import DDIMScheduler, DiffusionPipeline
    model, out = sys.argv[1], sys.argv[2]
    try:
        DiffusionPipeline.from_pretrained(model)
    except ValueError as err:
        assert "trust_remote_code=True" in str(err), err
    else:
        raise SystemExit("custom code ran without trust_remote_code")
    pipe = DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = pipe(class_labels=["3", 7], guidance_scale=2.5, num_inference_steps=6,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    np.save(out, images)
    print(json.dumps({"class": type(pipe).__name__, "id2label": pipe.config.id2label}))
    """
)


def test_stock_diffusers_loads_the_export_with_its_pipeline_file(cond_run, tmp_path):
    env = {"HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = run([sys.executable, "-c", STOCK, cond_run, tmp_path / "stock.npy"], tmp_path, **env)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["class"] == "ClassConditionalDDPMPipeline"
    assert {int(k): v for k, v in info["id2label"].items()} == dict(enumerate(DIGITS))
    ours = load_pipeline(cond_run, "ddim")
    generator = torch.Generator().manual_seed(0)
    expected = ours(["3", 7], 2.5, 6, generator=generator, output_type="np").images
    np.testing.assert_allclose(np.load(tmp_path / "stock.npy"), expected, atol=1e-5)


def test_evaluate_cli_reports_class_accuracy(cond_run, tmp_path):
    out = tmp_path / "eval.json"
    run([sys.executable, "-m", "hf_ddpm.evaluate", "--model", cond_run, "--num-images", "30", "--steps", "4",
         "--guidance-scale", "3", "--out", out], tmp_path)  # fmt: skip
    report = json.loads(out.read_text())
    assert report["protocol"]["guidance_scale"] == 3.0
    assert report["samples"]["class_accuracy"] == pytest.approx(
        class_accuracy(cond_run, 30, 4, 3.0), abs=1e-6
    )
    assert "class_accuracy" not in report["floor"]
    # Without --guidance-scale the pipeline's default applies, and the protocol says which.
    run([sys.executable, "-m", "hf_ddpm.evaluate", "--model", cond_run, "--num-images", "10", "--steps", "2",
         "--out", out], tmp_path)  # fmt: skip
    assert json.loads(out.read_text())["protocol"]["guidance_scale"] == 2.0


def test_class_conditional_needs_a_class_label_column(tmp_path, mnist_dir):
    result = run([sys.executable, *train_args(tmp_path / "x", mnist_dir, "--dataset.label_column", "digit")],
                 tmp_path, ok=False)  # fmt: skip
    assert result.returncode != 0
    assert (
        "error: model.class_conditional needs class labels, but dataset.label_column 'digit'" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_class_conditional_unet_starts_as_the_unconditional_one_it_fine_tunes(tmp_path):
    """Every class, the null class too, starts as the pretrained model: the same output, bit for bit."""
    torch.manual_seed(0)
    plain = build_unet("tiny")
    plain.save_pretrained(tmp_path / "unet")
    conditional = build_unet("tiny", num_class_embeds=11)
    load_pretrained_weights(conditional, str(tmp_path))
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([0, 200, 500, 999])
    with torch.no_grad():
        expected = plain(x, t).sample
        for label in [0, 9, NULL]:
            assert torch.equal(conditional(x, t, class_labels=torch.full((4,), label)).sample, expected)


def test_fine_tuning_never_unpickles_weights(tmp_path):
    build_unet("tiny").save_pretrained(tmp_path / "unet", safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match="holds no UNet2DModel in unet/: give an exported pipeline"):
        load_pretrained_weights(build_unet("tiny"), str(tmp_path))


@pytest.mark.parametrize(
    "preset, message", [("small", "has a UNet of another shape"), (None, "holds no UNet2DModel in unet/")]
)
def test_fine_tuning_from_a_unet_that_does_not_fit_fails_in_one_line(tmp_path, mnist_dir, preset, message):
    pretrained = tmp_path / "pretrained"
    if preset:
        build_unet(preset).save_pretrained(pretrained / "unet")
    args = train_args(tmp_path / "x", mnist_dir, "--model.pretrained_model_name_or_path", pretrained)
    result = run([sys.executable, *args], tmp_path, ok=False)
    assert result.returncode != 0
    assert f"error: model.pretrained_model_name_or_path '{pretrained}' {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_within_class_spread_is_the_per_class_feature_variance():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 8, generator=generator) * 3.0
    classes = torch.arange(4000) % 4
    features[classes == 1] += 100  # far-apart class means do not count, only the spread inside a class
    assert within_class_spread(features, classes) == pytest.approx(8 * 9.0, rel=0.05)
    assert within_class_spread(torch.ones(10, 8), torch.zeros(10, dtype=torch.long)) == 0
