"""The Optuna study: storage URL, sampler, pruner, and the baseline as trial 0 of every new study."""

from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from lungct.errors import UsageError
from search.study import schema
from search.study.faults import StorageError, classify, storage_fault
from search.study.names import check_study_name
from search.study.notes import name_objectives
from search.study.recovery import requeue_stale_trial as _requeue_stale
from search.study.recovery import worker_identity
from space import SpaceBounds, baseline_params

PRUNERS = ("hyperband", "median", "none")
SAMPLERS = ("tpe", "random")
OBJECTIVES: dict[str, Literal["minimize", "maximize"]] = {"auc": "maximize", "params": "minimize", "flops": "minimize"}
BASELINE_ATTR = schema.BASELINE
BASELINE_NOTE_ATTR = schema.STUDY_BASELINE_NOTE
# A query parameter whose name holds one of these (any case) carries a credential: ?password=, ?sslpassword=,
# ?auth_token=, ?client_secret= ...
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token")
MASK = "***"
# How long a run that finds a study being created by another run waits for that run to store its settings.
CREATION_WAIT_S = 60.0
OPEN_ATTEMPTS = 3  # opening a new database retries when another run is creating its tables at that moment
# A running trial's worker writes a heartbeat every 30 s; one silent for 120 s has died (or lost the database).
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
_SECRET_QUERY = re.compile(r"([?&;][^=&;#]*(?:" + "|".join(SECRET_WORDS) + r")[^=&;#]*=)[^&;#]*", re.IGNORECASE)
_USERINFO = re.compile(r":[^:/@]*@")  # the ":password@" of "user:password@host"


def default_storage(study: str, studies_dir: str | Path = "studies") -> str:
    """``sqlite:///studies/<study>.db``, creating the folder.

    Raises:
        ValueError: ``study`` is not a plain file-name component (``search.study.names``), or the folder cannot be
            created.
    """
    check_study_name(study)
    try:
        Path(studies_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--studies-dir: cannot create {studies_dir}: {e.strerror or e}") from None
    return f"sqlite:///{Path(studies_dir) / study}.db"


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def _parse(url: str) -> URL | None:
    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def _render(url: URL) -> str:
    """``url`` as text; render_as_string quotes a masked query value, shown unquoted it reads as masked."""
    return url.render_as_string(hide_password=False).replace("%2A%2A%2A", MASK)


def redact(url: str) -> str:
    """The storage URL with its password and every credential in its query masked: what is printed or written.

    ``postgresql://alice:s3cret@db/optuna?sslpassword=x`` becomes ``postgresql://alice:***@db/optuna?sslpassword=***``.
    """
    parsed = _parse(url)
    if parsed is None:  # not a URL SQLAlchemy reads; mask what looks like a password anyway
        return _SECRET_QUERY.sub(rf"\1{MASK}", _USERINFO.sub(f":{MASK}@", url))
    query = {k: (MASK if _is_secret(k) else v) for k, v in parsed.query.items()}
    return _render(parsed.set(password=MASK if parsed.password is not None else None, query=query))


def shareable_storage(url: str) -> str:
    """What a shared file (an exported model's metrics.json) may say of a study's storage: a SQLite database by its
    file name alone, any other database by its scheme alone (``postgresql://``): no local path, host, port,
    socket path, user, password or database name."""
    parsed = _parse(redact(url))
    if parsed is None:
        return "a database"
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        return _render(parsed.set(database=Path(parsed.database).name))
    if parsed.drivername.startswith("sqlite"):
        return redact(url)
    return f"{parsed.drivername}://"


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with every password of the URL masked."""
    parsed = _parse(url)
    if parsed is None:
        return text.replace(url, redact(url))
    secrets = [parsed.password, *(v for k, v in parsed.query.items() if _is_secret(k))]
    for value in (v for secret in secrets for v in (secret if isinstance(secret, tuple) else (secret,))):
        if value:
            text = text.replace(str(value), MASK)
    return text


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for any SQLAlchemy URL, with heartbeats so a dead worker's trial is recovered.

    A trial whose process died (kill -9, power cut, a lost machine) stops beating; after
    :data:`HEARTBEAT_GRACE_S` any worker of the study marks it failed and queues its parameters again
    (search.study.recovery; a dead process on this machine is noticed at once, without the grace period).

    Raises:
        ValueError: The URL cannot be read, its driver is missing, or the database cannot be opened or
            created (e.g. a SQLite file in a folder that does not exist); one line, the password masked.
        StorageError: The database is damaged, its disk is full, or it cannot be written; raised from then on
            by every call of the storage that meets such a fault too, naming the file (search.study.faults).
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S, heartbeat_stale_trial_callback=_requeue_stale)
                if url.startswith("sqlite"):
                    _serialize_transactions(storage.engine)
                _raise_storage_faults(storage.engine, url)
                return storage
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            fault = storage_fault(e, storage_culprit(url))
            if fault is not None:
                raise fault from None
            # Two runs opening a new database at once both create its tables; the loser's "table studies
            # already exists" (or its duplicate version row) means the tables are there now.
            if attempt < OPEN_ATTEMPTS and (isinstance(e, IntegrityError) or "already exists" in str(e)):
                attempt += 1
                time.sleep(0.5)
                continue
            raise _open_error(url, e) from None
        except (ArgumentError, ValueError, ImportError) as e:
            raise _open_error(url, e) from None


def _serialize_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 driver starts a transaction only at the first write, so Optuna's read-check-write
    steps (take a WAITING trial, fail a RUNNING one) are not atomic on SQLite: two workers could both
    take the enqueued baseline, and two runs recovering one dead worker's trial both queued a retry (a
    test caught it). PostgreSQL locks the row (SELECT ... FOR UPDATE) and needs none of this. The recipe
    is SQLAlchemy's own (its SQLite dialect's notes on transaction control); waiting for the lock is
    bounded by the 60 s busy timeout.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, connection_record) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections Optuna opened before the listeners existed


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (``sqlite:///x.db``, or ``sqlite:///file:x.db?mode=ro&uri=true``); None for
    another database or an in-memory one."""
    parsed = _parse(url)
    if parsed is None or not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    if str(parsed.query.get("uri", "")).lower() == "true" and parsed.database.startswith("file:"):
        return parsed.database.removeprefix("file:")
    return parsed.database


def storage_culprit(url: str) -> str:
    """What a storage fault names: a SQLite database's file, any other storage's URL with its passwords masked."""
    return sqlite_file(url) or redact(url)


def _raise_storage_faults(engine: sqlalchemy.engine.Engine, url: str) -> None:
    """Make the engine raise a :class:`StorageError` naming the database for a damaged file, a full disk or a
    read-only location, instead of Optuna's ``StorageInternalError`` ("... e.g. exceeding max length")."""
    where = storage_culprit(url)

    @sqlalchemy.event.listens_for(engine, "handle_error")
    def _name_the_fault(context) -> None:
        fault = classify(context.original_exception, where)
        if fault is not None:
            raise fault from context.original_exception


def _open_error(url: str, error: Exception) -> UsageError:
    # SQLAlchemy's messages run over several lines ("(Background on this error at: ...)").
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return UsageError(_scrub(f"storage: cannot open {redact(url)}: {reason}", url))


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
    raise UsageError(f"pruner: unknown pruner {name!r} (choose from {', '.join(PRUNERS)})")


def parse_objectives(text: str) -> tuple[str, ...]:
    """``auc`` or ``auc,params`` / ``auc,flops`` -> a tuple of objective names, auc first."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names or names[0] != "auc" or len(set(names)) != len(names) or len(names) > 2:
        raise UsageError(f"objectives: expected auc, auc,params or auc,flops; got {text!r}")
    return names


def make_sampler(name: str, seed: int, objectives: tuple[str, ...] = ("auc",)) -> optuna.samplers.BaseSampler:
    """TPE (NSGA-II for two objectives), or random search: the reference a sampler must beat (benchmarks).

    TPE runs with the constant liar: with several workers on one study, a trial still running counts as a
    poor result, so two workers do not propose the same region at once. Alone, a worker sees no other
    running trial and samples exactly as without it. Each worker of a parallel run passes its own seed.
    """
    if name not in SAMPLERS:
        raise UsageError(f"sampler: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if len(objectives) == 1:
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}


def create_or_load_study(name: str, storage: optuna.storages.BaseStorage, *, seed: int, pruner: str,
                         max_folds: int, objectives: tuple[str, ...] = ("auc",),
                         bounds: SpaceBounds | None = None, sampler: str = "tpe", attrs: dict | None = None,
                         wait_s: float = CREATION_WAIT_S) -> tuple[optuna.Study, bool]:
    """Open the study ``name`` or create it with ``attrs``; a new study gets the seed baseline enqueued as trial 0.

    Several runs may start one study at once (processes on one machine, machines on one database). The
    storage keeps study names unique, so exactly one of them creates it, and that run stores ``attrs`` at
    once, with the objectives last as the mark that the study is complete. Every other run waits for
    that mark and then reads the stored attrs, never its own: no two runs of a study train under two
    settings, and none dies of Optuna's DuplicatedStudyError.

    Args:
        attrs: Study user attrs that a new study is created with (the run's settings); an existing study
            keeps its own, and one that another run is creating is waited for until it is complete.
        wait_s: How long to wait for that.

    Returns:
        The study, and whether it was created now.

    Raises:
        ValueError: An existing study has other objectives than those asked for, or still lacks its
            objectives after ``wait_s`` (the run that created it died while creating it).
    """
    attrs = attrs or {}
    directions = [OBJECTIVES[o] for o in objectives]
    sampler_obj = make_sampler(sampler, seed, objectives)
    # Optuna does not prune multi-objective studies.
    pruner_obj = make_pruner(pruner, max_folds) if len(objectives) == 1 else optuna.pruners.NopPruner()
    if name not in _study_names(storage):
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler_obj, pruner=pruner_obj,
                                        directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another run created it since we looked: it is loaded below like any existing study
        else:
            name_objectives(study, objectives)
            _initialise(study, objectives, bounds, attrs)
            return study, True
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler_obj, pruner=pruner_obj)
    _wait_until_created(study, wait_s)
    stored = tuple(study.user_attrs.get(schema.STUDY_OBJECTIVES, ("auc",)))
    if stored != objectives:
        raise UsageError(f"objectives: study {name!r} was created with --objectives {','.join(stored)}; "
                         f"use that, or a new --study name")
    name_objectives(study, stored)  # a study made before the dashboard showed names gets them now
    return study, False


def _initialise(study: optuna.Study, objectives: tuple[str, ...], bounds: SpaceBounds | None, attrs: dict) -> None:
    """A new study's attrs and baseline trial; the objectives go last, marking the study complete."""
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    try:
        params = baseline_params(bounds)
    except ValueError as e:
        # A tiny input fits fewer levels than the seed has: the baseline is outside this size's space, so it
        # is not a trial; the confirmation stage still trains it as the reference.
        study.set_user_attr(BASELINE_NOTE_ATTR, f"the seed baseline is not a trial of this study ({e})")
    else:
        study.enqueue_trial(params, user_attrs={BASELINE_ATTR: True})
    study.set_user_attr(schema.STUDY_OBJECTIVES, list(objectives))


def _wait_until_created(study: optuna.Study, wait_s: float) -> None:
    """Return once the study holds its objectives, the mark :func:`_initialise` writes last.

    Another run may be creating it right now; studies made before the mark came last hold it too.
    """
    deadline = time.monotonic() + wait_s
    while schema.STUDY_OBJECTIVES not in study.user_attrs:
        if time.monotonic() >= deadline:
            raise UsageError(f"study: {study.study_name!r} exists but was never completed (no stored objectives "
                             f"after {wait_s:g} s): the run that created it may have died while creating it; "
                             "start a new --study NAME")
        time.sleep(0.2)


def load_existing_study(name: str, storage_url: str) -> optuna.Study:
    """Open a study that must already exist (for report, export, ablate --study).

    Raises:
        ValueError: No study of that name in the storage; the message lists the studies there.
    """
    database = sqlite_file(storage_url)
    if database is not None and not Path(database).is_file():
        # Opening a missing SQLite file would create an empty database under a mistyped name.
        raise UsageError(f"study: no study {name!r} in {redact(storage_url)}: that database file does not exist "
                         "(run python -m search.run first, or give the --study/--storage of an existing study)")
    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        have = f"; studies there: {', '.join(sorted(names))}" if names else "; it holds no study yet"
        raise UsageError(f"study: no study {name!r} in {redact(storage_url)}{have} "
                         "(run python -m search.run first)")
    return optuna.load_study(study_name=name, storage=storage)


def fail_running(study: optuna.Study, number: int | None) -> None:
    """Mark this process's trial ``number`` failed if it is still RUNNING (Optuna fails it itself in most cases).

    Called after Ctrl-C or SIGTERM, from the ``finally`` of every command that runs trials, so an interrupted
    run leaves no RUNNING trial. Any other trial this process left RUNNING is failed too: one whose final
    write met a full disk is still RUNNING after Optuna gave up on it. Its reason is the storage fault on
    its way out, when that is what stopped the run. A database that cannot take even that (a damaged
    file, a disk still full) is left as it is: its next run recovers the trial, whose worker is gone.
    """
    try:
        trials = study.get_trials(deepcopy=False)
        me = worker_identity()
        left = [t for t in trials if t.state == TrialState.RUNNING
                and (t.number == number or t.user_attrs.get(schema.WORKER) == me)]
        for trial in left:
            if schema.FAIL_REASON not in trial.user_attrs:
                # In a finally clause, the exception on its way out is still sys.exc_info()'s.
                error = sys.exc_info()[1]
                fault = storage_fault(error) if error is not None else None
                reason = str(fault) if fault is not None else "its run stopped while it was running"
                optuna.Trial(study, trial._trial_id).set_user_attr(schema.FAIL_REASON, reason)
            study.tell(trial.number, state=TrialState.FAIL)
    except StorageError:
        pass
