"""The demo's logic (hf_ddpm.demo.actions, hf_ddpm.demo.live) called directly, then the real app in its own
process through the real `gradio_client`: streamed frames, final images equal to the pipeline's, bad input
answered in one line while the server keeps serving, and two users at once each getting their own images."""

import socket
import threading

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'hf-ddpm[demo]'")

from demo_server import REPO, start_demo  # noqa: E402

from hf_ddpm.demo.actions import (  # noqa: E402
    ModelCache,
    draw_frames,
    explore,
    forward_process,
    generate_frames,
    histogram,
    reference_models,
    sketch_to_image,
)
from hf_ddpm.demo.live import Frame, frames  # noqa: E402
from hf_ddpm.pipeline import load_pipeline  # noqa: E402
from hf_ddpm.scheduler import LinearNoiseScheduler  # noqa: E402

CFG = str(REPO / "checkpoints" / "ddpm-mnist-cfg")


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(reference_models())


def run_all(iterator):
    """Every output of a streaming handler, in order."""
    return list(iterator)


def expect_error(call, *parts: str) -> str:
    with pytest.raises(gr.Error) as err:
        call()
    message = err.value.message
    assert "\n" not in message and all(part in message for part in parts), message
    return message


def canvas_with_stroke(rows: slice, cols: slice, size: int = 280) -> dict:
    """A sketchpad value: black canvas, one white rectangle of strokes."""
    composite = np.zeros((size, size, 3), np.uint8)
    composite[rows, cols] = 255
    return {"background": np.zeros_like(composite), "layers": [], "composite": composite}


def test_sketch_becomes_a_28x28_image_and_the_mask_of_its_strokes():
    image, mask = sketch_to_image(canvas_with_stroke(slice(40, 70), slice(50, 230)))
    assert image.shape == mask.shape == (1, 1, 28, 28)
    # Rows 4-6 are fully inked, row 7 not at all; columns 5-22 (canvas 50-229) hold the stroke.
    assert torch.equal(mask[0, 0].nonzero()[:, 0].unique(), torch.tensor([4, 5, 6]))
    assert mask[0, 0, 4, 5:23].all() and not mask[0, 0, 4, :5].any()
    assert image[0, 0, 5, 10] == 1 and image[0, 0, 20, 10] == -1
    # A half-inked block is gray, as a digit's edge is, and below the stroke threshold.
    half = canvas_with_stroke(slice(0, 5), slice(0, 280))
    image, mask = sketch_to_image({**half, "composite": np.maximum(half["composite"], 0)}, threshold=0.3)
    assert image[0, 0, 0, 0] == pytest.approx(0.0) and mask[0, 0, 0, 0] == 1
    for empty in (None, {"composite": None}, canvas_with_stroke(slice(0, 0), slice(0, 0))):
        expect_error(lambda e=empty: sketch_to_image(e), "the sketch is empty: draw a stroke")


def test_forward_process_is_the_closed_form_and_its_statistics():
    x0 = torch.linspace(-1, 1, 784).reshape(1, 1, 28, 28)
    scheduler = LinearNoiseScheduler()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    for t in (1, 250, 1000):
        xt, alpha_bar = forward_process(x0, t, "linear", seed=7)
        assert alpha_bar == pytest.approx(float(scheduler.alphas_cumprod[t - 1]))
        torch.testing.assert_close(
            xt, scheduler.add_noise(x0, noise, torch.tensor([t - 1])), rtol=0, atol=1e-6
        )
    assert torch.equal(forward_process(x0, 0, "linear", 7)[0], x0)
    table = histogram(torch.randn(100_000, generator=torch.Generator().manual_seed(0)))
    measured = table[table.series == "x_t pixels"]["density"].to_numpy()
    normal = table[table.series == "N(0, 1)"]["density"].to_numpy()
    assert measured.sum() * 0.2 == pytest.approx(1, abs=1e-3) and np.abs(measured - normal).max() < 0.01


def test_explorer_reads_real_examples(shared_data):
    from hf_ddpm.demo.actions import Examples

    examples = Examples()
    x0, xt, stats, table = explore(examples, str(shared_data / "mnist"), 7, 1000, "linear", 0)
    assert x0.shape == xt.shape == (28, 28) and x0.dtype == np.uint8
    assert "class 7" in stats and "alpha_bar_t = 0.00004" in stats
    images, names = examples.get(str(shared_data / "mnist"))
    assert names == [str(i) for i in range(10)] and np.array_equal(x0, images[7, 0].numpy())
    x0_again, xt_t0, *_ = explore(examples, str(shared_data / "mnist"), 7, 0, "linear", 0)
    assert np.array_equal(xt_t0, x0_again)  # t = 0 is x_0 itself
    expect_error(lambda: explore(examples, str(shared_data / "mnist"), 7, 1001, "linear", 0), "t must be")
    expect_error(
        lambda: explore(examples, str(shared_data / "mnist"), 7, 5, "cosine", 0), "schedule 'cosine'"
    )


def test_frames_come_in_order_the_last_always_and_errors_surface():
    def run(report):
        for step in range(1, 11):
            report(Frame(step, 10, 10 - step, torch.zeros(1), torch.zeros(1)))
        return "images"

    seen = list(frames(run, every=4))
    assert seen[-1] == "images"
    steps = [f.step for f in seen[:-1]]
    assert steps == sorted(steps) and steps[-1] == 10 and set(steps) <= {1, 4, 8, 10}

    def broken(report):
        raise ValueError("broken model")

    with pytest.raises(ValueError, match="broken model"):
        list(frames(broken))

    # A viewer that leaves stops the sampling at its next step.
    finished = threading.Event()
    released = threading.Event()

    def endless(report):
        try:
            step = 0
            while True:
                step += 1
                report(Frame(step, 10**9, 0, torch.zeros(1), torch.zeros(1)))
                released.wait()
        finally:
            finished.set()

    viewer = frames(endless)
    next(viewer)
    viewer.close()
    released.set()
    assert finished.wait(timeout=60)


@pytest.mark.parametrize(
    "model, sampler, label", [("ddpm-mnist-cfg", "ddpm", "3"), ("flow-mnist", "flow-euler", None)]
)
def test_generate_streams_frames_and_ends_with_the_pipelines_images(cache, model, sampler, label):
    """The streamed run returns what the pipeline returns for the same seed, and its last frame's x_0
    estimate is that image (the last DDPM step returns its x_0 estimate; the last Euler step lands on
    x_t - sigma v)."""
    steps = 10 if sampler == "flow-euler" else 30
    outputs = run_all(generate_frames(cache, model, sampler, steps, 5, 3, label or "", 2.0))
    panels = [o[0] for o in outputs if isinstance(o[0], np.ndarray)]
    assert len(panels) >= 5 and panels[0].shape == (2 + 2 * 30, 2 + 3 * 30)  # x_t row, x_0 row, 3 images
    gallery, status = outputs[-1][1], outputs[-1][2]
    assert "3 images in" in status and "first frame after" in status
    got = np.stack([image for image, _ in gallery])

    pipeline = load_pipeline(str(REPO / "checkpoints" / model), sampler)
    request = {"class_labels": [label] * 3, "guidance_scale": 2.0} if label else {"batch_size": 3}
    expected = pipeline(
        **request, num_inference_steps=steps, generator=torch.Generator().manual_seed(5), output_type="np"
    ).images
    np.testing.assert_array_equal(got, np.round(expected[..., 0] * 255).astype(np.uint8))
    last_x0 = panels[-1][32:60, 2:30]  # the x_0 row's first image
    assert np.abs(last_x0.astype(int) - got[0].astype(int)).max() <= 1
    if label:
        assert [caption for _, caption in gallery] == [label] * 3


def test_bad_input_is_one_line_naming_the_fix(cache):
    def generate(**overrides):
        args = {
            "model": "ddpm-mnist-cfg",
            "sampler": "dpm-solver",
            "steps": 5,
            "seed": 0,
            "num_images": 1,
            "label": "7",
            "guidance_scale": 2.0,
        } | overrides
        return run_all(generate_frames(cache, **args))

    expect_error(lambda: generate(model="no-such-model"), "unknown model 'no-such-model'", "ddpm-mnist-cfg")
    expect_error(lambda: generate(model="/nowhere/model"), "unknown model")
    expect_error(lambda: generate(steps=0), "steps must be a whole number from 1 to 1000, got 0")
    expect_error(lambda: generate(steps=2.5), "steps must be a whole number")
    expect_error(lambda: generate(num_images=0), "number of images must be")
    expect_error(lambda: generate(label="eleven"), "class label 'eleven' is not a class of this model")
    expect_error(lambda: generate(sampler="flow-euler"), "cannot sample a DDPM model")
    expect_error(lambda: generate(model="flow-mnist", sampler="ddpm"), "cannot sample a flow-matching model")

    sketch = canvas_with_stroke(slice(40, 70), slice(50, 230))

    def draw(**overrides):
        args = {
            "sketch": sketch,
            "mode": "Complete it",
            "model": "ddpm-mnist-cfg",
            "label": "7",
            "guidance_scale": 2.0,
            "steps": 5,
            "jump_length": 2,
            "jump_n_sample": 2,
            "strength": 0.5,
            "seed": 0,
            "num_images": 1,
        } | overrides
        return run_all(draw_frames(cache, **args))

    expect_error(lambda: draw(sketch=canvas_with_stroke(slice(0, 0), slice(0, 0))), "the sketch is empty")
    expect_error(lambda: draw(model="ldm-mnist"), "is a latent model: drawing needs a pixel-space DDPM")
    expect_error(lambda: draw(model="flow-mnist"), "is a flow-matching model")
    expect_error(lambda: draw(label="D001"), "not a class of this model")
    expect_error(lambda: draw(mode="Turn it into a digit", strength=0), "strength must lie in (0, 1]")
    expect_error(lambda: draw(steps=0), "steps must be")


def test_draw_keeps_the_strokes_and_sdedit_runs(cache):
    sketch = canvas_with_stroke(slice(40, 70), slice(50, 230))
    image, mask = sketch_to_image(sketch)
    args = {
        "model": "ddpm-mnist",
        "label": "",
        "guidance_scale": 2.0,
        "steps": 10,
        "jump_length": 3,
        "jump_n_sample": 2,
        "strength": 0.6,
        "seed": 1,
        "num_images": 2,
    }
    outputs = run_all(draw_frames(cache, sketch, "Complete it", **args))
    view = outputs[0][0]
    assert view.shape == (28, 56) and view[:, 28:].max() == 255  # the sketch and its mask, side by side
    gallery = outputs[-1][2]
    completed = np.stack([g for g, _ in gallery]).astype(int)
    kept = mask[0, 0].bool().numpy()
    expected = np.round((image[0, 0].numpy() + 1) * 127.5)
    assert np.abs(completed[:, kept] - expected[kept]).max() <= 1
    assert any(isinstance(o[1], np.ndarray) for o in outputs[1:-1])  # frames were streamed

    outputs = run_all(draw_frames(cache, sketch, "Turn it into a digit", **args))
    assert "2 images in" in outputs[-1][3]


# -- The app in its own process, through gradio_client ----------------------------------------------------


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def app(tmp_path_factory, shared_data):
    home = tmp_path_factory.mktemp("hf-home")
    env = {"HF_DDPM_DATA_DIR": str(shared_data), "HF_ENDPOINT": closed_port_url(), "HF_HOME": str(home)}
    server = start_demo(home, [], env)
    yield server
    server.stop()


def test_two_users_at_once_each_get_their_own_streamed_images(app):
    from gradio_client import Client
    from PIL import Image

    requests = {"3": 11, "8": 12}
    jobs = {}
    for label, seed in requests.items():  # two clients, both submitted before either finishes
        jobs[label] = Client(app.url, verbose=False).submit(
            "ddpm-mnist-cfg", "dpm-solver", 20, seed, 2, label, 2.0, api_name="/generate"
        )
    pipeline = load_pipeline(CFG, "dpm-solver")
    for label, seed in requests.items():
        job = jobs[label]
        final = job.result()
        assert len(job.outputs()) >= 3, "frames were streamed before the images"
        got = np.stack([np.asarray(Image.open(item["image"])) for item in final[1]])
        generator = torch.Generator().manual_seed(seed)
        expected = pipeline(
            class_labels=[label] * 2,
            guidance_scale=2.0,
            num_inference_steps=20,
            generator=generator,
            output_type="np",
        ).images
        np.testing.assert_array_equal(got, np.round(expected[..., 0] * 255).astype(np.uint8))
        assert [item["caption"] for item in final[1]] == [label] * 2


def test_bad_requests_get_one_line_and_the_server_keeps_serving(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app.url, verbose=False)
    bad = [
        (("no-such-model", "dpm-solver", 5, 0, 1, "7", 2.0), "unknown model 'no-such-model'"),
        (
            ("org/missing", "dpm-solver", 5, 0, 1, "7", 2.0),
            "cannot load model 'org/missing': cannot reach the Hub",
        ),
        (("ddpm-mnist-cfg", "dpm-solver", 0, 0, 1, "7", 2.0), "steps must be a whole number from 1 to 1000"),
        (("ddpm-mnist-cfg", "dpm-solver", 5, 0, 1, "eleven", 2.0), "class label 'eleven' is not a class"),
    ]
    for args, message in bad:
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name="/generate")
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    result = client.predict("ddpm-mnist-cfg", "dpm-solver", 5, 0, 1, "7", 2.0, api_name="/generate")
    assert len(result[1]) == 1 and app.process.poll() is None
    x0, xt, stats, _ = client.predict("mnist", 2, 500, "linear", 0, api_name="/explore")
    assert "class 2" in stats and "t = 500" in stats


def test_the_draw_tab_offers_the_pixel_space_ddpms_only():
    from hf_ddpm.demo.actions import drawable

    offered = {name for name, folder in reference_models().items() if drawable(folder)}
    assert offered == {"ddpm-mnist", "ddpm-mnist-cfg", "ddpm-textures", "ddpm-textures-cfg"}
    assert drawable("org/some-model")  # a Hub id is checked when it is used
