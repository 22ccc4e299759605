"""Checks that the code the pipeline files repeat on purpose is still equal to its original.

Every file in `pipelines/` imports only torch and diffusers: it travels beside the weights and stock diffusers
loads it as remote code, so it cannot import what it shares with the others. The shared definitions are
written once (the original) and repeated in the other files as marked copies, diffusers' convention: a
comment right above the copy's `def` or `class` (above its decorators, if it has any) names the original
by module and qualified name,

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.save_pretrained

optionally with renames applied to the original's text before the comparison, in order:

    # Copied from hf_ddpm.pipelines.NAME.SomePipeline.method with image->latents, Image->Latent

The module `hf_ddpm.pipelines.NAME` is the file `pipelines/NAME.py`. A definition runs from its first
decorator to its last statement, and a copy may sit at another indentation than its original (a method
copied as a function). The original stays in its file; only the copies are ever rewritten.

    python utils/check_copies.py          # lists each copy that differs from its original, exits 1 if any
    python utils/check_copies.py --fix    # rewrites those copies from their originals (make fix-copies)

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "hf_ddpm.pipelines"
FOLDER = "pipelines"
MARKER = re.compile(
    r"^(?P<indent>[ \t]*)# Copied from (?P<target>\S+)(?:[ \t]+with[ \t]+(?P<renames>.*\S))?[ \t]*$"
)
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class MarkerError(Exception):
    """A marker that cannot be checked: it names no definition, or stands above none."""


@dataclass
class Copy:
    path: Path  # the file holding the copy
    where: str  # file:line of the `# Copied from` comment, for messages
    target: str  # the original's dotted name, as the marker spells it
    renames: list[tuple[str, str]]
    start: int  # 0-based index of the copy's first line (its first decorator or its def/class)
    end: int  # 0-based index one past its last line
    indent: str


def first_line(node: Definition) -> int:
    """1-based line where a definition starts: its first decorator, else its def/class line."""
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def parse(path: Path) -> tuple[list[str], ast.Module]:
    text = path.read_text()
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise MarkerError(
            f"{FOLDER}/{path.name}:{err.lineno}: does not parse ({err.msg}): its copies cannot be checked"
        ) from None
    return text.splitlines(keepends=True), tree


def parse_renames(spec: str | None, where: str) -> list[tuple[str, str]]:
    """`Old->New, Other->Another` as pairs; diffusers' syntax for a copy that renames."""
    if spec is None:
        return []
    renames = []
    for item in spec.split(","):
        old, arrow, new = item.strip().partition("->")
        if not arrow or not old or not new:
            raise MarkerError(f"{where}: the renames after `with` must read Old->New, separated by commas")
        renames.append((old, new))
    return renames


def find_copies(path: Path, root: Path) -> list[Copy | str]:
    """The marked copies in one file, in order, with a one-line problem in place of a bad marker."""
    lines, tree = parse(path)
    starts = {first_line(n): n for n in ast.walk(tree) if isinstance(n, Definition)}
    copies = []
    for index, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        where = f"{path.relative_to(root)}:{index + 1}"
        node = starts.get(index + 2)
        try:
            if node is None:
                raise MarkerError(
                    f"{where}: `# Copied from` must stand right above a def or class or its decorators"
                )
            renames = parse_renames(match["renames"], where)
        except MarkerError as err:
            copies.append(str(err))
            continue
        copies.append(
            Copy(
                path=path,
                where=where,
                target=match["target"],
                renames=renames,
                start=index + 1,
                end=node.end_lineno,
                indent=re.match(r"[ \t]*", lines[index + 1])[0],
            )
        )
    return copies


def locate(target: str, root: Path, where: str) -> tuple[Path, list[str], int, int]:
    """The file that holds `target`, its lines, and the 0-based [start, end) of the definition there."""
    prefix = PACKAGE + "."
    if not target.startswith(prefix) or "." not in target[len(prefix) :]:
        raise MarkerError(f"{where}: {target} is not a definition in {PACKAGE}.<module>")
    module, *qualname = target[len(prefix) :].split(".")
    path = root / FOLDER / f"{module}.py"
    if not path.is_file():
        raise MarkerError(f"{where}: {target} names {FOLDER}/{module}.py, which does not exist")
    lines, tree = parse(path)
    body: list[ast.stmt] = tree.body
    for name in qualname:
        found = [n for n in body if isinstance(n, Definition) and n.name == name]
        if not found:
            raise MarkerError(f"{where}: {target}: {FOLDER}/{module}.py defines no {name} there")
        node = found[-1]  # a later definition replaces an earlier one, as when Python runs the file
        body = node.body
    return path, lines, first_line(node) - 1, node.end_lineno


def expected_text(copy: Copy, root: Path) -> str:
    """The original's text at the copy's indentation, with the copy's renames applied."""
    path, lines, start, end = locate(copy.target, root, copy.where)
    if path == copy.path and start == copy.start:
        raise MarkerError(f"{copy.where}: the marker names the definition below it, not another one")
    original = lines[start:end]
    indent = re.match(r"[ \t]*", original[0])[0]
    moved = []
    for line in original:
        if not line.strip():
            moved.append("\n")
        elif line.startswith(indent):
            moved.append(copy.indent + line[len(indent) :])
        else:  # a line of a multi-line string left of the definition: text, kept as it is
            moved.append(line)
    text = "".join(moved)
    for old, new in copy.renames:
        text = text.replace(old, new)
    return text


@dataclass
class Mismatch:
    copy: Copy
    expected: str
    actual: str

    def describe(self, root: Path) -> str:
        return f"{self.copy.path.relative_to(root)}:{self.copy.start + 1}: differs from {self.copy.target}"


def compare(root: Path) -> tuple[list[str], list[Mismatch], int]:
    """Marker problems (one line each), the copies that differ from their original, the copies checked."""
    problems, mismatches, checked = [], [], 0
    for path in sorted((root / FOLDER).glob("*.py")):
        try:
            copies = find_copies(path, root)
        except MarkerError as err:
            problems.append(str(err))
            continue
        lines = path.read_text().splitlines(keepends=True)
        for copy in copies:
            if isinstance(copy, str):
                problems.append(copy)
                continue
            checked += 1
            try:
                expected = expected_text(copy, root)
            except MarkerError as err:
                problems.append(str(err))
                continue
            actual = "".join(lines[copy.start : copy.end])
            if actual != expected:
                mismatches.append(Mismatch(copy, expected, actual))
    return problems, mismatches, checked


def rewrite(mismatches: list[Mismatch]) -> None:
    for path in {m.copy.path for m in mismatches}:
        lines = path.read_text().splitlines(keepends=True)
        # From the bottom up, so that the line numbers of the copies above stay right.
        for m in sorted((m for m in mismatches if m.copy.path == path), key=lambda m: -m.copy.start):
            lines[m.copy.start : m.copy.end] = m.expected.splitlines(keepends=True)
        path.write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fix", action="store_true", help="rewrite the copies that differ from their original"
    )
    parser.add_argument("--diff", action="store_true", help="show how each copy differs from its original")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help=f"the repository root, the folder that holds {FOLDER}/ (default: this file's repository)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / FOLDER).is_dir():
        parser.error(f"{root} has no {FOLDER}/ folder")

    problems, mismatches, checked = compare(root)
    if args.fix:
        # A copy of a copy is right only once its own original is: repeat while a pass changes something
        # (a chain of n copies settles in n passes).
        for _ in range(checked):
            if not mismatches:
                break
            for m in mismatches:
                print(m.describe(root).replace(": differs from ", ": rewritten from "))
            rewrite(mismatches)
            problems, mismatches, checked = compare(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    for m in mismatches:
        print(m.describe(root))
        if args.diff:
            diff = difflib.unified_diff(
                m.expected.splitlines(), m.actual.splitlines(), m.copy.target, "copy", lineterm="", n=1
            )
            print("\n".join("    " + line for line in diff))
    if mismatches:
        print(
            f"{len(mismatches)} of {checked} copies differ from their original: "
            "`make fix-copies` rewrites them from it"
        )
    return 1 if problems or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
