"""Sharing on the Hub, end to end against the loopback Hub of tests/hub_server.py: training/train.py pushes,
stock diffusers downloads in a fresh process, `python -m hf_ddpm.hub push` fails cleanly.

Every client under test runs in a subprocess with HF_ENDPOINT (and HF_HOME, tokens) in its environment,
as a user would run it. That is the honest route: huggingface_hub reads HF_ENDPOINT once, at import, into
`constants.ENDPOINT` and the hosts it trusts with the token and follows redirects to, so changing it in
this process afterwards would need patching the library. In-process calls are read-only assertions
through `HfApi(endpoint=hub.url)`, the client's own way to talk to another endpoint.

Pushes run with HF_HUB_DISABLE_XET=1: with hf_xet installed, huggingface_hub uploads through Xet storage
and has no fallback to LFS (see hub_server.py); downloads run with the default settings.
"""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hub_server import LoopbackHub
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file, save_file

from hf_ddpm.config import load_config
from hf_ddpm.hub import files_to_upload
from hf_ddpm.model_card import RunInfo, write_model_card

REPO = Path(__file__).resolve().parents[1]
TRAIN = [str(REPO / "training" / "train.py"), "--config", str(REPO / "training" / "configs" / "tiny.yaml")]
ALICE = "hf_alice_0123456789abcdefghijklmnop"  # user alice, member of org
BOB = "hf_bob_0123456789abcdefghijklmnopqrs"  # user bob, no orgs
REPO_ID = "org/ddpm-textures"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
PUSHED_FILES = {
    "model_index.json",
    "unet/config.json",
    WEIGHTS,
    "scheduler/scheduler_config.json",
    "README.md",
    "samples.png",
    "config.yaml",
}
# What the card of the pushed run must show (sections, the grid, rows of the training table).
CARD_PARTS = [
    "## Usage",
    "## Training",
    "## Model",
    "## Data and licence",
    "![Sample grid](samples.png)",
    "| Steps | 5 optimizer steps",
    "| Batch | 32 |",
    "| Learning rate | 0.002,",
    "| EMA | yes",
    "| Precision | fp32 |",
    "| Image size | 1x28x28 |",
    "| Hardware | ",
    "| Wall time | ",
]

# Stock diffusers alone: samples a pipeline (a folder or a repo id) and saves images and UNet weights.
STOCK_SAMPLING = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None
    try:
        import hf_ddpm
    except ImportError:
        pass
    else:
        raise SystemExit("hf_ddpm is importable")
    import numpy as np, torch
    from diffusers import DDPMPipeline
    from safetensors.torch import save_file
    model, out, revision = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None
    pipe = DDPMPipeline.from_pretrained(model, revision=revision)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    np.save(out + ".npy", images)
    save_file({k: v.contiguous() for k, v in pipe.unet.state_dict().items()}, out + ".safetensors")
    """
)


def hub_env(url: str, home: Path, token: str | None = None, upload: bool = False, **extra: str) -> dict:
    """This environment minus any Hub settings of the developer's, pointed at `url` with cache `home`."""
    env = {k: v for k, v in os.environ.items() if not re.match(r"(HF_(?!DDPM_)|HUGGINGFACE_)", k)}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    if token:
        env["HF_TOKEN"] = token
    if upload:
        env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def run(cmd: list[str], env: dict, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def push(folder: Path, repo_id: str, env: dict, cwd: Path, *args: str, ok: bool = True):
    return run([sys.executable, "-m", "hf_ddpm.hub", "push", folder, repo_id, *args], env, cwd, ok)


def commit_id(result: subprocess.CompletedProcess) -> str:
    return re.search(r"/commit/([0-9a-f]{40})\b", result.stdout).group(1)


def sample_stock(model, out: Path, env: dict, revision: str | None = None) -> tuple[np.ndarray, dict]:
    """Images (2, 28, 28, 1) and UNet weights of `model` loaded by stock diffusers in a fresh process."""
    run([sys.executable, "-c", STOCK_SAMPLING, model, out, *filter(None, [revision])], env, out.parent)
    return np.load(f"{out}.npy"), load_file(f"{out}.safetensors")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    server = LoopbackHub(tmp_path_factory.mktemp("hub"), {ALICE: ("alice", ["org"]), BOB: ("bob", [])})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server):
    yield hub_server
    # Whatever the test did, the client called only endpoints the server implements, and none crashed.
    assert hub_server.unhandled == [] and hub_server.errors == [], hub_server.unhandled + hub_server.errors


@pytest.fixture(scope="module")
def trained(hub_server, tmp_path_factory, textures_dir):
    """The tiny preset, 5 steps on 256 Brodatz texture patches, pushed by train.py itself to REPO_ID.

    The token is given on the command line, the route most likely to leak it into config.yaml or logs.
    The run's HF_HOME lies beside the output folder, in its working directory, so one scan covers all three.
    """
    out = tmp_path_factory.mktemp("train") / "ddpm-textures"
    result = run(
        [sys.executable, *TRAIN, "--training.output_dir", out, "--dataset.name", "textures",
         "--dataset.path", textures_dir, "--dataset.max_samples", "256",
         "--training.max_train_steps", "5", "--training.checkpointing_steps", "2",
         "--training.save_images_steps", "2", "--training.report_to", "tensorboard",
         "--training.push_to_hub", "true", "--training.hub_model_id", REPO_ID, "--training.hub_token", ALICE],
        hub_env(hub_server.url, out.parent / "hf-home", upload=True),
        out.parent,
    )  # fmt: skip
    return out, result


def test_train_pushes_at_the_end_and_never_writes_the_token(trained, hub):
    out, result = trained
    assert "pushed to" in result.stderr
    assert set(hub.tree(REPO_ID)) == PUSHED_FILES | {".gitattributes"}
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["hub_token"] is None
    assert list((out / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs (with hparams) were written"
    # Every file the run wrote, binary ones included: output folder, working directory and HF_HOME.
    written = [p for p in out.parent.rglob("*") if p.is_file()]
    names = [p.relative_to(out).as_posix() for p in written if out in p.parents]
    for kind in ["events.out.tfevents.", "optimizer.bin", "random_states_0.pkl", "model.safetensors", ".png"]:
        assert any(kind in name for name in names), f"no {kind} file was scanned"
    assert [p for p in written if ALICE.encode() in p.read_bytes()] == []
    assert ALICE not in result.stdout + result.stderr
    pushed = [hub.object_bytes(e.sha256) for e in hub.tree(REPO_ID).values()]
    assert len(pushed) == len(PUSHED_FILES) + 1 and all(ALICE.encode() not in data for data in pushed)


def test_push_uploads_exactly_the_pipeline_card_grid_and_config(trained, hub):
    out, _ = trained
    # What stays local is there to be left out: checkpoints (optimizer state), TensorBoard logs, grids.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert (out / "checkpoint-5" / "optimizer.bin").is_file()
    assert list((out / "samples").glob("step_*.png")) and (out / "logs").is_dir()
    files = HfApi(endpoint=hub.url, token=False).list_repo_files(REPO_ID)
    assert set(files) == PUSHED_FILES | {".gitattributes"}  # the Hub puts .gitattributes in every new repo
    assert sorted(files_to_upload(out)) == sorted(PUSHED_FILES)
    tree = hub.tree(REPO_ID)
    for name in PUSHED_FILES:
        assert tree[name].sha256 == sha256(out / name), name
        # Binary files went through the LFS batch API and the storage host, text files in the commit.
        assert tree[name].lfs == name.endswith((".safetensors", ".png")), name


def test_stock_diffusers_loads_the_pushed_pipeline_in_a_fresh_process(trained, hub, tmp_path):
    out, _ = trained
    home = tmp_path / "empty-home"
    local, local_weights = sample_stock(out, tmp_path / "local", hub_env(hub.url, home))
    remote, remote_weights = sample_stock(REPO_ID, tmp_path / "remote", hub_env(hub.url, home))
    np.testing.assert_allclose(remote, local, atol=1e-6)
    assert local.shape == (2, 28, 28, 1) and local.std() > 0
    assert all(torch.equal(remote_weights[k], local_weights[k]) for k in local_weights)
    assert (home / "hub" / "models--org--ddpm-textures" / "snapshots").is_dir()

    # Once downloaded, the pipeline loads from the cache with the Hub out of reach.
    requests = len(hub.requests)
    offline_env = hub_env(closed_port_url(), home, HF_HUB_OFFLINE="1")
    offline, _ = sample_stock(REPO_ID, tmp_path / "offline", offline_env)
    np.testing.assert_allclose(offline, local, atol=1e-6)
    assert len(hub.requests) == requests


def test_a_second_push_is_a_new_commit_and_the_first_stays_loadable(trained, hub, tmp_path):
    out, _ = trained
    env = hub_env(hub.url, tmp_path / "home", token=ALICE, upload=True)
    first = commit_id(push(out, "org/ddpm-revisions", env, tmp_path))
    changed = tmp_path / "changed"
    shutil.copytree(out, changed, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))
    weights = load_file(changed / WEIGHTS)
    save_file({k: v + 0.01 for k, v in weights.items()}, changed / WEIGHTS)
    uploads = sum(1 for method, *_ in hub.requests if method == "PUT")
    second = commit_id(push(changed, "org/ddpm-revisions", env, tmp_path))

    assert second != first
    assert sum(1 for method, *_ in hub.requests if method == "PUT") == uploads + 1  # only the new weights
    assert hub.tree("org/ddpm-revisions", first)[WEIGHTS].sha256 == sha256(out / WEIGHTS)
    assert hub.tree("org/ddpm-revisions", second)[WEIGHTS].sha256 == sha256(changed / WEIGHTS)
    read = hub_env(hub.url, tmp_path / "reader")
    _, old = sample_stock("org/ddpm-revisions", tmp_path / "old", read, revision=first)
    _, new = sample_stock("org/ddpm-revisions", tmp_path / "new", read)
    pushed_old, pushed_new = load_file(out / WEIGHTS), load_file(changed / WEIGHTS)
    assert all(torch.equal(old[k], pushed_old[k]) and torch.equal(new[k], pushed_new[k]) for k in old)
    assert not any(torch.equal(old[k], new[k]) for k in old)


def test_the_card_parses_back_and_its_usage_snippet_runs_against_the_hub(trained, hub, tmp_path):
    out, _ = trained
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert {"diffusers", "ddpm", "hf-ddpm", "textures"} <= set(card.data.tags)
    assert card.data.license == "other"  # Brodatz textures: no open licence may be claimed
    assert "Brodatz" in card.text and "never been clear" in card.text
    for part in CARD_PARTS:
        assert part in card.text, part
    assert "## Evaluation" not in card.text  # no eval.json in this output folder
    for placeholder in ["TODO", "More Information Needed", "{{", "{%"]:
        assert placeholder not in card.text
    info = HfApi(endpoint=hub.url, token=False).model_info(REPO_ID)  # the Hub reads the same metadata
    assert (info.library_name, info.pipeline_tag) == ("diffusers", "unconditional-image-generation")

    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert f'DDPMPipeline.from_pretrained("{REPO_ID}")' in code
    run([sys.executable, "-c", 'import sys\nsys.modules["hf_ddpm"] = None\n' + code],
        hub_env(hub.url, tmp_path / "home"), tmp_path)  # fmt: skip
    from PIL import Image

    sample = Image.open(tmp_path / "sample.png")
    assert (sample.mode, sample.size) == ("L", (28, 28))


def test_card_licence_and_evaluation_follow_the_data_and_eval_json(trained, tmp_path):
    out, _ = trained
    folder = tmp_path / "mnist-run"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "README.md"))
    cfg = load_config(REPO / "training" / "configs" / "mnist.yaml", ["--training.train_batch_size", "128"])
    run_info = RunInfo(
        1830, "test CPU", num_processes=2, steps=2000, num_images=60000, data_source="ylecun/mnist"
    )
    card = ModelCard.load(write_model_card(folder, cfg, run_info))
    assert card.data.license == "apache-2.0" and card.data.datasets == ["ylecun/mnist"]
    assert "## Evaluation" not in card.text
    assert "| Batch | 256 (128 per process x 2 processes x 1 accumulation steps) |" in card.text
    assert "| Wall time | 30 min 30 s |" in card.text and "(8.5 epochs)" in card.text

    (folder / "eval.json").write_text('{"fid": 12.3456, "num_samples": 10000, "sampler": {"steps": 50}}')
    text = ModelCard.load(write_model_card(folder, cfg, run_info)).text
    assert "## Evaluation" in text
    for row in ["| fid | 12.35 |", "| num_samples | 10000 |", "| sampler.steps | 50 |"]:
        assert row in text, row

    # Textures by folder name alone (dataset.name left at its default) still get no open licence.
    textures = load_config(REPO / "training" / "configs" / "tiny.yaml", ["--training.hub_license", "mit"])
    run_info.data_source = "/data/textures"
    assert ModelCard.load(write_model_card(folder, textures, run_info)).data.license == "other"


def test_private_push_of_a_bare_name_goes_to_the_users_namespace(trained, hub, tmp_path):
    out, _ = trained
    env = hub_env(hub.url, tmp_path / "home", token=ALICE, upload=True)
    push(out, "ddpm-private", env, tmp_path, "--private")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("alice/ddpm-private")
    assert HfApi(endpoint=hub.url, token=ALICE).model_info("alice/ddpm-private").private is True


@pytest.mark.parametrize(
    "case, repo_id, expected",
    [
        ("unreachable", "org/ddpm-unreachable", "cannot reach the Hub at http://127.0.0.1:"),
        ("no token", "org/ddpm-no-token", "no Hugging Face token found: run `hf auth login`, set HF_TOKEN"),
        ("bad token", "org/ddpm-bad-token", "rejected the token (401"),
        ("other user's org", "org/ddpm-bob", "user 'bob' may not write to 'org' (403"),
        ("other user's repo", REPO_ID, "user 'bob' may not write to 'org' (403"),
        ("hub without xet", "org/ddpm-xet", "set HF_HUB_DISABLE_XET=1"),
    ],
)
def test_failed_push_says_why_in_one_line_and_changes_nothing(
    trained, hub, tmp_path, case, repo_id, expected
):
    out, _ = trained
    before = tree_digest(out)
    head = hub.load_repo(repo_id).refs["main"] if hub.load_repo(repo_id) else None
    home = tmp_path / "home"
    env, args = hub_env(hub.url, home, upload=True), ["--token", ALICE]
    if case == "unreachable":
        env = hub_env(closed_port_url(), home, upload=True)
    elif case == "no token":
        args = []
    elif case == "bad token":
        args = ["--token", "hf_not_a_token_of_this_hub"]
    elif case.startswith("other user's"):
        args = ["--token", BOB]
    elif case == "hub without xet":
        del env["HF_HUB_DISABLE_XET"]

    result = push(out, repo_id, env, tmp_path, *args, ok=False)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert expected in errors[0]
    assert tree_digest(out) == before
    if case != "hub without xet":  # that one created the repo; its commit failed
        assert (hub.load_repo(repo_id).refs["main"] if hub.load_repo(repo_id) else None) == head

    retry = push(out, repo_id, hub_env(hub.url, home, token=ALICE, upload=True), tmp_path)
    assert hub.tree(repo_id)[WEIGHTS].sha256 == sha256(out / WEIGHTS), retry.stdout


def test_push_refuses_a_folder_without_a_pipeline(tmp_path):
    (tmp_path / "unet").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "hf_ddpm.hub", "push", str(tmp_path), "org/x"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "holds no model_index.json" in result.stderr and "Traceback" not in result.stderr


def test_a_class_conditional_pipeline_travels_with_its_code_and_its_card_snippet_runs(hub, tmp_path):
    """The pipeline file goes up with the weights; stock diffusers runs the card's snippet against the Hub
    (remote code, hf_ddpm blocked) and gets what hf_ddpm's own loader gets from the local folder."""
    from hf_ddpm.models import build_unet
    from hf_ddpm.pipeline import export_pipeline, load_pipeline
    from hf_ddpm.scheduler import LinearNoiseScheduler

    folder, repo_id = tmp_path / "ddpm-cfg", "org/ddpm-cfg"
    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=4)
    export_pipeline(unet, LinearNoiseScheduler(), folder, id2label={0: "cat", 1: "dog", 2: "owl"})
    cfg = load_config(REPO / "training" / "configs" / "tiny.yaml", ["--model.class_conditional", "true"])
    write_model_card(folder, cfg, RunInfo(1.0, "CPU", 1, 5, 100, "mnist"), repo_id)
    push(folder, repo_id, hub_env(hub.url, tmp_path / "up", ALICE, upload=True), tmp_path)
    assert "class_conditional_ddpm.py" in HfApi(endpoint=hub.url, token=False).list_repo_files(repo_id)

    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    assert f'DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)' in code
    code += "\nimport numpy as np\nnp.save('images.npy', np.stack([np.asarray(i) for i in images]))\n"
    run([sys.executable, "-c", 'import sys\nsys.modules["hf_ddpm"] = None\n' + code],
        hub_env(hub.url, tmp_path / "home"), tmp_path)  # fmt: skip
    remote = np.load(tmp_path / "images.npy")

    ours = load_pipeline(folder, "ddim")  # tiny.yaml samples with DDIM, 20 steps; guidance 2
    generator = torch.Generator().manual_seed(0)
    local = ours(["cat", "dog", "owl"], 2.0, 20, generator=generator).images
    assert remote.shape == (3, 28, 28)
    np.testing.assert_array_equal(remote, np.stack([np.asarray(i) for i in local]))


def test_a_flow_matching_pipeline_loads_from_the_hub_with_stock_diffusers_and_hf_ddpm(hub, tmp_path):
    """A flow-matching export (stock DDPMPipeline + FlowMatchEulerDiscreteScheduler) pushed to the Hub: the
    card's snippet under stock diffusers and hf_ddpm's loader draw the same images as the local folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from hf_ddpm.models import build_unet
    from hf_ddpm.pipeline import export_pipeline, generate, load_pipeline

    folder, repo_id = tmp_path / "flow", "org/flow-tiny"
    torch.manual_seed(0)
    export_pipeline(build_unet("tiny"), FlowMatchEulerDiscreteScheduler(), folder)
    flow = ["--diffusion.objective", "flow_matching", "--training.sampler", "flow-euler"]
    cfg = load_config(
        REPO / "training" / "configs" / "tiny.yaml", [*flow, "--training.eval_sampler", "flow-euler"]
    )
    write_model_card(folder, cfg, RunInfo(1.0, "CPU", 1, 5, 100, "mnist"), repo_id)
    push(folder, repo_id, hub_env(hub.url, tmp_path / "up", ALICE, upload=True), tmp_path)

    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    assert f'DDPMPipeline.from_pretrained("{repo_id}")' in code and "num_inference_steps=20" in code
    code += "\nimport numpy as np\nnp.save('images.npy', np.stack([np.asarray(i) for i in images]))\n"
    run([sys.executable, "-c", 'import sys\nsys.modules["hf_ddpm"] = None\n' + code],
        hub_env(hub.url, tmp_path / "home"), tmp_path)  # fmt: skip
    remote = np.load(tmp_path / "images.npy")
    local = generate(load_pipeline(folder), 16, 20, seed=0)
    assert remote.shape == (16, 28, 28)
    np.testing.assert_array_equal(remote, local[..., 0])
    loader = (
        "import sys; from hf_ddpm.pipeline import load_pipeline; "
        "print(type(load_pipeline(sys.argv[1]).scheduler).__name__)"
    )
    from_hub = run([sys.executable, "-c", loader, repo_id], hub_env(hub.url, tmp_path / "home2"), tmp_path)
    assert from_hub.stdout.split() == ["FlowMatchEulerDiscreteScheduler"]


UPLOAD = textwrap.dedent(
    """
    import sys
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo(sys.argv[1])
    for path in sys.argv[2:]:
        api.upload_file(path_or_fileobj=path, path_in_repo=path.split("/")[-1], repo_id=sys.argv[1])
    """
)


@pytest.mark.parametrize(
    "repo_id, files, expected",
    [
        ("org/missing", None, "org/missing is neither a folder nor a Hub repo you can read"),
        ("org/card-only", ["README.md"], "Hub repo org/card-only holds no model_index.json"),
        ("org/no-unet", ["model_index.json"], "org/no-unet is not a complete pipeline: Could not find"),
    ],
)
def test_sampling_a_hub_repo_without_a_pipeline_fails_in_one_line(hub, tmp_path, repo_id, files, expected):
    if files is not None:
        paths = [str(REPO / "checkpoints" / "ddpm-mnist" / name) for name in files]
        uploader = hub_env(hub.url, tmp_path / "up", ALICE, upload=True)
        run([sys.executable, "-c", UPLOAD, repo_id, *paths], uploader, tmp_path)
    result = run([sys.executable, "-m", "hf_ddpm.sample", "--model", repo_id, "--steps", "1"],
                 hub_env(hub.url, tmp_path / "home"), tmp_path, ok=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"python -m hf_ddpm.sample: error: {expected}")
    assert "Traceback" not in result.stderr
