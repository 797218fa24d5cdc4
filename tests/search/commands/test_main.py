"""lungct-nas / python -m search: one dispatcher over the commands' own main(argv)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.__main__ import COMMANDS, main, usage

ROOT = Path(__file__).resolve().parents[3]


def test_main_help_lists_every_command_in_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        (line,) = [x for x in out.splitlines() if x.strip().startswith(f"{name} ")]
        assert summary in line


def test_main_commands_are_the_tools_commands_and_each_has_a_main():
    assert list(COMMANDS) == ["run", "report", "export", "predict", "ablate", "phantom", "inspect", "download"]
    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_main_without_a_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.strip() == usage()


def test_main_unknown_command_is_one_line_with_the_nearest_name(capsys):
    assert main(["rnu", "--trials", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown command 'rnu'" in line and "did you mean run?" in line


def test_main_passes_flags_and_the_exit_code_through(tmp_path, capsys):
    # The same one-line refusal and exit 2 as python -m search.predict gives (tested there).
    assert main(["predict", str(tmp_path / "no-model"), str(tmp_path / "no-scan.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no-model" in err


def test_main_command_help_is_the_commands_own(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m search.run") and "--trials" in out and "(default: lungct)" in out


@pytest.mark.parametrize("command", [["lungct-nas"], [sys.executable, "-m", "search"]])
def test_main_both_forms_run_as_commands(command):
    if command[0] == "lungct-nas":
        script = shutil.which("lungct-nas")
        if script is None:
            pytest.fail("lungct-nas is not on PATH: install the project (pip install -e .)")
        command = [script]
    done = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "commands:" in done.stdout
    bad = subprocess.run([*command, "phantom", "--n", "0", "--out", "x"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
