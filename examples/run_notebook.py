"""Execute a notebook with its ``parameters`` cell's values replaced, and fail on any cell error.

CI runs ``examples/course_lab.ipynb`` with tiny settings this way (``.ci/run``)::

    python examples/run_notebook.py examples/course_lab.ipynb --set TRIALS=3 --set 'SIZE=(16, 32, 32)'

The one cell tagged ``parameters`` (the papermill convention) holds ``NAME = value`` assignments; each
``--set NAME=VALUE`` replaces one value with a Python literal (checked with ``ast.literal_eval``), and a
name the cell does not assign is refused. The notebook runs under ``nbclient`` in a fresh kernel whose
working folder is a new temporary folder (so its ``studies/`` lands there), and the executed copy is
written only into that folder, never back beside the notebook: the notebook in git keeps no outputs.
Exit code: 0 every cell ran, 1 a cell failed or timed out, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

PARAMETERS_TAG = "parameters"


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The one code cell tagged ``parameters``.

    Raises:
        ValueError: none, or more than one.
    """
    cells = [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"the notebook needs exactly one code cell tagged {PARAMETERS_TAG!r}, it has {len(cells)}")
    return cells[0]


def parameter_names(source: str) -> list[str]:
    """Names the parameters cell assigns (``NAME = value`` at the top level), in order."""
    return [node.targets[0].id for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)]


def set_parameters(source: str, values: dict[str, str]) -> str:
    """``source`` with the value of each ``NAME = value`` in ``values`` replaced, comments and layout kept.

    Raises:
        ValueError: a name the cell does not assign, or a value that is not a Python literal.
    """
    for name, text in values.items():
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"--set {name}={text}: not a Python literal ({e})") from None
    assigned = {node.targets[0].id: node.value for node in ast.parse(source).body
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    unknown = sorted(set(values) - set(assigned))
    if unknown:
        raise ValueError(f"the parameters cell assigns no {', '.join(unknown)} (it has {', '.join(assigned)})")
    lines = source.splitlines(keepends=True)
    # Bottom-up, so an edit never moves the positions of the values still to replace.
    for name in sorted(values, key=lambda n: assigned[n].lineno, reverse=True):
        node = assigned[name]
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset:]
        lines[first: last + 1] = [head + values[name] + tail]
    return "".join(lines)


def parse_set(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/run_notebook.py", description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path, help="the .ipynb file to execute")
    p.add_argument("--set", dest="values", metavar="NAME=VALUE", type=parse_set, action="append", default=[],
                   help="replace a value of the parameters cell with this Python literal (repeatable)")
    p.add_argument("--timeout", type=int, default=1200, metavar="S",
                   help="seconds any one cell may run before the run fails (default: 1200)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="empty folder the kernel runs in and the executed copy goes to (default: a new temporary one)")
    args = p.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)
    try:
        cell = parameters_cell(nb)
        cell.source = set_parameters(cell.source, dict(args.values))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="course_lab-"))
    if args.workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            print(f"error: --workdir {workdir} is not empty", file=sys.stderr)
            return 2
    executed = workdir / f"{args.notebook.stem}.executed.ipynb"
    print(f"executing {args.notebook} in {workdir} with:\n{cell.source}", flush=True)
    start = time.monotonic()
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        print(f"error: a cell failed after {time.monotonic() - start:.0f} s:\n{e}", file=sys.stderr)
        return 1
    finally:
        nbformat.write(nb, executed)
        print(f"executed copy: {executed}", flush=True)
    print(f"every cell ran, in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
