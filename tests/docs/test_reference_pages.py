"""The generated reference pages (docs/gen_reference.py) match the parsers and the schema they are made from."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"
PACKAGES = ("search", "lungct", "space")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(gen: ModuleType) -> dict[str, str]:
    return {path.name: text for path, text in gen.pages().items()}


@pytest.mark.parametrize("name", ["flags.md", "study-attributes.md"])
def test_reference_page_equals_generated(fresh: dict[str, str], name: str):
    committed = (REFERENCE / name).read_text(encoding="utf-8")
    assert committed == fresh[name], f"docs/reference/{name} is stale: run python docs/gen_reference.py"


def test_flags_reference_covers_every_runnable_module(gen: ModuleType):
    runnable = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
                runnable.add(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__"))
    # "search" is the lungct-nas dispatcher, which the page lists as a table of the other commands.
    listed = {c.run_as.removeprefix("python -m ") for c in gen.commands()} | {"search"}
    assert runnable == listed, "a command is missing from docs/gen_reference.py's commands()"


def test_flags_reference_lists_every_argument_of_every_parser(gen: ModuleType, fresh: dict[str, str]):
    sections = fresh["flags.md"].split("\n## ")
    for command in gen.commands():
        title = f"`{command.name or command.run_as}`"
        (text,) = [s for s in sections if s.startswith(title + "\n")]
        for action in gen.parser_of(command)._actions:
            for shown in action.option_strings or [action.metavar or action.dest]:
                if shown not in ("-h", "--help"):
                    assert f"<code>{shown}" in text, f"{command.run_as}: {shown} is not on the page"


def test_study_attributes_page_explains_every_schema_name(fresh: dict[str, str]):
    from search.study import schema

    rows = dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", fresh["study-attributes.md"], flags=re.M))
    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    assert names <= rows.keys(), f"search/study/schema.py names missing from the page: {sorted(names - rows.keys())}"
    assert all(rows[name].strip() for name in names), "give the name a comment in search/study/schema.py"
