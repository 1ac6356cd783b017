"""README.md's links and set-up commands say what the tree holds (mkdocs checks docs/ itself)."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

from markdown_blocks import ROOT, code_blocks

from otel_bpf.cli.args import parse_args

README = ROOT / "README.md"


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def test_readme_links_point_at_files_and_headings_that_exist() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert local
    for link in local:
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(path), f"README.md links to {link}: no such heading"


def test_anchor_check_can_fail() -> None:
    assert "what-stats-cost-the-programs" in anchors(ROOT / "docs" / "performance.md")
    assert slug("Sampling paths and kernel support") == "sampling-paths-and-kernel-support"


def set_up_commands() -> list[str]:
    return [b.text.strip() for b in code_blocks(README)[:2]]


def test_first_command_leaves_bpftop_otel_on_path_and_runs_the_live_demo() -> None:
    first, second = set_up_commands()
    steps = [shlex.split(step) for step in first.split(" && ")]
    assert ["python3", "-m", "venv", ".venv"] in steps
    assert [".", ".venv/bin/activate"] in steps, "the venv is not activated"
    install = next(s for s in steps if s[:2] == ["pip", "install"])
    # The README's Prometheus example needs the extra the quick start installs.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert install[2] == ".[prometheus]"
    assert re.search(r"^prometheus = \[", pyproject, flags=re.M)
    assert steps[-1][0] == "bpftop-otel"
    ns = parse_args(steps[-1][1:])
    assert ns.live and ns.demo
    assert second == "bash scripts/test.sh"


def test_readme_names_every_apt_package_the_test_command_may_install() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    packages = set(re.findall(r"need_apt\+=\(([\w.+-]+)\)", script))
    assert packages
    for page in (README, ROOT / "docs" / "development.md"):
        text = page.read_text()
        missing = sorted(p for p in packages if f"`{p}`" not in text)
        assert not missing, f"{page.name} does not say the test command installs {missing}"
