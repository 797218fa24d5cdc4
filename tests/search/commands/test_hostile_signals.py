"""SIGTERM (a scheduler's time limit, ``timeout``, ``kill``) handled like Ctrl-C by every command that writes.

Each case asserts exit 143, the interrupted message and no traceback, no hidden temporary file or folder
left (``lungct.files.atomic_path`` names them ``.<name>.*.tmp``, export ``.<out>.tmp.*``), and a study
with no trial left RUNNING. The subprocess tests send a real SIGTERM from outside mid-work; the others
send it from inside the work itself (a patched step calls ``os.kill`` on its own process), which lands
at a known point and takes no start-up time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from matplotlib.figure import Figure
from optuna.trial import TrialState

import search.report
import search.training.unit
from lungct.signals import EXIT_TERMINATED, raise_terminated, run_terminable
from search import ablate, predict, report, run
from search.training.precision import PRECISION_ENV
from tests.conftest import synthetic_ct, write_nifti
from tests.search.commands.test_hostile_storage import SMALL
from tests.search.commands.test_predict import _model_dir

ROOT = Path(__file__).resolve().parents[3]
LONG = ["--size", "16", "16", "32", "--workers", "1", "--no-confirm", "--pruner", "none", "--epochs", "200"]


def sigterm_self() -> None:
    """SIGTERM to this process, as ``kill`` sends it; only under the commands' handler (else pytest would die)."""
    assert signal.getsignal(signal.SIGTERM) is raise_terminated, "SIGTERM is not handled here"
    os.kill(os.getpid(), signal.SIGTERM)


def hidden_leftovers(root: Path) -> list[Path]:
    """Temporary files and folders of atomic writes and of export under ``root``."""
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def test_run_terminable_tells_sigterm_from_ctrl_c():
    assert run_terminable(lambda: 130) == 130  # a Ctrl-C
    assert run_terminable(lambda: (sigterm_self(), 0)[1]) == EXIT_TERMINATED  # SIGTERM not caught by the body

    def caught():
        try:
            sigterm_self()
        except KeyboardInterrupt:
            return 130
        return 0

    assert run_terminable(caught) == EXIT_TERMINATED
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_run_sigterm_mid_trial_fails_it_and_exits_143(tiny_data, tmp_path, monkeypatch, capsys):
    real_fit = search.training.unit.fit
    calls = []

    def terminated_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second trial's first fold
            sigterm_self()
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(search.training.unit, "fit", terminated_fit)
    args = ["--data", str(tiny_data), "--studies-dir", str(tmp_path), "--no-confirm", "--pruner", "none", *SMALL]
    assert run.main([*args, "--trials", "2"]) == EXIT_TERMINATED
    err = capsys.readouterr().err
    no_traceback(err)
    assert "Resume with:" in err
    trials = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert not hidden_leftovers(tmp_path)
    monkeypatch.setattr(search.training.unit, "fit", real_fit)
    assert run.main([*args, "--trials", "1"]) == 0  # resumable


def test_report_sigterm_writes_nothing_and_exits_143(one_trial_study, tmp_path, monkeypatch, capsys):
    real = search.report.render_report

    def render(*args, **kwargs):
        text = real(*args, **kwargs)
        sigterm_self()
        return text

    monkeypatch.setattr(search.report, "render_report", render)
    out = tmp_path / "r" / "report.html"
    assert report.main(["--studies-dir", str(one_trial_study), "--out", str(out)]) == EXIT_TERMINATED
    err = capsys.readouterr().err
    no_traceback(err)
    assert "interrupted: nothing was written" in err and not out.exists()


def test_predict_saliency_sigterm_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    model = _model_dir(tmp_path / "model")
    scans = [str(write_nifti(tmp_path / f"s{i}.nii.gz", synthetic_ct(seed=i))) for i in range(3)]
    real_savefig = Figure.savefig
    saved = []

    def savefig(self, fname, *args, **kwargs):
        if saved:  # the second montage: half written, then SIGTERM
            Path(fname).write_bytes(b"\x89PNG half")
            sigterm_self()
        saved.append(fname)
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "saliency"
    assert predict.main([str(model), *scans, "--saliency", str(out)]) == EXIT_TERMINATED
    no_traceback(capsys.readouterr().err)
    assert len(list(out.iterdir())) == 1 and not hidden_leftovers(out)  # the first montage, whole


def test_ablate_sigterm_mid_run_fails_it_and_exits_143(tiny_data, tmp_path, monkeypatch, capsys):
    def terminated_fit(*args, **kwargs):
        sigterm_self()

    monkeypatch.setattr(search.training.unit, "fit", terminated_fit)
    code = ablate.main(["--data", str(tiny_data), "--studies-dir", str(tmp_path), "--folds", "2", "--repeats", "1",
                        "--variants", "baseline", *SMALL])
    assert code == EXIT_TERMINATED
    err = capsys.readouterr().err
    no_traceback(err)
    assert "Resume with:" in err
    trials = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/ablation.db").trials
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert not hidden_leftovers(tmp_path)


def _start(module: str, *argv: str, log: Path) -> subprocess.Popen:
    env = os.environ | {PRECISION_ENV: "float32"}
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)


def _sigterm_once(proc: subprocess.Popen, log: Path, text: str, settle_s: float = 0.0, timeout_s: float = 120.0) -> str:
    """SIGTERM to ``proc`` ``settle_s`` after ``text`` shows in its output; its whole output once it has exited."""
    deadline = time.monotonic() + timeout_s
    try:
        while text not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, f"{text!r} never appeared:\n{log.read_text()}"
            time.sleep(0.2)
        time.sleep(settle_s)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    finally:
        proc.kill()
    return log.read_text()


@pytest.mark.slow
def test_run_subprocess_sigterm_mid_trial_exits_143_and_leaves_no_running_trial(tiny_data, tmp_path):
    log = tmp_path / "log"
    proc = _start("search.run", "--data", str(tiny_data), "--studies-dir", str(tmp_path / "s"), "--trials", "3",
                  *LONG, log=log)
    # The time line is printed just before the first trial starts: a second later it is training.
    out = _sigterm_once(proc, log, "time: ", settle_s=1.0)
    assert proc.returncode == EXIT_TERMINATED, out
    no_traceback(out)
    assert "Resume with:" in out
    trials = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/s/lungct.db").trials
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert not hidden_leftovers(tmp_path)


@pytest.mark.slow
def test_export_subprocess_sigterm_mid_training_leaves_no_folder(one_trial_study, tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "models" / "m"
    proc = _start("search.export", "--studies-dir", str(one_trial_study), "--trial", "0", "--epochs", "500",
                  "--out", str(out), log=log)
    text = _sigterm_once(proc, log, "epoch 1/500")
    assert proc.returncode == EXIT_TERMINATED, text
    no_traceback(text)
    assert "interrupted: nothing was written" in text
    assert not out.exists() and not hidden_leftovers(tmp_path)
