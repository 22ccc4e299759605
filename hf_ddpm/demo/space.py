"""The demo as a Hugging Face Space: what a push of the `space/` folder uploads.

    python -m hf_ddpm.hub push space/ my-org/ddpm-demo [--model checkpoints/ddpm-mnist-cfg ...]

A Space folder is one whose README.md front matter names an `sdk`. It travels with what its `app.py` needs
and a Space cannot install: the hf_ddpm package itself (its modules and pipeline files, under `hf_ddpm/`)
and the pipelines to serve (under `checkpoints/NAME/`, the files a model push uploads). The Space's own
`requirements.txt` names the rest.
"""

from __future__ import annotations

from pathlib import Path

# The reference checkpoints a Space serves unless told otherwise (4.4 MB each).
DEFAULT_MODELS = ("ddpm-mnist-cfg", "ddpm-mnist")


def front_matter(readme: Path) -> dict:
    """The YAML metadata block at the top of a README.md; {} without one."""
    from huggingface_hub import metadata_load

    return (metadata_load(readme) if readme.is_file() else None) or {}


def is_space(folder: str | Path) -> bool:
    """Whether `folder` is a Space: its README.md front matter names an `sdk`."""
    return "sdk" in front_matter(Path(folder) / "README.md")


def space_files(space_dir: str | Path, models: list[str | Path] | None = None) -> list[tuple[str, Path]]:
    """(path in the Space repo, local file) of everything a Space push uploads.

    `models` are pipeline folders (default: `DEFAULT_MODELS` of the reference checkpoints). `ValueError`
    names what is missing: the app file the front matter names, requirements.txt, a pipeline's files.
    """
    from .. import pipelines
    from ..classifier import CHECKOUT as REFERENCE_DIR  # the reference checkpoints of a source checkout
    from ..hub import files_to_upload

    folder = Path(space_dir)
    metadata = front_matter(folder / "README.md")
    app_file = metadata.get("app_file", "app.py")
    for needed in (app_file, "requirements.txt"):
        if not (folder / needed).is_file():
            raise ValueError(f"{folder} lacks {needed}: a Space needs its app file and its requirements.txt")
    files = [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(folder).parts)
    ]
    package = Path(__file__).resolve().parents[1]  # hf_ddpm, with its demo and training sub-packages
    files += [
        (f"hf_ddpm/{path.relative_to(package).as_posix()}", path) for path in sorted(package.rglob("*.py"))
    ]
    files += [
        (f"hf_ddpm/pipelines/{p.name}", p) for p in sorted(Path(pipelines.__file__).parent.glob("*.py"))
    ]
    for model in models or [REFERENCE_DIR / name for name in DEFAULT_MODELS]:
        model = Path(model)
        files += [(f"checkpoints/{model.name}/{name}", model / name) for name in files_to_upload(model)]
    return files


def push_space(
    space_dir: str | Path,
    repo_id: str,
    models: list[str | Path] | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload the hf-ddpm demo",
) -> str:
    """Uploads the Space bundle (`space_files`) to the Space `repo_id` as one commit, creating it with the
    front matter's sdk if needed; returns the commit's URL. `HubPushError` when the Hub refuses."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from ..hub import HubPushError, _explain, create_repo

    files = space_files(space_dir, models)
    sdk = front_matter(Path(space_dir) / "README.md")["sdk"]
    repo_id = create_repo(repo_id, private=private, token=token, repo_type="space", space_sdk=sdk)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files]
    try:
        commit = HfApi(token=token).create_commit(
            repo_id, operations, commit_message=commit_message, repo_type="space"
        )
    except Exception as err:
        raise HubPushError(_explain(err, repo_id, token)) from err
    return commit.commit_url
