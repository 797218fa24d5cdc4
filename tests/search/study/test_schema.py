"""search.study.schema: the trial and study attribute names are distinct, flat, and the names studies already hold."""

import re
from collections import Counter

from search.study import schema

NAMES = {k: v for k, v in vars(schema).items() if k.isupper() and not k.startswith("_")}
TRIAL = {k: v for k, v in NAMES.items() if not k.startswith("STUDY_")}
STUDY = {k: v for k, v in NAMES.items() if k.startswith("STUDY_")}

# What studies written before issue 23 hold: reading them needs these exact attribute names (a rename of the
# Python constant is free, a change of its value makes every existing study unreadable).
STORED_TRIAL_NAMES = {
    "amp_bf16", "baseline", "batchnorm_recomputed", "cost_fallback", "device", "epoch_seconds", "epochs_run",
    "fail_reason", "fold_aucs", "fold_ses", "folds_file", "gflops", "keras_params", "n_val", "padding_fallback",
    "params", "precision", "prune_reason", "retry_of", "retry_reason", "samples_per_s", "score", "score_se", "spec",
    "train_loss", "train_seconds", "train_spec", "val_auc", "wall_seconds", "weights_artifact", "worker",
}
STORED_STUDY_NAMES = {"baseline_note", "confirmation", "data_summary", "objectives", "settings", "space_bounds",
                      "time_plan"}


def test_schema_names_are_non_empty_flat_snake_case_strings():
    assert TRIAL and STUDY
    bad = {k: v for k, v in NAMES.items() if not (isinstance(v, str) and re.fullmatch(r"[a-z][a-z0-9_]*", v))}
    assert bad == {}


def test_schema_trial_attribute_names_are_distinct():
    counts = Counter(TRIAL.values())
    clashes = {k: v for k, v in TRIAL.items() if counts[v] > 1}
    assert clashes == {}  # two writers sharing a name would overwrite each other's attribute


def test_schema_study_attribute_names_are_distinct():
    assert len(set(STUDY.values())) == len(STUDY)


def test_schema_keeps_every_trial_attribute_name_existing_studies_hold():
    assert STORED_TRIAL_NAMES - set(TRIAL.values()) == set()


def test_schema_keeps_every_study_attribute_name_existing_studies_hold():
    assert STORED_STUDY_NAMES - set(STUDY.values()) == set()
