"""The Optuna study: storage URL, sampler, pruner, and the baseline as trial 0 of every new study."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search import schema
from space import SpaceBounds, baseline_params

PRUNERS = ("hyperband", "median", "none")
SAMPLERS = ("tpe", "random")
OBJECTIVES = {"auc": "maximize", "params": "minimize", "flops": "minimize"}
BASELINE_ATTR = schema.BASELINE
BASELINE_NOTE_ATTR = schema.STUDY_BASELINE_NOTE


def default_storage(study: str, studies_dir: str | Path = "studies") -> str:
    """``sqlite:///studies/<study>.db``, creating the folder."""
    Path(studies_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(studies_dir) / study}.db"


def redact(url: str) -> str:
    """The storage URL with any password masked, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for any SQLAlchemy URL, with heartbeats so a killed run's trial is failed later.

    A trial whose process died (kill -9, power cut) stops beating; the next run marks it failed
    instead of leaving it RUNNING forever.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30,
                                              grace_period=120)
    except (ArgumentError, ValueError, ImportError) as e:
        raise ValueError(f"storage: cannot open {redact(url)}: {e}") from None


def make_pruner(name: str, max_folds: int) -> optuna.pruners.BasePruner:
    """Hyperband or median over cross-validation folds (step k = the mean AUC of the first k folds), or none.

    A trial reports only after a whole fold, so a pruning decision always rests on at least one fold's
    validation part scored at its final epoch.
    """
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_folds, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: unknown pruner {name!r} (choose from {', '.join(PRUNERS)})")


def parse_objectives(text: str) -> tuple[str, ...]:
    """``auc`` or ``auc,params`` / ``auc,flops`` -> a tuple of objective names, auc first."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names or names[0] != "auc" or len(set(names)) != len(names) or len(names) > 2:
        raise ValueError(f"objectives: expected auc, auc,params or auc,flops; got {text!r}")
    return names


def create_or_load_study(name: str, storage: optuna.storages.BaseStorage, *, seed: int, pruner: str,
                         max_folds: int, objectives: tuple[str, ...] = ("auc",),
                         bounds: SpaceBounds | None = None, sampler: str = "tpe") -> tuple[optuna.Study, bool]:
    """Open the study ``name`` or create it; a new study gets the seed baseline enqueued as trial 0.

    Returns:
        The study, and whether it was created now.

    Raises:
        ValueError: An existing study has other objectives than those asked for.
    """
    directions = [OBJECTIVES[o] for o in objectives]
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if sampler == "random":  # the reference a sampler must beat (benchmarks), and a plain random search
        sampler_obj = optuna.samplers.RandomSampler(seed=seed)
    elif len(objectives) == 1:
        sampler_obj = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler_obj = optuna.samplers.NSGAIISampler(seed=seed)
    # Optuna does not prune multi-objective studies.
    pruner_obj = make_pruner(pruner, max_folds) if len(objectives) == 1 else optuna.pruners.NopPruner()
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler_obj, pruner=pruner_obj)
        stored = tuple(study.user_attrs.get(schema.STUDY_OBJECTIVES, ("auc",)))
        if stored != objectives:
            raise ValueError(f"objectives: study {name!r} was created with --objectives {','.join(stored)}; "
                             f"use that, or a new --study name")
        return study, False
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler_obj, pruner=pruner_obj,
                                directions=directions)
    study.set_user_attr(schema.STUDY_OBJECTIVES, list(objectives))
    try:
        params = baseline_params(bounds)
    except ValueError as e:
        # A tiny input fits fewer levels than the seed has: the baseline is outside this size's space, so it
        # is not a trial; the confirmation stage still trains it as the reference.
        study.set_user_attr(BASELINE_NOTE_ATTR, f"the seed baseline is not a trial of this study ({e})")
    else:
        study.enqueue_trial(params, user_attrs={BASELINE_ATTR: True})
    return study, True


def load_existing_study(name: str, storage_url: str) -> optuna.Study:
    """Open a study that must already exist (for report, export, ablate --study).

    Raises:
        ValueError: No study of that name in the storage; the message lists the studies there.
    """
    url = make_url(storage_url) if "://" in storage_url else None
    if url is not None and url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:") \
            and not Path(url.database).is_file():
        # Opening a missing SQLite file would create an empty database under a mistyped name.
        raise ValueError(f"study: no study {name!r} in {redact(storage_url)}: that database file does not exist "
                         "(run python -m search.run first, or give the --study/--storage of an existing study)")
    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        have = f"; studies there: {', '.join(sorted(names))}" if names else "; it holds no study yet"
        raise ValueError(f"study: no study {name!r} in {redact(storage_url)}{have} "
                         "(run python -m search.run first)")
    return optuna.load_study(study_name=name, storage=storage)


def fail_running(study: optuna.Study, number: int | None) -> None:
    """Mark this process's trial ``number`` failed if it is still RUNNING (Optuna fails it itself in most cases).

    Called after Ctrl-C by every command that runs trials, so an interrupted run leaves no RUNNING trial.
    """
    if number is None:
        return
    trials = study.get_trials(deepcopy=False)
    if number < len(trials) and trials[number].state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)
