"""Writing files and folders atomically: into `NAME.partial` first, renamed to `NAME` once complete.

A process killed mid-write (SIGKILL, a full disk, a preempted machine) then leaves either the old version
or the new one under the real name, never half of one, and a resumed run never picks up a truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """Where `path` is written before it is complete: `path.partial` (a suffix no reader matches)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def write_atomically(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Writes `content` (text, bytes, or a function that writes the file it is given) to `path` atomically.

    A function must write the exact path it receives (PIL and matplotlib need the format named, as the
    `.partial` suffix would otherwise decide it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        if isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            content(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: object) -> Path:
    """Writes `obj` to `path` as indented JSON with a final newline, atomically."""
    return write_atomically(path, json.dumps(obj, indent=2) + "\n")


@contextmanager
def replace_folder(folder: str | Path) -> Iterator[Path]:
    """Yields an empty `folder.partial` to fill; when the block ends without an error it replaces `folder`
    (the old one is moved to `folder.old`, then removed), so `folder` is always a complete version."""
    folder = Path(folder)
    partial, old = partial_path(folder), folder.with_name(folder.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-write
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
