import threading

import optuna
import pytest
from optuna.trial import TrialState

import search.study.storage
from search.study.storage import (
    create_or_load_study,
    make_pruner,
    open_storage,
    parse_objectives,
    redact,
    shareable_storage,
)


def _controlled_study(pruner_name: str) -> optuna.Study:
    """Trials whose fold AUCs are fixed by a parameter: good trials first, then clearly poor ones.

    Each trial reports after each of 3 folds, as the search's objective does (step k = mean of k folds).
    """
    # A fixed name: Hyperband assigns trials to brackets by a hash of the study name.
    study = optuna.create_study(study_name="controlled", direction="maximize",
                                pruner=make_pruner(pruner_name, max_folds=3),
                                sampler=optuna.samplers.TPESampler(seed=0))
    for quality in [0.9] * 6 + [0.2] * 6:
        study.enqueue_trial({"quality": quality})

    def objective(trial):
        quality = trial.suggest_float("quality", 0.0, 1.0)
        for fold in range(1, 4):
            trial.report(quality + 0.001 * fold, fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=12)
    return study


@pytest.mark.parametrize("name", ["hyperband", "median"])
def test_make_pruner_prunes_clearly_worse_trials(name):
    trials = _controlled_study(name).trials
    poor = [t for t in trials if t.params["quality"] < 0.5]
    assert sum(t.state == TrialState.PRUNED for t in poor) >= 3
    good = [t for t in trials if t.params["quality"] > 0.5]
    assert all(t.state == TrialState.COMPLETE for t in good)
    # Pruning saves folds: the poor trials ran fewer folds than the good ones did.
    assert sum(len(t.intermediate_values) for t in poor) < 0.75 * sum(len(t.intermediate_values) for t in good)


def test_make_pruner_none_never_prunes():
    assert all(t.state == TrialState.COMPLETE for t in _controlled_study("none").trials)


def test_make_pruner_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="pruner: unknown pruner 'asha'"):
        make_pruner("asha", 5)


def test_parse_objectives_accepts_auc_first_only():
    assert parse_objectives("auc, params") == ("auc", "params")
    with pytest.raises(ValueError):
        parse_objectives("params,auc")


@pytest.mark.parametrize("url, secret", [
    ("postgresql://alice:s3cret@db.example:5432/optuna", "s3cret"),
    ("postgresql://alice@db.example/optuna?password=s3cret", "s3cret"),
    ("postgresql://alice@db.example/optuna?sslmode=require&PassWord=s3cret", "s3cret"),
    ("mysql+pymysql://alice@db/optuna?passwd=s3cret", "s3cret"),
    ("postgresql://db/optuna?pwd=s3cret", "s3cret"),
    ("postgresql://db/optuna?client_secret=s3cret", "s3cret"),
    ("postgresql://db/optuna?Token=s3cret", "s3cret"),
    ("sqlite:////data/studies/lungct.db?password=s3cret", "s3cret"),
    ("not a url:alice:s3cret@db?token=t0ken", "s3cret"),
])
def test_redact_masks_every_password_and_credential_in_the_query(url, secret):
    masked = redact(url)
    assert secret not in masked and "t0ken" not in masked and "***" in masked


def test_redact_keeps_what_is_not_a_credential():
    assert redact("postgresql://alice:s3cret@db.example:5432/optuna?sslmode=require") == \
        "postgresql://alice:***@db.example:5432/optuna?sslmode=require"
    assert redact("sqlite:///studies/lungct.db") == "sqlite:///studies/lungct.db"


def test_shareable_storage_names_a_sqlite_file_without_its_folder():
    assert shareable_storage("sqlite:////home/alice/studies/lungct.db?password=x") == "sqlite:///lungct.db?password=***"


def test_shareable_storage_names_a_database_server_by_its_scheme_alone():
    assert shareable_storage("postgresql://alice:s3cret@db/optuna") == "postgresql://"
    url = "postgresql+psycopg://alice@/optuna?host=/run/postgresql&port=5433"
    assert shareable_storage(url) == "postgresql+psycopg://"  # no socket path, user, port or database name
    assert shareable_storage("not a url") == "a database"


@pytest.mark.parametrize("where", ["missing/folder/lungct.db", "a_file/lungct.db"])
def test_open_storage_unopenable_sqlite_file_is_a_one_line_value_error(tmp_path, where):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError) as caught:
        open_storage(f"sqlite:///{tmp_path / where}?password=s3cret")
    message = str(caught.value)
    assert message.startswith("storage: cannot open sqlite:///") and "unable to open database file" in message
    assert "s3cret" not in message and len(message.splitlines()) == 1


def test_open_storage_error_never_shows_the_password():
    with pytest.raises(ValueError) as caught:
        open_storage("nosuchdialect://alice:s3cret@db/optuna?token=t0ken")
    assert "s3cret" not in str(caught.value) and "t0ken" not in str(caught.value)


def test_create_or_load_study_racing_creators_make_one_study_with_one_setting(tmp_path, monkeypatch):
    """Two runs start one study at once: one creates it with its settings, the other adopts them."""
    url = f"sqlite:///{tmp_path}/race.db"
    both_looked = threading.Barrier(2, timeout=30)
    real_names = search.study.storage._study_names

    def names_then_wait(storage):  # both runs see no study before either creates it
        names = real_names(storage)
        both_looked.wait()
        return names

    monkeypatch.setattr(search.study.storage, "_study_names", names_then_wait)
    results, errors = {}, []

    def start(epochs):
        try:
            study, created = create_or_load_study("race", open_storage(url), seed=0, pruner="none", max_folds=2,
                                                   attrs={"settings": {"epochs": epochs}})
            results[epochs] = (created, study.user_attrs["settings"])
        except Exception as e:  # the test reports whatever a racing run raised
            errors.append(e)

    threads = [threading.Thread(target=start, args=(epochs,)) for epochs in (1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    created = [epochs for epochs, (new, _) in results.items() if new]
    assert len(created) == 1  # exactly one run says "new"
    assert [settings for _, settings in results.values()] == [{"epochs": created[0]}] * 2
    study = optuna.load_study(study_name="race", storage=url)
    assert len(study.trials) == 1 and study.trials[0].user_attrs["baseline"]  # one baseline, not two


def test_create_or_load_study_waits_for_a_study_being_created_then_gives_a_one_line_error(tmp_path):
    url = f"sqlite:///{tmp_path}/half.db"
    optuna.create_study(study_name="half", storage=url)  # a creator that died before marking it complete
    with pytest.raises(ValueError, match=r"'half' exists but was never completed .* start a new --study NAME"):
        create_or_load_study("half", open_storage(url), seed=0, pruner="none", max_folds=2, wait_s=0.5)
