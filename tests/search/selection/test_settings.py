"""search.selection.settings: a study's stored settings, read from older studies as they ran,
and settled against the flags."""

import dataclasses

import optuna
import pytest
import torch

from lungct.errors import UsageError
from search.ablation.settings import AblationSettings
from search.selection.settings import (
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
