"""What a study is run with, as stored on it, and what one ``search.run`` invocation asks for beside it.

- :class:`DataSettings`: which scans, at which size and split: what run, export and ablate share to find
  the data and hold out the same test part.
- :class:`RunSettings`: a study's stored settings (the data's, the trials' and the confirmation's); a
  resumed run keeps them, export reads them. Its dict is today's stored format: older studies stay
  readable (:meth:`RunSettings.from_dict` fills what they lack) and new studies are readable by older code.
- :class:`GivenSettings`: the settings flags as given on the command line (None: not given), which
  :func:`resolve_settings` settles against the stored study and the device's default fidelity.
- :class:`RunJob`: the rest of ``search.run``'s flags, none of which changes what a trial computes.

Adding a stored setting is one field on :class:`RunSettings` (with its default), one on
:class:`GivenSettings`, and, when older studies ran with another value, one line of :data:`OLDER_STUDIES`.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import optuna
import torch

from lungct.errors import UsageError
from search.selection.confirm import DEFAULT_CONFIRM_FOLDS, DEFAULT_TOP_K
from search.selection.objective import DEFAULT_SCORE
from search.study import schema
from search.training.fidelity import choose_fidelity
from space import SpaceBounds, SpecInputError, bounds_for_size

# The confirmation's settings may change on a resumed study (e.g. --confirm-only --confirm-folds 5): each
# setting confirms in its own companion study, and the decision records what it used.
CONFIRM_SETTINGS = ("confirm_epochs", "confirm_top", "confirm_folds")
NOT_STORED = {"stored": False}  # field metadata: a setting that is not part of the stored dict


def settings_dict(settings: Any) -> dict:
    """A settings dataclass as its JSON-ready dict: ``dataclasses.asdict`` of its stored fields, tuples as lists."""
    stored = {f.name for f in dataclasses.fields(settings) if f.metadata.get("stored", True)}
    return {k: _lists(v) for k, v in dataclasses.asdict(settings).items() if k in stored}


def _lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def from_fields(cls: type, d: Mapping[str, Any]) -> Any:
    """``cls`` from a dict: its known fields only (newer keys are dropped), lists as tuples where the field is one."""
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for name, value in d.items():
        if name in known:
            kind = getattr(known[name].type, "__name__", str(known[name].type))  # "int", "tuple[int, ...]"
            values[name] = (tuple(value) if kind.startswith("tuple") and value is not None
                            else int(value) if kind == "int" else float(value) if kind == "float" else value)
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Which scans, and how: what run, export and ablate share to load the same data and hold out the same test part.

    Attributes:
        data: The data folder or CSV manifest, resolved (None: the default phantom set).
        task: Which categories each label holds (``lungct.records.TASKS``; ``severity`` is ordinal).
        size: The input size (D, H, W) in voxels.
        split_seed: The seed of the train/val/test split, whose test part only export reads.
        n_phantoms: The size of the default phantom set (used when ``data`` is None).
    """

    data: str | None = None
    task: str = "course"
    size: tuple[int, int, int]
    split_seed: int = 0
    n_phantoms: int = 200

    def data_settings(self) -> DataSettings:
        """These settings' data part alone (of a subclass's settings too): equal when the same data is loaded."""
        return DataSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataSettings)})


@dataclass(frozen=True, kw_only=True)
class RunSettings(DataSettings):
    """The settings a study is run with; stored on the study so a resumed run (and export) keeps them."""

    epochs: int
    seed: int = 0
    max_gflops: float = 0.0  # 0 = no cap
    folds: int = 2
    confirm_epochs: int = 0
    confirm_top: int = DEFAULT_TOP_K
    confirm_folds: int = DEFAULT_CONFIRM_FOLDS
    bounds: dict = field(default_factory=lambda: SpaceBounds().to_dict())
    score: str = DEFAULT_SCORE

    def to_dict(self) -> dict:
        """JSON-ready dict: the stored format."""
        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSettings:
        """Read :meth:`to_dict` output; settings older studies lack take the values those studies ran with
        (:data:`OLDER_STUDIES`); keys this version does not know are dropped.

        Raises:
            KeyError: ``d`` lacks ``size`` or ``epochs``, which every study stored.
        """
        merged = dict(d)
        for name, default in OLDER_STUDIES.items():
            if merged.get(name) is None or (name in _ZERO_WAS_UNSET and not merged[name]):
                merged[name] = default(merged)
        return from_fields(cls, merged)

    def space(self) -> SpaceBounds:
        """The stored bounds, fitted to the input size (the space never proposes a spec that cannot run)."""
        return bounds_for_size(SpaceBounds.from_dict(self.bounds), self.size)


# What studies made by older versions lack, as the values they ran with; in order, since some follow others.
OLDER_STUDIES: dict[str, Callable[[dict], Any]] = {
    "data": lambda d: None,
    "task": lambda d: "course",
    "seed": lambda d: 0,
    "split_seed": lambda d: d["seed"],  # the split was seeded by the study's seed
    "n_phantoms": lambda d: 200,
    "max_gflops": lambda d: 0.0,
    "folds": lambda d: 2,
    "confirm_epochs": lambda d: 2 * int(d["epochs"]),
    "confirm_top": lambda d: DEFAULT_TOP_K,
    "confirm_folds": lambda d: d["folds"],
    "bounds": lambda d: SpaceBounds.full().to_dict(),  # before the space was stored, the full space was sampled
    # Before the score was stored, a fold was scored with batch-norm statistics as training left them.
    "score": lambda d: "auc",
}
_ZERO_WAS_UNSET = frozenset({"confirm_epochs", "confirm_folds", "bounds"})  # older studies wrote 0 or {} for "unset"


@dataclass(frozen=True, kw_only=True)
class GivenSettings:
    """The study settings given on ``search.run``'s command line; None: not given (the study's, else the default).

    The fields are :class:`RunSettings`'s; ``bounds`` is the ``--space`` file's, read by :func:`load_space_file`.
    """

    data: str | None = None
    task: str | None = None
    size: tuple[int, int, int] | None = None
    split_seed: int | None = None
    n_phantoms: int | None = None
    epochs: int | None = None
    seed: int | None = None
    max_gflops: float | None = None
    folds: int | None = None
    confirm_epochs: int | None = None
    confirm_top: int | None = None
    confirm_folds: int | None = None
    bounds: dict | None = None
    score: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunJob:
    """What one ``search.run`` invocation asks for beyond the study's settings; none of it changes a trial's result.

    Attributes:
        study: The study's name.
        storage: Its storage URL (None: ``sqlite:///<studies_dir>/<study>.db``).
        studies_dir: Where studies, caches, splits and artifacts are written.
        trials: Trials to add to the study.
        jobs: Worker processes training trials at once.
        timeout_s: Start no new trial after this many seconds (None: no limit).
        budget_min: Minutes the whole command may take (None: no limit).
        sampler: ``search.study.storage.SAMPLERS``.
        pruner: ``search.study.storage.PRUNERS``.
        objectives: What the study optimises (``search.study.storage.parse_objectives``).
        confirm: Whether the confirmation stage runs after the search.
        confirm_only: Run (or resume) only the confirmation of an existing study.
        device: The torch device trials train on.
        workers: Processes decoding scans on a cold cache (None: all cores).
        backup_to: A folder the SQLite database is copied to after every trial and confirmation run, and
            restored from when missing (``search.study.backup``); None: no copy.
        confirm_jobs: Confirmation runs trained at once in their own processes (None: :meth:`confirm_processes`'s
            default).
    """

    study: str = "lungct"
    storage: str | None = None
    studies_dir: str = "studies"
    trials: int = 50
    jobs: int = 1
    timeout_s: float | None = None
    budget_min: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: tuple[str, ...] = ("auc",)
    confirm: bool = True
    confirm_only: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int | None = None
    backup_to: str | None = None
    confirm_jobs: int | None = None

    def confirm_processes(self, cores: int) -> tuple[int, int]:
        """(runs at once, CPU threads per run) of the confirmation on a machine of ``cores`` usable cores: by default
        one run at a time in this process, on every thread (``--confirm-jobs N`` > 1: N processes, the cores divided
        among them). Not yet the default: Ctrl-C with runs in flight takes minutes to stop their pool."""
        jobs = self.confirm_jobs if self.confirm_jobs is not None else 1
        return jobs, max(1, cores // jobs)


# A space file is a few hundred bytes; the cap bounds what reading and parsing a wrong file costs.
MAX_SPACE_BYTES = 64 << 10
_NOT_A_FILE = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def load_space_file(path: str | Path) -> dict:
    """``--space FILE.toml`` as a validated SpaceBounds dict.

    The file is read as untrusted input: it must be a regular file of at most :data:`MAX_SPACE_BYTES` in UTF-8,
    and a parser failure (a nesting deeper than Python's recursion limit, an integer too long to convert) is
    an error in the file, like a syntax error.

    Raises:
        UsageError: The file cannot be read or parsed, or a field is unknown or out of range (named).
    """
    raw = _read_space_bytes(path)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"--space: {path} is UTF-16 text; a TOML file must be UTF-8 (save it as UTF-8)")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no TOML error
    except UnicodeDecodeError as e:
        raise UsageError(f"--space: {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         "a TOML file must be UTF-8") from None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise UsageError(f"--space: {path} is not valid TOML for a space file: nested too deep") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--space: {path} is not valid TOML: {e}") from None
    except ValueError as e:  # an integer past Python's limit on digits (its advice is not for the user)
        raise UsageError(f"--space: {path} holds a number too long to read ({str(e).split(':')[0]})") from None
    try:
        return SpaceBounds.from_dict(data).to_dict()
    except ValueError as e:
        raise UsageError(f"--space: {path}: {e}") from None


def _read_space_bytes(path: str | Path) -> bytes:
    """The bytes of the ``--space`` file, opened without blocking and checked on the open descriptor, so a FIFO or a
    device such as /dev/zero is refused instead of read (as ``search.model.folder.read_file`` reads a model folder).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageError(f"--space: cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _NOT_A_FILE if test(st.st_mode)), "a special file")
            raise UsageError(f"--space: {path} is {kind}, not a regular file")
        if st.st_size > MAX_SPACE_BYTES:
            raise UsageError(f"--space: {path} holds {st.st_size:,} bytes, more than the {MAX_SPACE_BYTES:,} a space "
                             "file may hold")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_SPACE_BYTES + 1)  # a byte more shows a file that grew since fstat
    except OSError as e:
        raise UsageError(f"--space: cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SPACE_BYTES:
        raise UsageError(f"--space: {path} holds more than the {MAX_SPACE_BYTES:,} bytes a space file may hold")
    return raw


def resolve_settings(given: GivenSettings, stored: Mapping[str, Any] | None,
                     device: torch.device) -> tuple[RunSettings, str]:
    """Settings from the flags, the stored study, then the device's default fidelity, and the fidelity line.

    Raises:
        UsageError: A flag contradicts the settings the existing study was run with, or the size fits no spec.
    """
    asked = dataclasses.asdict(given)
    asked["size"] = list(given.size) if given.size else None
    if stored:
        stored = RunSettings.from_dict(stored).to_dict() | {k: v for k, v in stored.items() if k == "data"}
        clash = [k for k, v in asked.items() if v is not None and k in stored and v != stored[k]
                 and k not in CONFIRM_SETTINGS
                 and not (k == "data" and Path(v).resolve() == Path(stored[k] or "").resolve())]
        if clash:
            was = ", ".join(f"{k}={stored[k]}" for k in clash if k != "bounds")
            if "bounds" in clash:
                was = (was + ", " if was else "") + "another --space"
            raise UsageError(f"study settings: this study was run with {was}; a study must keep one setting "
                             "(to compare trials fairly): drop those flags, or start a new --study NAME")
        merged = {k: (v if v is not None else stored.get(k)) for k, v in asked.items()}
    else:
        merged = asked
    fidelity = choose_fidelity(device, merged["size"], merged["epochs"], merged["n_phantoms"], merged["max_gflops"],
                               given_by="by the study" if stored else "on the command line")
    defaults = RunSettings(size=fidelity.size, epochs=fidelity.epochs)
    given_or_stored = {k: v for k, v in merged.items() if v is not None}
    settings = dataclasses.replace(defaults, **(given_or_stored | {
        "data": str(Path(merged["data"]).resolve()) if merged["data"] else None,
        "size": fidelity.size,
        "epochs": fidelity.epochs,
        "n_phantoms": fidelity.n_phantoms,
        "max_gflops": fidelity.max_gflops or 0.0,  # stored 0 = no cap, so a resumed run does not add one
        "folds": merged["folds"] or defaults.folds,
        "confirm_epochs": merged["confirm_epochs"] or fidelity.confirm_epochs,
        "confirm_folds": merged["confirm_folds"] or defaults.confirm_folds,
        "bounds": merged["bounds"] or defaults.bounds,
        "task": merged["task"] or defaults.task,
        "score": merged["score"] or defaults.score,
    }))
    try:
        settings.space()
    except SpecInputError as e:
        raise UsageError(f"--size: {e}") from None
    scored = " with batch-norm statistics recomputed" if settings.score == "auc_bn" else ""
    line = (f"{fidelity.reason}; each trial scored by {settings.folds}-fold cross-validation at its last epoch"
            f"{scored}; "
            f"confirmation of the top {settings.confirm_top} at {settings.confirm_epochs} epochs"
            + (", kept from the study" if stored else ""))
    return settings, line


def stored_settings(study: optuna.Study) -> RunSettings:
    """The settings ``search.run`` stored on ``study``.

    Raises:
        UsageError: The study holds none (``search.run`` did not make it).
    """
    stored = study.user_attrs.get(schema.STUDY_SETTINGS)
    if not stored:
        raise UsageError(f"study: {study.study_name!r} has no stored settings (was it made by python -m search.run?)")
    return RunSettings.from_dict(stored)
