"""The fenced code blocks and tables of README.md and docs/, as the documentation tests read them.

A block that must not run in the tests is preceded (on the line before its fence) by
``<!-- not-run: reason -->``; the reason is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

PYTHON = "python"
SHELL = "shell"
LANGUAGES = {"python": PYTHON, "py": PYTHON, "sh": SHELL, "bash": SHELL, "shell": SHELL}
"""Fence languages of examples; other blocks (``text`` captures, YAML) are not run."""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: where it is, its language and text, and why it is not run (if so)."""

    path: Path
    line: int
    """1-based line of the opening fence."""
    language: str
    """The fence's language as written (``python``, ``sh``, ...)."""
    text: str
    not_run: str | None
    """The reason given in ``<!-- not-run: ... -->``, or None when the block runs."""

    @property
    def kind(self) -> str | None:
        """``python``, ``shell``, or None for a block that is not an example."""
        return LANGUAGES.get(self.language)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of ``path``, in order.

    Raises ValueError for an unclosed fence, an empty not-run reason, or a not-run marker that
    is not directly followed by a fence (a marker left behind when its block moved).
    """
    lines = path.read_text().splitlines()
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        marker = _NOT_RUN.match(lines[i])
        if marker:
            if not marker["reason"].strip():
                raise ValueError(f"{path}:{i + 1}: not-run marker without a reason")
            if i + 1 >= len(lines) or not _FENCE.match(lines[i + 1]):
                raise ValueError(f"{path}:{i + 1}: not-run marker not followed by a code block")
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != opening["fence"]:
            body.append(lines[i][len(opening["indent"]) :])
            i += 1
        if i >= len(lines):
            raise ValueError(f"{path}:{start + 1}: unclosed code block")
        previous = _NOT_RUN.match(lines[start - 1]) if start > 0 else None
        blocks.append(
            CodeBlock(
                path=path,
                line=start + 1,
                language=opening["lang"].lower(),
                text="\n".join(body) + "\n",
                not_run=previous["reason"].strip() if previous else None,
            )
        )
        i += 1
    return blocks


def all_examples() -> list[CodeBlock]:
    """Every Python and shell block of README.md and docs/."""
    return [b for p in markdown_files() for b in code_blocks(p) if b.kind is not None]


def table_after(path: Path, header: str) -> list[list[str]]:
    """The body rows of the first table in ``path`` whose header line starts with ``header``.

    Cells are stripped; a ``|`` inside backticks is not a cell border.
    """
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(split_row(row))
            return rows
    raise AssertionError(f"{path.relative_to(ROOT)} has no table starting {header!r}")


def split_row(row: str) -> list[str]:
    cells, cell, in_code = [], "", False
    for ch in row.strip()[1:-1]:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def code_spans(text: str) -> list[str]:
    """The contents of every ``code span`` in ``text``."""
    return re.findall(r"`([^`]+)`", text)
