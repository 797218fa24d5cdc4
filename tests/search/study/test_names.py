"""search.study.names: which study names are plain file-name components, and how --study refuses the others."""

import argparse
import re

import pytest

from search.study.names import MAX_LENGTH, check_study_name, study_name


@pytest.mark.parametrize("name", ["lungct", "run_2", "a.b-c+d=e@f", "_private", "Lunge-Ø", "肺", "x" * MAX_LENGTH])
def test_check_study_name_returns_a_plain_name_unchanged(name):
    assert check_study_name(name) == name


@pytest.mark.parametrize("name", ["", "   "])
def test_check_study_name_refuses_an_empty_or_blank_name(name):
    with pytest.raises(ValueError, match=r"^--study: a study name cannot be empty or blank"):
        check_study_name(name)


def test_check_study_name_refuses_one_character_more_than_the_limit_with_its_length():
    with pytest.raises(ValueError, match=rf"at most {MAX_LENGTH} characters, got {MAX_LENGTH + 1}"):
        check_study_name("x" * (MAX_LENGTH + 1))


@pytest.mark.parametrize("name, shown", [("a/b", "'/'"), ("..\\x", "'\\\\'"), ("two words", "' '"),
                                         ("tab\there", "'\\t'"), ("rtl\u202eexe", "'\\u202e'")])
def test_check_study_name_names_the_character_it_refuses_escaped(name, shown):
    with pytest.raises(ValueError) as caught:
        check_study_name(name)
    message = str(caught.value)
    assert message.startswith("--study: ") and shown in message
    assert "\t" not in message and "\u202e" not in message  # escaped, never printed raw


@pytest.mark.parametrize("name", [".hidden", "-flag", "+plus", "..", "@at"])
def test_check_study_name_refuses_a_leading_dot_dash_or_punctuation(name):
    with pytest.raises(ValueError, match=re.escape(f"starts with {name[0]!r}")):
        check_study_name(name)


def test_study_name_returns_a_valid_name_as_argparse_type():
    assert study_name("ok-1") == "ok-1"


def test_study_name_raises_argparse_type_error_without_the_flag_prefix():
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        study_name("a/b")
    assert not str(caught.value).startswith("--study")
    assert "'/'" in str(caught.value)


def test_study_name_error_reads_as_a_usage_error_from_argparse(capsys):
    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--study", type=study_name)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--study", ".x"])
    assert caught.value.code == 2
    assert "argument --study: '.x' starts with '.'" in capsys.readouterr().err
