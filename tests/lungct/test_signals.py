"""SIGTERM handled like Ctrl-C by lungct's commands that write: python -m lungct.phantom and lungct.download.

Exit 143, the interrupted message, and no hidden temporary file or folder left behind. SIGTERM is sent
from inside the work (a patched step calls ``os.kill`` on its own process), and once from outside to a
whole process group, as ``timeout`` and schedulers send it, with worker processes rendering.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lungct.files
from lungct import download
from lungct.phantom import cli as phantom_cli
from lungct.signals import EXIT_TERMINATED, Terminated, raise_terminated, sigterm_as_interrupt, stopped_by_sigterm
from tests.conftest import synthetic_ct, write_nifti

ROOT = Path(__file__).resolve().parents[2]


def sigterm_self() -> None:
    """SIGTERM to this process; only under the commands' handler (else pytest itself would die)."""
    assert signal.getsignal(signal.SIGTERM) is raise_terminated, "SIGTERM is not handled here"
    os.kill(os.getpid(), signal.SIGTERM)


def hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


def test_stopped_by_sigterm_tells_a_sigterm_from_ctrl_c():
    with sigterm_as_interrupt():
        try:
            sigterm_self()
        except KeyboardInterrupt as e:
            caught = e
    assert isinstance(caught, Terminated) and stopped_by_sigterm(caught)
    assert not stopped_by_sigterm(KeyboardInterrupt())


def _stopped_by_sigterm_in_a_worker(answer) -> None:
    answer.put(stopped_by_sigterm(Terminated()))


def test_stopped_by_sigterm_is_false_in_a_worker_whose_parent_relays_ctrl_c_as_sigterm():
    ctx = multiprocessing.get_context("spawn")
    answer = ctx.Queue()
    worker = ctx.Process(target=_stopped_by_sigterm_in_a_worker, args=(answer,))
    worker.start()
    try:
        assert answer.get(timeout=60) is False
    finally:
        worker.join(timeout=60)


def test_phantom_sigterm_mid_write_exits_143_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    real_fsync = lungct.files.os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:  # the marker, one phantom, then the second phantom's bytes are on their way
            sigterm_self()
        real_fsync(fd)

    monkeypatch.setattr(lungct.files.os, "fsync", fsync)
    out = tmp_path / "set"
    assert phantom_cli.main(["--out", str(out), "--n", "4", "--matrix", "64", "--workers", "1",
                             "--no-progress"]) == EXIT_TERMINATED
    err = capsys.readouterr().err
    assert "interrupted; no registry was written" in err and "Traceback" not in err
    assert not hidden(out) and not (out / "dataset_registry.csv").exists()
    assert len(list((out / "studies").rglob("*.nii.gz"))) == 1


def test_phantom_sigterm_to_the_process_group_stops_the_workers_cleanly(tmp_path):
    out = tmp_path / "set"
    proc = subprocess.Popen([sys.executable, "-m", "lungct.phantom", "--out", str(out), "--n", "60", "--matrix",
                             "64", "--workers", "2", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.rglob("study_*.nii.gz")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)  # what timeout(1) sends: the whole group, workers included
        text = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == EXIT_TERMINATED, text
    assert "interrupted; no registry was written" in text and "Traceback" not in text
    assert not hidden(out) and not (out / "dataset_registry.csv").exists()


def test_download_sigterm_while_unpacking_exits_143_and_leaves_no_temporary_folder(tmp_path, monkeypatch, capsys):
    served = tmp_path / "served"
    served.mkdir()
    for name in download.ARCHIVES:
        with zipfile.ZipFile(served / f"{name}.zip", "w") as z:
            path = write_nifti(tmp_path / "src" / name / "study_0001.nii.gz", synthetic_ct())
            z.write(path, f"{name}/{path.name}")
    real_extractall = zipfile.ZipFile.extractall

    def extractall(self, *args, **kwargs):
        real_extractall(self, *args, **kwargs)
        sigterm_self()

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extractall)
    out = tmp_path / "data"
    assert download.main(["--out", str(out), "--base-url", served.as_uri()]) == EXIT_TERMINATED
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and "Traceback" not in err
    assert not hidden(out) and not (out / "CT-0").exists()
