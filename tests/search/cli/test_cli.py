"""search.cli: the user's mistake is one line and exit 2, a bug is a traceback, LUNGCT_DEBUG=1 shows every one."""

import os

import pytest
import torch

import search.predict
import search.run
from lungct.errors import DataError, UsageError
from search.cli import (
    DEBUG_ENV,
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_OK,
    device_flag,
    exit_code,
    positive,
)
from search.model.folder import ModelDirError
from search.study.faults import READ_ONLY, StorageError
from space import SpecInputError


def _raises(error: BaseException):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error", [UsageError("--trials: expected a positive count, got 0"),
                                   DataError("data: no scans found"), ModelDirError("spec.json: missing"),
                                   SpecInputError("n_levels: expected 2 to 5"),
                                   StorageError(READ_ONLY, "/tmp/x", "read-only")])
def test_exit_code_bad_input_is_one_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert exit_code(_raises(error)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"


def test_exit_code_plain_value_error_is_a_bug_with_its_traceback(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(ValueError, match=r"^bug$"):
        exit_code(_raises(ValueError("bug")))


def test_exit_code_failure_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert exit_code(_raises(RuntimeError("training diverged")), failures=(RuntimeError,)) == EXIT_FAILED
    assert capsys.readouterr().err == "error: training diverged\n"


def test_exit_code_debug_reraises_a_usage_error(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError, match=r"^--trials"):
        exit_code(_raises(UsageError("--trials: expected a positive count, got 0")))


def test_exit_code_body_result_is_the_exit_code():
    assert exit_code(lambda: None) == EXIT_OK and exit_code(lambda: EXIT_FAILED) == EXIT_FAILED


class _ClosedPipe:
    """A stdout whose reader has gone: writes are buffered, flushing them raises BrokenPipeError (no descriptor)."""

    def __init__(self):
        self.buffered = []

    def write(self, text: str) -> int:
        self.buffered.append(text)
        return len(text)

    def flush(self) -> None:
        if self.buffered:
            raise BrokenPipeError(32, "Broken pipe")


def test_exit_code_broken_pipe_from_the_body_is_a_quiet_exit_141(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert exit_code(_raises(BrokenPipeError(32, "Broken pipe"))) == EXIT_BROKEN_PIPE == 141
    assert capsys.readouterr() == ("", "")


def test_exit_code_flushes_stdout_so_a_closed_pipe_is_met_at_the_boundary(capsys, monkeypatch):
    """Output buffered for a pipe is written at the latest when the body returns, where a closed pipe is exit 141,
    not later in the interpreter's own flush (a traceback-like "Exception ignored" and exit 120)."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr("sys.stdout", _ClosedPipe())

    def body():
        print("scan  P(CT-2 or CT-3)")
        return EXIT_OK

    assert exit_code(body) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_exit_code_broken_pipe_of_another_pipe_is_a_bug_with_its_traceback(monkeypatch):
    """A BrokenPipeError while standard output and error are fine (a worker's pipe, a socket) is not a reader that
    left: it propagates."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    with open(write_out, "w") as out, open(write_err, "w") as err:
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", err)
        with pytest.raises(BrokenPipeError):
            exit_code(_raises(BrokenPipeError(32, "Broken pipe")))
    os.close(read_out)
    os.close(read_err)


def test_positive_refuses_zero_naming_the_flag():
    positive("--epochs", None)
    with pytest.raises(UsageError, match=r"^--epochs: expected a positive count, got 0$"):
        positive("--epochs", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_flag_cuda_without_a_gpu_is_a_usage_error():
    assert device_flag("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"^device: --device cuda"):
        device_flag("cuda")


def test_command_usage_error_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert search.run.main(["--trials", "0"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: --trials: expected a positive count, got 0\n"


def test_command_usage_error_under_debug_is_raised(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError, match=r"^--trials: expected a positive count, got 0$"):
        search.run.main(["--trials", "0"])


def test_command_plain_value_error_from_its_body_is_not_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def bug(*args, **kwargs):
        raise ValueError("bug")

    monkeypatch.setattr(search.predict, "predict_all", bug)
    with pytest.raises(ValueError, match=r"^bug$"):
        search.predict.main([str(tmp_path), str(tmp_path / "scan.nii.gz")])
