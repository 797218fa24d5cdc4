"""Hostile storage: study names that are paths, a damaged database, a full disk, a read-only location.

Each case asserts the exit code, one line naming the culprit, no traceback, and that nothing was written
outside the folders named on the command line (a snapshot of the file tree around ``tmp_path``, taken
before and after). A full disk is simulated by making the writes raise what a full disk raises
(``OSError(ENOSPC)``, SQLite's "database or disk is full"); the one test on a real 2 MB tmpfs is skipped
where mounting one is not allowed.
"""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import sqlite3
import subprocess
import uuid
from collections import namedtuple
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import Engine

import search.report
import search.shipping.export
import search.shipping.writing
import search.study.artifacts
from search import ablate, export, report, run
from search.study.artifacts import artifact_dir
from search.study.faults import DAMAGED, FULL, READ_ONLY, StorageError, storage_fault
from search.study.names import check_study_name
from search.study.storage import default_storage

SMALL = ["--size", "16", "16", "32", "--epochs", "1", "--workers", "1"]
HOSTILE_NAMES = ["../../evil", "../evil", "/tmp/evil-lungct-test", "a/b", "a\\b", "..", ".", "", " ", "\t",
                 ".hidden", "-rf", "a\x1bb", "a\nb", "a\x00b", "a b", "x" * 101, "evil\u202egnp.db"]


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _copy_study(one_trial_study: Path, to: Path) -> Path:
    """A private copy of the study's folder (database, cache, splits, artifacts)."""
    shutil.copytree(one_trial_study, to)
    return to


# --- study names -------------------------------------------------------------------------------------------

def _commands(tmp: Path, data: Path, name: str) -> dict[str, tuple]:
    studies, out = tmp / "studies", tmp / "out"
    return {
        "run": (run.main, ["--study", name, "--studies-dir", str(studies), "--data", str(data), "--trials", "1",
                           *SMALL]),
        "run --storage": (run.main, ["--study", name, "--studies-dir", str(studies), "--data", str(data),
                                     "--storage", f"sqlite:///{studies}/shared.db", "--trials", "1", *SMALL]),
        "report": (report.main, ["--study", name, "--studies-dir", str(studies)]),
        "export": (export.main, ["--study", name, "--studies-dir", str(studies), "--out", str(out / "model")]),
        "ablate": (ablate.main, ["--study", name, "--studies-dir", str(studies), "--out", str(out / "ablation"),
                                 "--data", str(data), "--folds", "2", "--repeats", "1", "--variants", "baseline",
                                 "--phantoms", "10", *SMALL]),
    }


@pytest.mark.parametrize("command", ["run", "run --storage", "report", "export", "ablate"])
def test_study_name_that_is_not_a_plain_name_is_refused_by_every_command_and_nothing_is_written(
        command, tiny_data, tmp_path, capsys):
    # predict takes a model folder, never a study; the other four take --study.
    work = tmp_path / "work"
    work.mkdir()
    before = tree(tmp_path)
    for name in HOSTILE_NAMES:
        main, argv = _commands(work, tiny_data, name)[command]
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2, name
        line = one_line(capsys.readouterr().err)
        assert "argument --study" in line and "\x1b" not in line and "\u202e" not in line, name
    assert tree(tmp_path) == before  # not even --studies-dir was created
    assert not list(Path("/tmp").glob("evil-lungct-test*"))


@pytest.mark.parametrize("name", ["lungct", "my_study-2.v1", "étude", "run+seed=1", "a@b", "_x", "9"])
def test_check_study_name_accepts_plain_file_names(name):
    assert check_study_name(name) == name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_study_paths_of_library_callers_refuse_a_name_that_is_a_path(name, tmp_path):
    with pytest.raises(ValueError, match=r"^--study: "):
        default_storage(name, tmp_path)
    with pytest.raises(ValueError, match=r"^--study: "):
        artifact_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


# --- a damaged database ------------------------------------------------------------------------------------

def _damage(db: Path, seed: int = 0) -> None:
    """Random bytes over the middle half of the file, the first page (the header) left as it was."""
    size = db.stat().st_size
    start, stop = max(4096, size // 4), 3 * size // 4
    with db.open("r+b") as fh:
        fh.seek(start)
        fh.write(random.Random(seed).randbytes(stop - start))


@pytest.mark.parametrize("command", ["run", "report", "export", "ablate --study", "ablate --storage"])
def test_damaged_database_is_one_line_naming_the_file_for_every_command(command, one_trial_study, tiny_data, tmp_path,
                                                                        capsys):
    studies = _copy_study(one_trial_study, tmp_path / "studies")
    db = studies / "lungct.db"
    _damage(db)
    argv = {
        "run": (run.main, ["--studies-dir", str(studies), "--data", str(tiny_data), "--trials", "1", *SMALL]),
        "report": (report.main, ["--studies-dir", str(studies)]),
        "export": (export.main, ["--studies-dir", str(studies), "--trial", "0", "--epochs", "1"]),
        "ablate --study": (ablate.main, ["--studies-dir", str(studies), "--study", "lungct", "--data", str(tiny_data),
                                         "--folds", "2", "--repeats", "1", "--variants", "baseline", *SMALL]),
        "ablate --storage": (ablate.main, ["--studies-dir", str(studies), "--storage", f"sqlite:///{db}",
                                           "--data", str(tiny_data), "--folds", "2", "--repeats", "1",
                                           "--variants", "baseline", *SMALL]),
    }[command]
    before = tree(tmp_path)
    assert argv[0](argv[1]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: storage: {db}: the database is damaged") and "backup" in line
    assert {p for p in tree(tmp_path) - before if not p.startswith("studies/cache")} <= {"studies/splits"}


def test_storage_fault_finds_the_driver_error_behind_optunas_storage_internal_error():
    try:
        try:
            raise sqlite3.DatabaseError("database disk image is malformed")
        except sqlite3.DatabaseError as e:
            raise optuna.exceptions.StorageInternalError("... e.g. exceeding max length") from e
    except optuna.exceptions.StorageInternalError as e:
        fault = storage_fault(e, "x.db")
    assert fault is not None and fault.kind == DAMAGED and str(fault).startswith("storage: x.db: the database is")
    assert storage_fault(RuntimeError("a bug"), "x.db") is None


def test_storage_fault_reads_a_postgresql_sqlstate_and_a_safetensors_os_error():
    disk_full = type("DiskFull", (Exception,), {"pgcode": "53100"})()
    assert storage_fault(disk_full, "postgresql://db/optuna").kind == FULL
    read_only = type("ReadOnly", (Exception,), {"sqlstate": "25006"})()
    assert storage_fault(read_only).kind == READ_ONLY
    # Out of memory is not a storage fault.
    assert storage_fault(type("OutOfMemory", (Exception,), {"pgcode": "53200"})()) is None
    SafetensorError = type("SafetensorError", (Exception,), {})
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage_fault(full, "/m").kind == FULL


# --- a full disk -------------------------------------------------------------------------------------------

@pytest.fixture
def database_full_once():
    """The next write that completes a trial fails as SQLite does on a full disk; writes after it succeed."""
    fired = []

    def full(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.startswith("UPDATE trials SET state") and "COMPLETE" in str(parameters):
            fired.append(statement)
            raise sqlite3.OperationalError("database or disk is full")

    sqlalchemy.event.listen(Engine, "before_cursor_execute", full)
    yield fired
    sqlalchemy.event.remove(Engine, "before_cursor_execute", full)


def test_run_whose_database_fills_the_disk_fails_that_trial_with_the_reason_and_stops(
        database_full_once, tiny_data, tmp_path, capsys):
    code = run.main(["--studies-dir", str(tmp_path), "--data", str(tiny_data), "--trials", "3", "--no-confirm",
                     *SMALL])
    assert code == 2 and database_full_once
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: storage: {tmp_path / 'lungct.db'}: the disk that holds it is full")
    (trial,) = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db").trials
    assert trial.state == TrialState.FAIL and "disk that holds it is full" in trial.user_attrs["fail_reason"]


def test_run_whose_artifacts_fill_the_disk_fails_that_trial_and_leaves_no_partial_file(
        tiny_data, tmp_path, monkeypatch, capsys):
    real_copy = shutil.copyfileobj

    def copy_until_full(src, dst, *args):
        if getattr(src, "name", "").endswith(".safetensors"):  # the checkpoint: half of it, then the disk is full
            dst.write(src.read(1000))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(src, dst, *args)

    monkeypatch.setattr(search.study.artifacts.shutil, "copyfileobj", copy_until_full)
    code = run.main(["--studies-dir", str(tmp_path), "--data", str(tiny_data), "--trials", "3", "--no-confirm",
                     *SMALL])
    assert code == 2
    store = tmp_path / "lungct-artifacts"
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: storage: {store}: the disk that holds it is full")
    (trial,) = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db").trials
    assert trial.state == TrialState.FAIL and "disk that holds it is full" in trial.user_attrs["fail_reason"]
    assert all(p.stat().st_size < 1000 for p in store.iterdir())  # the learning curve; no half checkpoint
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


def test_export_checks_the_space_it_needs_before_it_trains(one_trial_study, tmp_path, monkeypatch, capsys):
    studies = _copy_study(one_trial_study, tmp_path / "studies")
    out = tmp_path / "models" / "m"
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(search.shipping.writing.shutil, "disk_usage", lambda path: Usage(10 << 20, 9 << 20, 1 << 20))
    assert export.main(["--studies-dir", str(studies), "--trial", "0", "--epochs", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"error: storage: {out.parent}: the disk that holds it is full")
    assert "1.0 MB free" in line and "nothing was trained" in line and "training" not in captured.out
    assert list(out.parent.iterdir()) == []


def test_export_read_only_location_is_refused_before_it_trains(one_trial_study, tmp_path, monkeypatch, capsys):
    studies = _copy_study(one_trial_study, tmp_path / "studies")
    out = tmp_path / "models" / "m"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out.parent))

    monkeypatch.setattr(search.shipping.writing.tempfile, "mkdtemp", read_only)
    assert export.main(["--studies-dir", str(studies), "--trial", "0", "--epochs", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"error: storage: {out.parent}: it cannot be written here")
    assert "training" not in captured.out


def test_export_disk_full_while_writing_leaves_no_partial_folder(one_trial_study, tmp_path, monkeypatch, capsys):
    studies = _copy_study(one_trial_study, tmp_path / "studies")
    out = tmp_path / "models" / "m"

    def disk_full(metrics, folder):  # the weights, the ONNX file and metrics.json are written by now
        assert (Path(folder) / "weights.safetensors").is_file()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "roc.png"))

    monkeypatch.setattr(search.shipping.export, "write_model_figures", disk_full)
    assert export.main(["--studies-dir", str(studies), "--trial", "0", "--epochs", "1", "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: storage: {out.parent}: the disk that holds it is full")
    assert "nothing was written" in line
    assert list(out.parent.iterdir()) == []  # no model folder, no hidden temporary one


def test_report_disk_full_is_one_line_naming_the_page(one_trial_study, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r" / "report.html"

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(search.report, "atomic_write_text", disk_full)
    assert report.main(["--studies-dir", str(one_trial_study), "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: storage: {out}: the disk that holds it is full")


# --- a read-only location ----------------------------------------------------------------------------------

def test_read_only_database_is_one_line_for_run_and_still_read_by_report(one_trial_study, tiny_data, tmp_path, capsys):
    studies = _copy_study(one_trial_study, tmp_path / "studies")
    db = studies / "lungct.db"
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"  # what SQLite sees in a read-only folder, root or not
    assert run.main(["--studies-dir", str(studies), "--storage", read_only, "--trials", "1", *SMALL]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: storage: {db}: it cannot be written here") and "readonly" in line
    trials = optuna.load_study(study_name="lungct", storage=f"sqlite:///{db}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert report.main(["--studies-dir", str(studies), "--storage", read_only]) == 0


def test_storage_error_is_one_printable_line():
    error = StorageError(FULL, "a\nb\x1b.db", "x" * 500)
    assert "\n" not in str(error) and "\x1b" not in str(error) and len(str(error)) < 400


# --- a real full disk --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs under tmp_path (root only; skipped elsewhere)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({tried.stderr.decode().strip() or tried.returncode})")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # the database may still be open


def test_run_on_a_disk_that_fills_mid_trial_fails_the_trial_and_stops(tiny_disk, tiny_data, capsys):
    studies = tiny_disk / "studies"
    code = run.main(["--studies-dir", str(studies), "--data", str(tiny_data), "--trials", "3", "--no-confirm",
                     *SMALL])
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: storage: ") and "full" in line
    trials = optuna.load_study(study_name="lungct", storage=f"sqlite:///{studies}/lungct.db").trials
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert "full" in trials[-1].user_attrs["fail_reason"]
    assert not [p for p in studies.rglob(".*") if p.name.endswith(".tmp")]


def test_atomic_artifact_store_leaves_nothing_after_a_failed_write(tmp_path):
    store = search.study.artifacts.AtomicArtifactStore(tmp_path)

    class Failing(io.BytesIO):
        def read(self, *args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        store.write("abc", Failing())
    assert list(tmp_path.iterdir()) == []
