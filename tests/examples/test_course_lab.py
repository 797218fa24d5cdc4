"""examples/course_lab.ipynb's structure and examples/run_notebook.py, which CI uses to execute it.

The whole notebook runs in ``.ci/run`` with tiny settings (about a minute on a quiet 2-core CPU, several
under load); it is not run again here, so CI does not pay for it twice. These tests check what that run
relies on: no outputs in git, one ``parameters`` cell whose every value a later cell reads, the commands it
calls, and that the runner replaces values, refuses unknown ones and fails on a cell error.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOK = EXAMPLES / "course_lab.ipynb"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebook", EXAMPLES / "run_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_notebook = _runner()


@pytest.fixture(scope="module")
def nb() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_course_lab_is_valid_nbformat_4(nb):
    nbformat.validate(nb)
    assert nb.nbformat == 4


def test_course_lab_keeps_no_outputs(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.outputs for c in code] == [[]] * len(code)
    assert {c.execution_count for c in code} == {None}


def test_course_lab_opens_with_the_lab_explained(nb):
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    for words in ("CT-0", "CT-2/CT-3", "Dense(100)", "sigmoid", "average pooling", "residual-inception",
                  "routing table", "say nothing about real scans"):
        assert words in first.source, words


def test_course_lab_has_one_parameters_cell_before_any_other_code(nb):
    cell = run_notebook.parameters_cell(nb)
    assert cell is next(c for c in nb.cells if c.cell_type == "code")
    assert {"DATA", "TRIALS", "SIZE", "EPOCHS", "CONFIRM_EPOCHS", "PHANTOMS", "ABLATION_REPEATS", "ABLATION_FOLDS",
            "STUDIES_DIR", "BACKUP_TO", "DASHBOARD"} <= set(run_notebook.parameter_names(cell.source))


def test_course_lab_reads_every_parameter(nb):
    cell = run_notebook.parameters_cell(nb)
    read = {node.id for source in _code(nb) if source != cell.source for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert set(run_notebook.parameter_names(cell.source)) - read == set()


def test_course_lab_calls_each_command(nb):
    calls = {(node.func.value.id, node.func.attr) for source in _code(nb) for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name)}
    assert {("run", "main"), ("ablate", "main"), ("export", "main"), ("predict", "main"),
            ("report", "main")} <= calls
    assert any('"--saliency"' in source for source in _code(nb))


def test_set_parameters_replaces_values_and_keeps_comments():
    source = 'A = 1  # one\nSIZE = None    # voxels\nB = "x"\n'
    out = run_notebook.set_parameters(source, {"SIZE": "(16, 32, 32)", "B": '"y"'})
    assert out == 'A = 1  # one\nSIZE = (16, 32, 32)    # voxels\nB = "y"\n'


def test_set_parameters_refuses_a_name_the_cell_does_not_assign():
    with pytest.raises(ValueError, match="assigns no TRIAL "):
        run_notebook.set_parameters("TRIALS = 20\n", {"TRIAL": "3"})


def test_set_parameters_refuses_a_value_that_is_not_a_literal():
    with pytest.raises(ValueError, match=r"TRIALS=os\.getcwd\(\): not a Python literal"):
        run_notebook.set_parameters("TRIALS = 20\n", {"TRIALS": "os.getcwd()"})


def _tiny_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from pathlib import Path\nPath('ran').write_text(str(X))\nassert X == 2"),
    ])
    nbformat.write(nb, path)


@pytest.mark.slow
def test_run_notebook_runs_in_its_workdir_with_the_values_set(tmp_path):
    _tiny_notebook(tmp_path / "tiny.ipynb")
    work = tmp_path / "work"
    assert run_notebook.main([str(tmp_path / "tiny.ipynb"), "--set", "X=2", "--workdir", str(work),
                              "--timeout", "60"]) == 0
    assert (work / "ran").read_text() == "2"
    executed = nbformat.read(work / "tiny.executed.ipynb", as_version=4)
    assert [c.execution_count for c in executed.cells] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ipynb", "work"]
    assert nbformat.read(tmp_path / "tiny.ipynb", as_version=4).cells[1].outputs == []


@pytest.mark.slow
def test_run_notebook_fails_on_a_cell_error(tmp_path, capsys):
    _tiny_notebook(tmp_path / "tiny.ipynb")
    assert run_notebook.main([str(tmp_path / "tiny.ipynb"), "--workdir", str(tmp_path / "work"),
                              "--timeout", "60"]) == 1
    assert "AssertionError" in capsys.readouterr().err
