"""Argument parsing for every hf-ddpm command line: bad input stops it with ONE line naming the argument and
what it accepts, and exit status 2 (argparse's), never a traceback.

    parser = ArgumentParser(prog="python -m hf_ddpm.sample", description="...")
    parser.add_argument("--num-images", type=at_least(1), default=64)
    parser.add_argument("--guidance-scale", type=non_negative)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

USAGE_ERROR = 2  # argparse's exit status for bad arguments


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line, `PROG: error: MESSAGE (see PROG --help)`."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: it must be at least {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def non_negative(text: str) -> float:
    """An argparse `type`: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value:g} is negative: it must be 0 or more")
    return value


def positive(text: str) -> float:
    """An argparse `type`: a number > 0."""
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed: it must be more than 0")
    return value
