"""Share a trained pipeline on the Hugging Face Hub.

    python -m hf_ddpm.hub push outputs/ddpm-mnist my-org/ddpm-mnist [--private] [--token hf_...]

Uploads what a user of the model needs, and nothing else: `model_index.json`, `unet/`, `scheduler/` (the
pipeline stock `DDPMPipeline.from_pretrained` loads), the pipeline file of a class-conditional model,
`README.md` (the model card train.py wrote), `samples.png`, `config.yaml` and `eval.json`. Checkpoints,
optimizer state, TensorBoard logs and the intermediate `samples/step_*.png` stay local. One push is one
commit; files that did not change are not sent again.

`python -m hf_ddpm.hub push space/ my-org/ddpm-demo` uploads the demo as a Space instead (a folder whose
README.md front matter names an `sdk`; see `hf_ddpm.demo.space`).

The token comes from `--token`, else `$HF_TOKEN`, else the login saved by `hf auth login`. The endpoint is
`$HF_ENDPOINT` (default https://huggingface.co). Pushing only reads the output folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .arguments import ArgumentParser
from .demo.space import is_space

# The licence ids a model card's `license:` may take: the Hub refuses a card with any other
# (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
    "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl",
    "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0",
    "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2",
    "gemma", "unknown", "other",
)  # fmt: skip
# The files of a push, relative to the output folder; unet/ and scheduler/ go in whole.
TOP_LEVEL_FILES = ("model_index.json", "README.md", "samples.png", "config.yaml", "eval.json")


class HubPushError(RuntimeError):
    """A push that failed for a reason the user can fix; the message is one line naming cause and fix."""


def component_names(index: dict) -> list[str]:
    """The component folders (unet, scheduler, vae) of a `model_index.json`: each maps to [library, class]."""
    return [key for key, value in index.items() if not key.startswith("_") and isinstance(value, list)]


def files_to_upload(output_dir: str | Path) -> list[str]:
    """The paths (posix, relative) a push uploads from `output_dir`; `ValueError` if it has no pipeline."""
    folder = Path(output_dir)
    if not (folder / "model_index.json").is_file():
        raise ValueError(
            f"{folder} holds no model_index.json: push a folder written by training/train.py (its output_dir)"
        )
    files = [name for name in TOP_LEVEL_FILES if (folder / name).is_file()]
    index = json.loads((folder / "model_index.json").read_text())
    # A custom pipeline (model_index.json's `_class_name` is [module, class]) travels with its code file.
    class_name = index.get("_class_name")
    if isinstance(class_name, list):
        code = f"{class_name[0]}.py"
        if not (folder / code).is_file():
            raise ValueError(f"{folder} lacks {code}, the pipeline file its model_index.json names")
        files.append(code)
    for sub in component_names(index):
        found = [
            p.relative_to(folder).as_posix()
            for p in sorted((folder / sub).rglob("*"))
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")
        ]
        if not found:
            raise ValueError(f"{folder / sub} is missing or empty: the pipeline in {folder} is incomplete")
        files += found
    return files


def create_repo(
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    repo_type: str = "model",
    space_sdk: str | None = None,
) -> str:
    """Creates `repo_id` if needed (a bare name goes to the token's user); returns the full `org/name`.
    A Space (`repo_type="space"`) is created with its `space_sdk`."""
    from huggingface_hub import HfApi

    _require_token(token)
    try:
        kind = {"repo_type": repo_type, "space_sdk": space_sdk} if repo_type == "space" else {}
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True, **kind).repo_id
    except Exception as err:
        raise HubPushError(_explain(err, repo_id, token)) from err


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline trained with hf-ddpm",
) -> str:
    """Uploads the pipeline, card, sample grid and config in `output_dir` to `repo_id` as one commit.

    Creates the repo when it does not exist (`private` applies only then). Returns the commit's URL. Raises
    `ValueError` when `output_dir` holds no pipeline, `HubPushError` when the Hub cannot be reached or
    refuses the push.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(output_dir)
    files = files_to_upload(folder)
    repo_id = create_repo(repo_id, private=private, token=token)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=folder / f) for f in files]
    try:
        commit = HfApi(token=token).create_commit(repo_id, operations, commit_message=commit_message)
    except Exception as err:
        raise HubPushError(_explain(err, repo_id, token)) from err
    return commit.commit_url


def _require_token(token: str | None) -> None:
    from huggingface_hub import get_token

    if token is None and get_token() is None:
        raise HubPushError(
            "no Hugging Face token found: run `hf auth login`, set HF_TOKEN, or pass --token "
            "(a token with write access)"
        )


def _explain(err: Exception, repo_id: str, token: str | None) -> str:
    """One line naming what went wrong and what to do about it (huggingface_hub's own messages span many)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = constants.ENDPOINT
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your namespace"
    if isinstance(err, httpx2.TransportError):
        return f"cannot reach the Hub at {endpoint} ({_first_line(err)}): check the network, or HF_ENDPOINT"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        server = err.server_message or _first_line(err)
        if status == 401:
            return (
                f"the Hub at {endpoint} rejected the token (401: {_first_line(server)}): use a token with "
                "write access (--token, HF_TOKEN or `hf auth login`)"
            )
        if status == 403:
            user = _user_name(token)
            who = f"user '{user}'" if user else "this token"
            mine = f"'{user}/{repo_id.split('/')[-1]}'" if user else "your own namespace"
            return (
                f"{who} may not write to '{namespace}' (403: {_first_line(server)}): push to {mine}, "
                f"or ask an admin of '{namespace}' for write access"
            )
        return f"pushing to {repo_id} failed ({status}: {_first_line(server)})"
    if "xet-write-token" in str(err):
        # hf_xet is installed and the endpoint (a mirror, a test server) has no Xet storage.
        return (
            f"the Hub at {endpoint} does not offer Xet storage, which uploads use when hf_xet is installed: "
            "set HF_HUB_DISABLE_XET=1 to upload through plain LFS"
        )
    if isinstance(err, ValueError) and "metadata" in str(err):
        return f"the Hub refused README.md's metadata ({_first_line(err)}): fix the model card's YAML header"
    return f"pushing to {repo_id} failed: {type(err).__name__}: {_first_line(err)}"


def _user_name(token: str | None) -> str | None:
    from huggingface_hub import HfApi

    try:
        return HfApi(token=token).whoami()["name"]
    except Exception:  # only decorates an error message
        return None


def _first_line(value: object) -> str:
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    line = re.sub(r"\s+", " ", lines[0]) if lines else "no details"
    return line[:200]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m hf_ddpm.hub", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser(
        "push",
        help="upload a trained pipeline (an output_dir of training/train.py), or the demo Space (space/)",
    )
    push.add_argument("output_dir", help="folder written by training/train.py, or a Space folder (space/)")
    push.add_argument("repo_id", help="Hub repo: org/name, or name for the token's user")
    push.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    push.add_argument("--token", default=None, help="write token (default: $HF_TOKEN or the saved login)")
    push.add_argument("--commit-message", default=None)
    push.add_argument(
        "--model",
        action="append",
        help="Spaces: a pipeline folder to serve (repeat it; default: ddpm-mnist-cfg and ddpm-mnist)",
    )
    args = parser.parse_args(argv)
    if is_space(args.output_dir):
        _push_space(args, push)
        return

    try:
        files = files_to_upload(args.output_dir)
    except ValueError as err:
        push.error(str(err))
    card = Path(args.output_dir) / "README.md"
    if not card.is_file():
        print(f"note: {args.output_dir} has no README.md: the repo gets no model card", file=sys.stderr)
    elif "/" in args.repo_id and f'"{args.repo_id}"' not in card.read_text():
        print(
            f"note: README.md's usage snippet does not name {args.repo_id}: train with "
            f"--training.hub_model_id {args.repo_id} (or edit README.md) so that it does",
            file=sys.stderr,
        )
    from huggingface_hub.utils import logging as hub_logging

    # Its warnings would repeat what the one-line error below says, over many lines.
    hub_logging.set_verbosity_error()
    try:
        message = args.commit_message or "Upload DDPM pipeline trained with hf-ddpm"
        url = push_to_hub(args.output_dir, args.repo_id, args.private, args.token, message)
    except HubPushError as err:
        sys.exit(f"error: {err}")
    print(f"{len(files)} files on the Hub: {url}")


def _push_space(args: argparse.Namespace, push: argparse.ArgumentParser) -> None:
    """`push` of a Space folder: the demo, the hf_ddpm package and the pipelines it serves."""
    from huggingface_hub.utils import logging as hub_logging

    # The module as imported: run with -m, this file is __main__, whose HubPushError is another class.
    from . import hub
    from .demo.space import push_space, space_files

    try:
        files = space_files(args.output_dir, args.model)
    except ValueError as err:
        push.error(str(err))
    hub_logging.set_verbosity_error()
    try:
        url = push_space(args.output_dir, args.repo_id, args.model, args.private, args.token,
                         args.commit_message or "Upload the hf-ddpm demo")  # fmt: skip
    except hub.HubPushError as err:
        sys.exit(f"error: {err}")
    print(f"{len(files)} files in the Space: {url}")


if __name__ == "__main__":
    main()
