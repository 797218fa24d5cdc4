"""search.ablation.settings: the dict an ablation stores and the study name it gives are pinned, round-trip, and
change with what changes a run (never with the precision); what one invocation asks for."""

import dataclasses
import json

import pytest

from search.ablation.settings import SETTINGS_ATTR, AblationJob, AblationSettings
from search.selection.settings import DataSettings, from_fields

SETTINGS = AblationSettings(data="/data/mosmed", task="severe", size=(16, 24, 20), split_seed=3, n_phantoms=40,
                            epochs=5, folds=4, repeats=2, seed=11)
# What this version stores for SETTINGS and the study it names; a change here makes every stored ablation
# a different study (resumed ablations would start over), so it must be deliberate.
STORED = {"data": "/data/mosmed", "task": "severe", "size": [16, 24, 20], "split_seed": 3, "n_phantoms": 40,
          "epochs": 5, "folds": 4, "repeats": 2, "seed": 11}
NAME = "ablation-f00d1234-severe-16x24x20-e5-k4r2-s11"


def test_settings_attr_is_the_study_user_attr_settings():
    assert SETTINGS_ATTR == "settings"


def test_ablation_settings_to_dict_is_the_pinned_stored_dict_in_field_order():
    d = SETTINGS.to_dict()
    assert d == STORED
    assert list(d) == ["data", "task", "size", "split_seed", "n_phantoms", "epochs", "folds", "repeats", "seed"]
    assert json.loads(json.dumps(d)) == d  # plain JSON: the size is a list, not a tuple


def test_ablation_settings_study_name_is_pinned():
    assert SETTINGS.study_name("f00d1234") == NAME


def test_ablation_settings_precision_changes_neither_the_stored_dict_nor_the_study_name():
    bf16 = dataclasses.replace(SETTINGS, amp=True)
    assert bf16.to_dict() == STORED and "amp" not in bf16.to_dict()
    assert bf16.study_name("f00d1234") == NAME


def test_ablation_settings_round_trip_through_the_stored_json():
    back = from_fields(AblationSettings, json.loads(json.dumps(SETTINGS.to_dict())))
    assert back == SETTINGS and back.size == (16, 24, 20) and isinstance(back.size, tuple)
    assert back.to_dict() == STORED and back.study_name("f00d1234") == NAME


def test_ablation_settings_of_the_default_phantoms_store_data_as_none():
    settings = AblationSettings(size=(16, 24, 20), epochs=1, folds=2, repeats=1, seed=0)
    assert settings.to_dict() == {"data": None, "task": "course", "size": [16, 24, 20], "split_seed": 0,
                                  "n_phantoms": 200, "epochs": 1, "folds": 2, "repeats": 1, "seed": 0}
    assert settings.study_name("abc") == "ablation-abc-course-16x24x20-e1-k2r1-s0"


@pytest.mark.parametrize("change, part", [
    ({"epochs": 6}, "-e6-"), ({"folds": 3}, "-k3r2-"), ({"repeats": 1}, "-k4r1-"), ({"seed": 12}, "-s12"),
    ({"size": (20, 24, 16)}, "-20x24x16-"), ({"task": "course"}, "-course-"),
])
def test_ablation_settings_study_name_changes_with_each_setting_of_a_run(change, part):
    name = dataclasses.replace(SETTINGS, **change).study_name("f00d1234")
    assert name != NAME and part in name


def test_ablation_settings_study_name_tells_the_scans_apart_by_their_fingerprint_alone():
    # The split seed and the data folder pick which scans are folded; the fingerprint of those scans says so.
    other_split = dataclasses.replace(SETTINGS, split_seed=4, data="/elsewhere", n_phantoms=60)
    assert other_split.study_name("f00d1234") == NAME
    assert SETTINGS.study_name("beef5678") == "ablation-beef5678-severe-16x24x20-e5-k4r2-s11"


def test_ablation_settings_data_settings_are_the_data_part_alone():
    assert SETTINGS.data_settings() == DataSettings(data="/data/mosmed", task="severe", size=(16, 24, 20),
                                                    split_seed=3, n_phantoms=40)


def test_ablation_settings_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.epochs = 1
    with pytest.raises(TypeError):
        AblationSettings(None, "course", (16, 24, 20), 0, 200, 1, 2, 1, 0)


def test_ablation_settings_without_a_run_setting_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="epochs"):
        AblationSettings(size=(16, 24, 20), folds=2, repeats=1, seed=0)


def test_ablation_job_defaults_write_under_studies_and_ask_for_no_search_study():
    job = AblationJob(variants=("baseline", "sigmoid"))
    assert job == AblationJob(("baseline", "sigmoid"), False, None, None, None, None, "studies", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.out = "elsewhere"
