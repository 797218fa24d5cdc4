"""MkDocs hook: the repository files that the docs link to (benchmarks/RESULTS.md, the notebook) join the site.

A page links to a file outside docs/ by its path in the repository (``../benchmarks/RESULTS.md``), so the
link works where the Markdown is read as it is (GitHub, an editor). This hook adds each such file to the site
under ``repo/`` (a Markdown file as a page, and what it links to in turn) and points the link there, so it
works in the built site too. A link to a file that does not exist is left as it is, and ``mkdocs build
--strict`` fails on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = "repo"  # where the site keeps the repository files the docs link to
# A Markdown link's or image's target: ](path) or ](path#anchor), without a scheme (those are left alone).
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:)([^)\s#]+)")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _outside(source: Path, target: str, docs: Path, root: Path) -> Path | None:
    """The repository file ``target`` names from ``source`` when it lies outside docs/ (None: inside, or absent)."""
    path = (source.parent / target).resolve()
    if path.is_file() and path.is_relative_to(root) and not path.is_relative_to(docs):
        return path
    return None


def on_files(files: Files, config) -> Files:
    """Add every repository file a page links to (and those a linked Markdown file links to) under ``repo/``."""
    root, docs = _root(config), Path(config.docs_dir).resolve()
    queue = [Path(f.abs_src_path) for f in files.documentation_pages()]
    added: set[Path] = set()
    while queue:
        source = queue.pop()
        for target in LINK.findall(source.read_text(encoding="utf-8")):
            path = _outside(source, target, docs, root)
            if path is None or path in added:
                continue
            added.add(path)
            uri = f"{REPO}/{path.relative_to(root).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
            if path.suffix == ".md":
                queue.append(path)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    """Point a docs page's links to repository files at their copies under ``repo/``."""
    if page.file.src_uri.startswith(f"{REPO}/"):
        return markdown  # a repository file: its relative links hold inside repo/ as they do in the repository
    root, docs = _root(config), Path(config.docs_dir).resolve()
    source = Path(page.file.abs_src_path)
    here = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match) -> str:
        path = _outside(source, match.group(1), docs, root)
        if path is None:
            return match.group(0)
        return "](" + posixpath.relpath(f"{REPO}/{path.relative_to(root).as_posix()}", here or ".")

    return LINK.sub(relink, markdown)
