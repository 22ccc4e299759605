"""Command lines run in the test's own process: each case runs its module or script as `python` would (as
__main__, with sys.argv set), without paying for importing torch again in a new process."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import pytest


def check_one_line(returncode: int, stderr: str, message: str) -> None:
    """Exit status 2, no traceback, and one error line, the last, holding `message`."""
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == errors[0]


def run_in_this_process(cmd: list, capsys) -> tuple[int, str]:
    """The exit status and stderr of `cmd` (`[python, -m, module, ...]`, `[python, script, ...]` or
    `[hf-ddpm, ...]`). An exception other than SystemExit fails the test with its traceback."""
    argv = [str(c) for c in cmd]
    if argv[0] == "hf-ddpm":
        from hf_ddpm.cli import main

        target = lambda: main(argv[1:])  # noqa: E731
    elif argv[1] == "-m":
        argv = [argv[2], *argv[3:]]
        target = lambda: runpy.run_module(argv[0], run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        argv = argv[1:]
        target = lambda: runpy.run_path(argv[0], run_name="__main__")  # noqa: E731
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = argv
    if argv[0].endswith(".py"):
        sys.path.insert(0, str(Path(argv[0]).parent))  # as python puts a script's folder first
    try:
        # runpy warns when the module was imported before (by an earlier case); it runs it afresh anyway.
        with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)
            target()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return exit_info.value.code, capsys.readouterr().err
