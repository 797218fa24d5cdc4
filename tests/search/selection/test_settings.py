"""search.selection.settings: a study's stored settings, read from older studies as they ran,
and settled against the flags."""

import contextlib
import dataclasses
import os
import threading

import optuna
import pytest
import torch

from lungct.errors import UsageError
from search.ablation.settings import AblationSettings
from search.selection.settings import (
    MAX_SPACE_BYTES,
    OLDER_STUDIES,
    DataSettings,
    GivenSettings,
    RunSettings,
    load_space_file,
    resolve_settings,
    stored_settings,
)
from space import SpaceBounds

CPU = torch.device("cpu")
# The keys every study made so far stores, and older versions of lungct-nas read.
STORED_KEYS = {"data", "task", "size", "epochs", "seed", "split_seed", "n_phantoms", "max_gflops", "folds",
               "confirm_epochs", "confirm_top", "confirm_folds", "bounds", "score"}
FULL = SpaceBounds.full().to_dict()

# Dicts as older versions wrote them, and what RunSettings.from_dict(d).to_dict() gave before the settings
# moved into search.selection.settings (computed with search/run.py at 5862755), less the full space's bounds.
OLDER = [
    ({"data": None, "size": [16, 16, 32], "epochs": 3},
     {"data": None, "task": "course", "size": [16, 16, 32], "epochs": 3, "seed": 0, "split_seed": 0,
      "n_phantoms": 200, "max_gflops": 0.0, "folds": 2, "confirm_epochs": 6, "confirm_top": 2, "confirm_folds": 2,
      "score": "auc"}),
    ({"data": "/d", "task": "course", "size": [32, 64, 64], "epochs": 4, "seed": 5, "n_phantoms": 100,
      "max_gflops": 1.5, "folds": 3},
     {"data": "/d", "task": "course", "size": [32, 64, 64], "epochs": 4, "seed": 5, "split_seed": 5,
      "n_phantoms": 100, "max_gflops": 1.5, "folds": 3, "confirm_epochs": 8, "confirm_top": 2, "confirm_folds": 3,
      "score": "auc"}),
    ({"data": None, "task": "severity", "size": [16, 16, 32], "epochs": 2, "seed": 1, "split_seed": 7,
      "n_phantoms": 50, "max_gflops": 0.0, "folds": 4, "confirm_epochs": 0, "confirm_folds": None, "bounds": None},
     {"data": None, "task": "severity", "size": [16, 16, 32], "epochs": 2, "seed": 1, "split_seed": 7,
      "n_phantoms": 50, "max_gflops": 0.0, "folds": 4, "confirm_epochs": 4, "confirm_top": 2, "confirm_folds": 4,
      "score": "auc"}),
    ({"data": None, "size": [16, 16, 32], "epochs": 1, "unknown_key": 1, "score": "auc_bn"},
     {"data": None, "task": "course", "size": [16, 16, 32], "epochs": 1, "seed": 0, "split_seed": 0,
      "n_phantoms": 200, "max_gflops": 0.0, "folds": 2, "confirm_epochs": 2, "confirm_top": 2, "confirm_folds": 2,
      "score": "auc_bn"}),
]


@pytest.mark.parametrize("older, expected", OLDER)
def test_run_settings_from_an_older_study_are_what_it_ran_with(older, expected):
    assert RunSettings.from_dict(older).to_dict() == expected | {"bounds": FULL}


def test_run_settings_dict_round_trip_keeps_todays_keys():
    settings = RunSettings(data="/x", task="severity", size=(16, 24, 20), split_seed=3, n_phantoms=40, epochs=2,
                           seed=1, max_gflops=0.5, folds=3, confirm_epochs=5, confirm_top=1, confirm_folds=4,
                           bounds=SpaceBounds().to_dict(), score="auc_bn")
    stored = settings.to_dict()
    assert set(stored) == STORED_KEYS and stored["size"] == [16, 24, 20]
    assert RunSettings.from_dict(stored) == settings


def test_run_settings_table_of_older_studies_covers_every_optional_setting():
    fields = {f.name for f in dataclasses.fields(RunSettings)}
    assert set(OLDER_STUDIES) == fields - {"size", "epochs"}  # the two every study stored


def test_run_settings_from_dict_needs_the_epochs():
    with pytest.raises(KeyError, match="epochs"):
        RunSettings.from_dict({"size": [16, 16, 32]})


def test_given_settings_have_the_stored_settings_fields():
    assert [f.name for f in dataclasses.fields(GivenSettings)] == [f.name for f in dataclasses.fields(RunSettings)]


def test_data_settings_of_run_settings_compare_only_the_data():
    a = RunSettings(size=(16, 16, 32), epochs=1)
    assert a.data_settings() == dataclasses.replace(a, epochs=5, seed=2).data_settings()
    assert a.data_settings() != dataclasses.replace(a, split_seed=1).data_settings()
    assert type(a.data_settings()) is DataSettings


def test_resolve_settings_fresh_study_takes_the_flags_then_the_cpu_defaults():
    settings, line = resolve_settings(GivenSettings(size=(16, 16, 32), epochs=2, split_seed=4), None, CPU)
    assert settings.size == (16, 16, 32) and settings.epochs == 2 and settings.split_seed == 4
    assert settings.seed == 0 and settings.folds == 2 and settings.task == "course" and settings.score == "auc_bn"
    assert settings.bounds == SpaceBounds().to_dict()
    assert "on the command line" in line


def test_resolve_settings_resumed_study_keeps_its_settings():
    stored = RunSettings(size=(16, 16, 32), epochs=3, seed=7, confirm_epochs=6).to_dict()
    settings, line = resolve_settings(GivenSettings(), stored, CPU)
    assert settings.to_dict() == stored and "kept from the study" in line


def test_resolve_settings_flag_that_contradicts_the_study_is_named():
    stored = RunSettings(size=(16, 16, 32), epochs=3).to_dict()
    with pytest.raises(UsageError, match=r"^study settings: this study was run with epochs=3;"):
        resolve_settings(GivenSettings(epochs=4), stored, CPU)


def test_resolve_settings_confirmation_settings_may_change_on_a_resumed_study():
    stored = RunSettings(size=(16, 16, 32), epochs=3, confirm_folds=3).to_dict()
    settings, _ = resolve_settings(GivenSettings(confirm_folds=5), stored, CPU)
    assert settings.confirm_folds == 5


def test_load_space_file_bad_toml_is_a_usage_error_naming_the_flag(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("batch_size = [2, 4\n")
    with pytest.raises(UsageError, match=r"^--space: .* is not valid TOML"):
        load_space_file(path)
    with pytest.raises(UsageError, match=r"^--space: cannot read"):
        load_space_file(tmp_path / "missing.toml")


def _space_error(path) -> str:
    """The one-line message ``load_space_file`` refuses ``path`` with."""
    with pytest.raises(UsageError) as caught:
        load_space_file(path)
    message = str(caught.value)
    assert message.startswith(f"--space: {path}") and "\n" not in message
    return message


def test_load_space_file_reads_the_fields_it_is_given(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('n_levels = [2, 3]\nbatch_size = [2, 4]\n')
    assert load_space_file(path) == SpaceBounds(n_levels=(2, 3), batch_size=(2, 4)).to_dict()


def test_load_space_file_huge_integer_is_refused_by_its_fields_limit(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_levels = [1, 99999999999999999999]\n")  # once 2 ** (n_levels - 1): minutes, then MemoryError
    assert _space_error(path).endswith(": SpaceBounds.n_levels: high 99999999999999999999, above the space.spec "
                                       "limit of 8")


def test_load_space_file_integer_too_long_to_convert_is_a_usage_error(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(f"n_levels = [1, {'9' * 5000}]\n")  # beyond Python's 4300 digits, a plain ValueError in tomllib
    assert "holds a number too long to read" in _space_error(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1"])
def test_load_space_file_not_in_utf8_is_a_usage_error(tmp_path, encoding):
    path = tmp_path / "space.toml"
    path.write_text('activation = ["relu"]  # café\n', encoding=encoding)
    _space_error(path)


def test_load_space_file_utf16_is_named(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_levels = [2, 3]\n", encoding="utf-16")
    assert "is UTF-16 text; a TOML file must be UTF-8" in _space_error(path)


def test_load_space_file_reads_utf8_after_a_byte_order_mark(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_levels = [2, 3]\n", encoding="utf-8-sig")
    assert load_space_file(path)["n_levels"] == [2, 3]


def test_load_space_file_nested_too_deep_is_a_usage_error(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("block = " + "[" * 30_000 + "]" * 30_000 + "\n")  # within the size cap, past the recursion limit
    assert "nested too deep" in _space_error(path)


def test_load_space_file_over_the_size_cap_is_refused(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_levels = [2, 3]\n" + "#" * MAX_SPACE_BYTES + "\n")
    assert f"more than the {MAX_SPACE_BYTES:,} a space file may hold" in _space_error(path)


def test_load_space_file_refuses_a_folder_and_a_device(tmp_path):
    assert _space_error(tmp_path).endswith("is a folder, not a regular file")
    if os.path.exists("/dev/null"):  # read as an empty file, it was the default space
        assert _space_error("/dev/null").endswith("is a character device, not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_space_file_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "space.toml"
    os.mkfifo(fifo)

    def give_a_blocked_reader_eof():  # so that a reader which waits for a writer fails this test instead of hanging
        with contextlib.suppress(OSError):  # no reader waits: ENXIO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    guard = threading.Timer(5.0, give_a_blocked_reader_eof)
    guard.start()
    try:
        assert _space_error(fifo).endswith("is a FIFO, not a regular file")
    finally:
        guard.cancel()


def test_load_space_file_too_many_choices_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("weight_decay = [" + ", ".join(f"{i}e-9" for i in range(5000)) + "]\n")
    assert _space_error(path).endswith(": SpaceBounds.weight_decay: 5,000 choices, more than the 64 a field may hold")


def test_load_space_file_repeated_choice_is_refused(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("batch_size = [2, 4, 2]\n")
    assert ": SpaceBounds.batch_size: has repeated choices" in _space_error(path)


def test_load_space_file_bool_for_an_integer_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_levels = [true, 3]\n")
    assert _space_error(path).endswith(": SpaceBounds.n_levels[0]: must be an integer, got True")


def test_load_space_file_unknown_field_suggests_the_nearest(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("n_level = [2, 3]\n")
    assert "unknown 'n_level'; did you mean 'n_levels'?" in _space_error(path)


def test_stored_settings_of_a_study_without_them_is_a_usage_error():
    study = optuna.create_study(study_name="bare")
    with pytest.raises(UsageError, match=r"^study: 'bare' has no stored settings"):
        stored_settings(study)


def test_ablation_settings_store_todays_keys_without_the_precision():
    settings = AblationSettings(data=None, task="course", size=(16, 24, 20), split_seed=0, n_phantoms=60, epochs=2,
                                folds=3, repeats=1, seed=0, amp=True)
    assert settings.to_dict() == {"data": None, "task": "course", "size": [16, 24, 20], "epochs": 2, "folds": 3,
                                  "repeats": 1, "seed": 0, "split_seed": 0, "n_phantoms": 60}
    assert settings.study_name("abc123") == "ablation-abc123-course-16x24x20-e2-k3r1-s0"
