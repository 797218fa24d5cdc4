"""Write the generated reference pages: python docs/gen_reference.py

- docs/reference/flags.md, from the commands' own argparse parsers: each parser is the one the command's
  ``main(argv)`` builds (caught as it parses), so the page cannot drift from ``--help``;
- docs/reference/study-attributes.md, from the attribute names and comments of ``search.study.schema`` and
  the stored settings' fields.

tests/docs/test_reference_pages.py checks that the committed pages are this script's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
FLAGS_PAGE = ROOT / "docs" / "reference" / "flags.md"
ATTRS_PAGE = ROOT / "docs" / "reference" / "study-attributes.md"
REGENERATE = "python docs/gen_reference.py"


@dataclass(frozen=True)
class Command:
    """One command: its ``lungct-nas`` name (None where the dispatcher has none) and its module."""

    name: str | None
    module: str  # the module whose main(argv) parses the flags

    @property
    def run_as(self) -> str:
        """What a user types: ``python -m <module>`` (a package's ``__main__`` or ``cli`` runs as the package)."""
        return "python -m " + self.module.removesuffix(".__main__").removesuffix(".cli")


def commands() -> list[Command]:
    """Every command a user can run: the dispatcher's, then ``python -m space`` (no dispatcher name)."""
    from search.__main__ import COMMANDS

    return [Command(name, module) for name, (module, _) in COMMANDS.items()] + [Command(None, "space.__main__")]


class _Parsed(BaseException):
    """Raised in place of parsing: carries the parser out of ``main`` before it does any work."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(command: Command) -> argparse.ArgumentParser:
    """The parser ``command``'s ``main(argv)`` builds: caught at ``parse_args``, before anything runs."""

    def caught(parser: argparse.ArgumentParser, *args, **kwargs):
        raise _Parsed(parser)

    main = importlib.import_module(command.module).main
    # A help text that names this machine's core count is written with "N", so the page is the same everywhere.
    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught), \
            mock.patch("os.cpu_count", return_value=_Placeholder()):
        try:
            main([])
        except _Parsed as got:
            return got.parser
    raise RuntimeError(f"{command.module}.main([]) returned without parsing flags")


class _Placeholder(int):
    """A core count that prints as N (and counts as 2 where code does arithmetic with it)."""

    def __new__(cls):
        return super().__new__(cls, 2)

    def __format__(self, spec: str) -> str:
        return "N"

    def __str__(self) -> str:
        return "N"

    __repr__ = __str__


def _text(s: str) -> str:
    """Help or description text as Markdown: ``code`` as code, everything else literal (no stray emphasis or tags)."""
    parts = re.split(r"``(.+?)``", " ".join(s.split()))
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(re.sub(r"([\\`*_|\[\]])", r"\\\1", html.escape(part, quote=False)))
    return "".join(out)


def _metavar(action: argparse.Action) -> str:
    """The value an option takes, as --help writes it (D H W, {auto,cpu,cuda}, SCAN [SCAN ...]): argparse's own."""
    if action.nargs == 0:
        return ""
    default = action.dest if not action.option_strings else action.dest.upper()
    return argparse.HelpFormatter("prog")._format_args(action, default)  # what --help calls; argparse has no public one


def _default(action: argparse.Action) -> str:
    """The parser's own default: what the value is when the flag is left out."""
    if action.required:
        return "required"
    if action.nargs == 0:
        return "off" if action.default in (False, None) else "on"
    if action.default is None or action.default == argparse.SUPPRESS:
        return "—"
    value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else str(action.default)
    return f"<code>{html.escape(value)}</code>"


def _help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's %(default)s-style fields filled in, as --help shows it."""
    if not action.help:
        return ""
    fields = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    if fields.get("choices") is not None:
        fields["choices"] = ", ".join(map(str, fields["choices"]))
    return action.help % dict(fields, prog=prog)


def section(command: Command, parser: argparse.ArgumentParser) -> str:
    """One command's part of the page: how to run it, what it does, a table of its arguments and flags."""
    title = f"`{command.run_as}`" if command.name is None else f"`{command.name}`"
    lines = [f"## {title}", ""]
    forms = [f"`lungct-nas {command.name}`"] if command.name else []
    lines += [f"Run as {' or '.join([*forms, f'`{command.run_as}`'])}, with the flags below.", ""]
    if parser.description:
        lines += [_text(parser.description), ""]
    lines += ["| argument | default | what it does |", "| --- | --- | --- |"]
    for action in parser._actions:  # argparse keeps no public list of its arguments
        if isinstance(action, argparse._HelpAction):
            continue
        invocation = ", ".join(action.option_strings) or ""
        metavar = _metavar(action)
        shown = " ".join(part for part in (invocation, metavar) if part)
        described = _text(_help(action, parser.prog))
        lines.append(f"| <code>{html.escape(shown)}</code> | {_default(action)} | {described} |")
    lines.append("")
    if parser.epilog:
        lines += [_text(parser.epilog), ""]
    return "\n".join(lines)


def dispatcher() -> str:
    """The ``lungct-nas`` entry point: its commands, one line each, from the dispatcher's own table."""
    from search.__main__ import COMMANDS

    lines = ["## `lungct-nas`", "",
             "`lungct-nas COMMAND [flags]` (or `python -m search COMMAND [flags]`) runs the command's module with "
             "the same flags, defaults, messages and [exit codes](exit-codes.md); `lungct-nas --help` lists the "
             "commands, `lungct-nas --version` prints the version.", "",
             "| command | module | what it does |", "| --- | --- | --- |"]
    for name, (module, summary) in COMMANDS.items():
        lines.append(f"| [`{name}`](#{name}) | `{Command(name, module).run_as}` | {_text(summary)} |")
    return "\n".join([*lines, ""])


def render_flags() -> str:
    """The flags page: the dispatcher, then every command's arguments."""
    head = [
        "# Flags of every command",
        "",
        f"<!-- Generated by {REGENERATE} from the commands' argparse parsers; do not edit by hand. -->",
        "",
        "Every command also takes `-h`/`--help`, which prints the same flags. In the tables, *default* is the "
        "parser's own value when the flag is left out; — means the command settles it (from the study, the "
        "device or the data), as the flag's text says.",
        "",
    ]
    sections = [dispatcher()] + [section(c, parser_of(c)) for c in commands()]
    return "\n".join(head) + "\n" + "\n".join(sections)


def render_attributes() -> str:
    """The study-attributes page: the names ``search.study.schema`` declares, grouped and explained by its comments."""
    from search.selection.settings import RunSettings
    from search.study import schema

    source = Path(schema.__file__).read_text(encoding="utf-8")
    lines = [
        "# What a study stores",
        "",
        f"<!-- Generated by {REGENERATE} from search/study/schema.py; do not edit by hand. -->",
        "",
        "A study lives in its Optuna storage (`studies/<study>.db` by default). Every value is JSON, as Optuna "
        "stores user attributes: read them with `optuna.load_study(...).user_attrs` and each trial's "
        "`user_attrs`, or in optuna-dashboard. The names come from `search.study.schema`, which every writer and "
        "reader uses.",
        "",
    ]
    header = ["| attribute | what it holds |", "| --- | --- |"]
    for line in source.splitlines():
        group = re.match(r"# -- (.+?) -+$", line)
        entry = re.match(r'([A-Z][A-Z0-9_]*) = "([^"]+)"\s*(?:#\s*(.*))?$', line)
        if group:
            title = group.group(1)
            lines += ["", f"## {title[0].upper()}{title[1:]}", "", *header]
        elif entry:
            name = entry.group(2)
            lines.append(f"| `{name}` | {_text(entry.group(3) or _UNCOMMENTED.get(name, ''))} |")
    stored = [f.name for f in dataclasses.fields(RunSettings) if f.metadata.get("stored", True)]
    lines += ["", f"The study attribute `{schema.STUDY_SETTINGS}` holds these keys (a resumed run keeps them; "
              "studies made by older versions get the values they ran with): "
              + ", ".join(f"`{name}`" for name in stored) + ".", ""]
    return "\n".join(lines)


# What the names without a comment in search/study/schema.py hold (a name missing here shows an empty cell).
_UNCOMMENTED = {
    "params": "the network's parameters, as PyTorch counts them",
    "keras_params": "its parameters as Keras counts them (the course's figures)",
    "gflops": "forward GFLOPs per sample at the input size",
    "device": "the device it trained on",
    "folds_file": "an ablation study's saved fold assignment",
    "wall_seconds": "wall-clock time of the trial",
    "train_seconds": "time spent training",
    "epoch_seconds": "mean training time per epoch",
    "samples_per_s": "training speed, samples per second",
    "prune_reason": "why it was pruned",
    "fail_reason": "why it failed",
    "sensitivity": "ablation: last-epoch validation sensitivity at threshold 0.5",
    "specificity": "ablation: last-epoch validation specificity at threshold 0.5",
    "settings": "the study's stored settings (the keys below)",
    "objectives": "the study's objectives: auc, then params or flops in a multi-objective study",
    "data_summary": "the data the study searched on: layout, counts, the split file",
}


def pages() -> dict[Path, str]:
    """Every generated page and its text."""
    return {FLAGS_PAGE: render_flags(), ATTRS_PAGE: render_attributes()}


def main() -> int:
    """Write the pages."""
    sys.path.insert(0, str(ROOT))  # run as a script, this folder comes first on the path, not the checkout
    for path, text in pages().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
