"""README.md is the front door: short, with the three commands, and every link it holds leads somewhere.

mkdocs build --strict checks the links inside docs/; the README is not part of the site, so it is checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:)([^)\s#]*)(?:#([^)\s]*))?\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def headings(path: Path) -> set[str]:
    return {github_slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)}


def test_readme_is_short_and_shows_install_run_and_test():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120, "README.md is the front door: move detail into docs/"
    for command in ("pip install -e .", "python -m search.run --trials 50", "python -m pytest"):
        assert command in text
    assert "](docs/images/" in text, "the README shows a picture the tool drew"


def test_readme_links_lead_to_files_and_headings():
    for target, anchor in LINK.findall(README.read_text(encoding="utf-8")):
        path = (ROOT / target) if target else README
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in headings(path), f"README.md links to {target}#{anchor}: no such heading"
