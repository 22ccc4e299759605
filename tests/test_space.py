"""The demo as a Hugging Face Space: `python -m hf_ddpm.hub push space/ ORG/NAME` against the loopback Hub
(tests/hub_server.py), then the pushed Space downloaded by huggingface_hub and started as a Space starts it
(`python app.py`), offline, and used through the real gradio_client."""

import hashlib
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from demo_server import REPO, start_demo
from hub_server import LoopbackHub
from huggingface_hub import HfApi
from test_hub import ALICE, hub_env, run

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'hf-ddpm[demo]'")

SPACE = "org/ddpm-demo"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = LoopbackHub(tmp_path_factory.mktemp("hub"), {ALICE: ("alice", ["org"])})
    server.start()
    yield server
    assert server.unhandled == [] and server.errors == [], server.unhandled + server.errors
    server.stop()


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("push")
    result = run(
        [sys.executable, "-m", "hf_ddpm.hub", "push", REPO / "space", SPACE],
        hub_env(hub.url, home / "hf-home", ALICE, upload=True),
        home,
    )
    return result


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_uploads_the_app_the_package_and_the_pipelines_as_a_space(hub, pushed):
    assert "files in the Space: " in pushed.stdout and "/spaces/org/ddpm-demo/commit/" in pushed.stdout
    tree = hub.tree(SPACE, kind="space")
    local = {
        "app.py": REPO / "space" / "app.py",
        "README.md": REPO / "space" / "README.md",
        "requirements.txt": REPO / "space" / "requirements.txt",
        "data/mnist/test-00000-of-00001.parquet": REPO
        / "space"
        / "data"
        / "mnist"
        / "test-00000-of-00001.parquet",
        "hf_ddpm/demo/app.py": REPO / "hf_ddpm" / "demo" / "app.py",
        "hf_ddpm/demo/live.py": REPO / "hf_ddpm" / "demo" / "live.py",
        "hf_ddpm/pipelines/inpainting_ddpm.py": REPO / "pipelines" / "inpainting_ddpm.py",
        "hf_ddpm/pipelines/class_conditional_ddpm.py": REPO / "pipelines" / "class_conditional_ddpm.py",
    }
    for name in ("ddpm-mnist-cfg", "ddpm-mnist"):
        for part in ("model_index.json", WEIGHTS, "scheduler/scheduler_config.json"):
            local[f"checkpoints/{name}/{part}"] = REPO / "checkpoints" / name / part
    for path, source in local.items():
        assert tree[path].sha256 == sha256(source), path
    assert (
        tree[f"checkpoints/ddpm-mnist/{WEIGHTS}"].lfs and tree["data/mnist/test-00000-of-00001.parquet"].lfs
    )
    assert not any("__pycache__" in p or p.startswith("checkpoints/flow-mnist") for p in tree)
    assert {p.split("/")[0] for p in tree} == {
        ".gitattributes",
        "README.md",
        "app.py",
        "requirements.txt",
        "data",
        "hf_ddpm",
        "checkpoints",
    }
    info = HfApi(endpoint=hub.url, token=False).space_info(SPACE)
    assert info.sdk == "gradio" and info.card_data["app_file"] == "app.py"
    assert hub.load_repo(SPACE) is None  # a Space, not a model repo of the same name


def test_the_pushed_space_runs_offline_from_its_own_files(hub, pushed, tmp_path):
    home = tmp_path / "hf-home"
    download = (
        "import sys; from huggingface_hub import snapshot_download; "
        "print(snapshot_download(sys.argv[1], repo_type='space', local_dir=sys.argv[2]))"
    )
    run([sys.executable, "-c", download, SPACE, tmp_path / "space"], hub_env(hub.url, home), tmp_path)
    folder = tmp_path / "space"
    # app.py puts its folder first on sys.path: the bundled package is imported, not the installed one.
    which = "import sys; sys.path.insert(0, '.'); import hf_ddpm.demo as d; print(d.__file__)"
    probe = subprocess.run(
        [sys.executable, "-c", which], cwd=folder, capture_output=True, text=True, check=True
    )
    assert probe.stdout.strip() == str(folder / "hf_ddpm" / "demo" / "__init__.py")

    env = {**hub_env("http://127.0.0.1:9", home, HF_HUB_OFFLINE="1"), "HF_DDPM_DATA_DIR": None}
    server = start_demo(
        tmp_path, ["--host", "127.0.0.1"], env, command=[sys.executable, "app.py"], cwd=folder
    )
    try:
        from gradio_client import Client
        from PIL import Image

        with urllib.request.urlopen(server.url + "config") as response:
            config = json.load(response)
        [model] = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "gen-model"]
        assert sorted(choice[0] for choice in model["props"]["choices"]) == ["ddpm-mnist", "ddpm-mnist-cfg"]

        client = Client(server.url, verbose=False)
        final = client.predict("ddpm-mnist-cfg", "dpm-solver", 10, 0, 2, "5", 2.0, api_name="/generate")
        images = np.stack([np.asarray(Image.open(item["image"])) for item in final[1]])
        assert images.shape == (2, 28, 28) and images.std() > 0
        _, _, stats, _ = client.predict("mnist", 4, 300, "linear", 0, api_name="/explore")
        assert "mnist example 4 (class 4), t = 300" in stats  # from the 100 digits in data/mnist
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_a_space_push_fails_in_one_line(hub, tmp_path):
    broken = tmp_path / "space"
    broken.mkdir()
    (broken / "README.md").write_text((REPO / "space" / "README.md").read_text())
    (broken / "app.py").write_text("print('hello')\n")
    result = run(
        [sys.executable, "-m", "hf_ddpm.hub", "push", broken, "org/broken"],
        hub_env(hub.url, tmp_path / "home", ALICE, upload=True),
        tmp_path,
        ok=False,
    )
    assert result.returncode == 2 and "lacks requirements.txt" in result.stderr.splitlines()[-1]
    assert hub.load_repo("org/broken", "space") is None

    result = run(
        [sys.executable, "-m", "hf_ddpm.hub", "push", REPO / "space", "org/no-token"],
        hub_env(hub.url, tmp_path / "home", upload=True),
        tmp_path,
        ok=False,
    )
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        result.returncode == 1
        and errors == [errors[0]]
        and errors[0].startswith("error: no Hugging Face token")
    )
