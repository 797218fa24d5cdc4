"""python -m space: the cost table."""

from __future__ import annotations

import pytest

from space.__main__ import main

VARIANTS = ("baseline", "dense100", "double_conv", "sigmoid", "avgpool", "residual", "residual_inception")


def test_main_prints_baseline_keras_count_and_every_variant(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "64x128x128" in out
    baseline_row = next(line for line in out.splitlines() if line.startswith("baseline "))
    assert "1,351,873" in baseline_row
    assert "1,352,897" in baseline_row
    for name in VARIANTS:
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name


def test_main_gives_reason_when_valid_padding_is_too_small(capsys):
    assert main(["--size", "32", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "'same' padding, as level 4: feature map (0, 4, 4) vanishes at input 32x64x64" in out


def test_main_reports_variant_that_cannot_run_at_all(capsys):
    assert main(["--size", "8", "8", "8"]) == 0
    assert "cannot run: level" in capsys.readouterr().out


@pytest.mark.parametrize("size", [["0", "64", "64"], ["a", "64", "64"], ["64", "64"]])
def test_main_rejects_bad_size_in_one_line(capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", *size])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--size" in err


def test_main_help_states_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help text at any space
    assert "(default: 64 128 128" in out
    assert "(default: valid" in out
