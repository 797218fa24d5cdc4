"""What the five commands share: their common flags, declared once, and how an error becomes an exit code.

The commands (``search.run``, ``search.report``, ``search.export``, ``search.predict``,
``search.ablate``) parse their flags, build their settings and call a typed library function; each
declares the flags it shares with the others through the ``add_*`` functions here, and runs its body
through :func:`exit_code`, so every command answers bad input, failure and Ctrl-C alike:

- 0: done;
- 1: the work failed (training diverged, the export check failed, a scan could not be read);
- 2: bad input, one line: flags, settings, study (``lungct.errors.UsageError``), data
  (``lungct.errors.DataError``), a model folder (``search.model.folder.ModelDirError``), a spec
  (``space.SpecInputError``), and a storage location that cannot be used: a damaged database, a full disk,
  a read-only folder (``search.study.faults.StorageError``, or the fault found behind what Optuna raised);
- 130: interrupted by Ctrl-C, with what was kept and how to resume;
- 141: its output went to a pipe that closed early (``... | head -1``): the command stops quietly, as a tool
  killed by SIGPIPE does, with no traceback (stdout is pointed at /dev/null, as Python's note on SIGPIPE
  recommends, so the final flush at exit cannot fail again);
- 143: stopped by SIGTERM (a scheduler's time limit, ``timeout``, ``kill``), handled as Ctrl-C is: the same
  cleanup, the same resumable state (``lungct.signals``).

Any other exception is a bug, and shows its traceback (exit 1): a plain ``ValueError`` from numpy, torch or
the library is not the user's mistake. ``LUNGCT_DEBUG=1`` in the environment re-raises everything, bad
input included, so its traceback shows where it was raised.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

import torch

from lungct.errors import DataError, UsageError, printable
from lungct.records import TASKS
from lungct.signals import EXIT_TERMINATED, Terminated, exit_status, sigterm_as_interrupt
from search.model.folder import ModelDirError
from search.study.faults import StorageError, storage_fault
from search.study.names import study_name
from search.training.loop import resolve_device
from space import SpecInputError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a writer whose reader closed the pipe
DEVICES = ("auto", "cpu", "cuda")
DEBUG_ENV = "LUNGCT_DEBUG"  # set to 1: every error re-raised with its traceback, bad input included
# What the user can fix: one line and exit 2. Anything else is a bug and keeps its traceback.
BAD_INPUT = (UsageError, DataError, ModelDirError, SpecInputError, StorageError)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad flag said in one line (its usage is what --help is for), as every other bad input is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def command_parser(prog: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: its name, the second paragraph of its module docstring as the description."""
    return _OneLineParser(prog=f"python -m {prog}", description=(doc or "").split("\n\n")[1],
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)


def add_study_flags(p: argparse.ArgumentParser, storage_help: str = "any SQLAlchemy URL") -> None:
    """``--study NAME`` (default lungct) and ``--storage URL`` (default the study's SQLite file)."""
    p.add_argument("--study", default="lungct", type=study_name, metavar="NAME",
                   help="study name: letters, digits, _ . - + = @, starting with a letter, digit or _ "
                   "(default: lungct)")
    p.add_argument("--storage", metavar="URL", help=f"{storage_help} (default: sqlite:///studies/<study>.db)")


def add_studies_dir_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--studies-dir DIR`` (default studies): ``what`` says what the command keeps there."""
    p.add_argument("--studies-dir", default="studies", metavar="DIR", help=f"{what} (default: studies)")


def add_data_flag(p: argparse.ArgumentParser,
                  default: str = "the synthetic phantom set, generated once under studies/", note: str = "") -> None:
    """``--data ROOT``: a data folder or CSV manifest; ``note`` follows the default in the help."""
    p.add_argument("--data", metavar="ROOT",
                   help=f"data folder or CSV manifest (default: {default}){'; ' + note if note else ''}")


def add_phantoms_flag(p: argparse.ArgumentParser, default: int | None = None, shown: int = 200) -> None:
    """``--phantoms N``: the size of the default phantom set."""
    p.add_argument("--phantoms", type=int, default=default, metavar="N",
                   help=f"size of the default phantom set when no --data is given (default: {shown})")


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    """``--workers N``: processes decoding scans on a cold cache."""
    p.add_argument("--workers", type=int, default=None, help="processes decoding scans on a cold cache "
                   "(default: all cores)")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``."""
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto = CUDA when available, else CPU "
                   "(default: auto)")


def add_task_flag(p: argparse.ArgumentParser, default: str | None = "course") -> None:
    """``--task``: which categories each label holds (binary tasks, or the ordinal severity grading)."""
    p.add_argument("--task", default=default, choices=sorted(TASKS),
                   help="course = CT-0 vs CT-2/CT-3; any = CT-0 vs CT-1..CT-4; severe = CT-0/1 vs CT-3/4; "
                        "severity = the ordered grades CT-0 < CT-1 < CT-2 < CT-3/CT-4 with an ordinal head "
                        "(CT-4 pooled with CT-3: 2 of MosMedData's 1110 studies; needs one folder per "
                        "grade, not the Keras archives' pooled CT-23) (default: course)")


def add_size_flag(p: argparse.ArgumentParser, default_text: str) -> None:
    """``--size D H W``: the input size in voxels."""
    p.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"),
                   help=f"input size in voxels (default: {default_text})")


def add_split_seed_flag(p: argparse.ArgumentParser, default: int | None, text: str) -> None:
    """``--split-seed S``: the seed of the data set's train/val/test split."""
    p.add_argument("--split-seed", type=int, default=default, metavar="S",
                   help=f"seed of the data set's train/val/test split{text}")


def positive(flag: str, value: int | float | None, what: str = "a positive count") -> None:
    """Refuse a flag's value that is given and not positive, naming the flag.

    Raises:
        UsageError: ``value`` is not None and not above 0.
    """
    if value is not None and value <= 0:
        raise UsageError(f"{flag}: expected {what}, got {value}")


def debugging() -> bool:
    """Whether ``LUNGCT_DEBUG=1`` asks for every error's traceback."""
    return os.environ.get(DEBUG_ENV, "").strip() == "1"


def device_flag(name: str) -> torch.device:
    """``--device``'s value as the torch device to use.

    Raises:
        UsageError: ``cuda`` where torch sees no GPU.
    """
    return resolve_device(name)


def exit_code(body: Callable[[], int | None], *, failures: tuple[type[BaseException], ...] = (),
              interrupted: str = "interrupted") -> int:
    """Run a command's body and map what it raises to the exit codes in this module's docstring.

    SIGTERM raises ``lungct.signals.Terminated`` (a ``KeyboardInterrupt``) while the body runs, so every
    Ctrl-C path inside it does its cleanup; a body that answers the interrupt itself with 130 exits 143.
    Only :data:`BAD_INPUT` (and a storage fault behind another exception) is exit 2, and ``failures`` exit 1;
    any other exception propagates with its traceback, and under ``LUNGCT_DEBUG=1`` every one does. Standard
    output is flushed before the code is returned, so a reader that closed the pipe early is met here, where
    it is exit 141 without a word (:func:`_quiet_broken_pipe`), and not in the interpreter's flush at exit.

    Args:
        body: The work; returns its own exit code (None for 0).
        failures: Exception types that mean "the work failed" (exit 1); their message is the line shown.
        interrupted: What Ctrl-C leaves behind, said on stderr before exit 130 (143 after SIGTERM).
    """
    debug = debugging()
    with sigterm_as_interrupt():
        try:
            code = body()
            sys.stdout.flush()
        except BrokenPipeError:
            if not (_pipe_closed(sys.stdout) or _pipe_closed(sys.stderr)):
                raise  # another pipe (a worker's, a socket): a bug or a crash to show, not a reader that left
            return _quiet_broken_pipe()
        except BAD_INPUT as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except failures as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt as e:
            print(f"\n{interrupted}", file=sys.stderr)
            return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        except Exception as e:
            # Optuna and the drivers raise a storage fault as StorageInternalError, or an AssertionError from
            # its trial bookkeeping when the final write failed: the fault in its chain is the line to show.
            fault = storage_fault(e)
            if fault is None or debug:
                raise
            print(f"error: {fault}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return exit_status(EXIT_OK if code is None else code)


def _pipe_closed(stream) -> bool:
    """Whether ``stream`` writes to a pipe whose reader has closed it (poll reports an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a test's StringIO)
        return True


def _quiet_broken_pipe() -> int:
    """Point standard output at /dev/null, so that what is still buffered for it goes nowhere; exit 141.

    Python ignores SIGPIPE, so writing to a pipe whose reader has gone raises ``BrokenPipeError``; the
    buffered rest would raise it again when the interpreter flushes at exit ("Exception ignored ...", exit
    120). Python's documentation (the note on SIGPIPE in the ``signal`` module) recommends this redirect.
    Standard error gets the same where it is the pipe that closed (``2>&1 | head -1``).
    """
    _to_devnull(sys.stdout)
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        _to_devnull(sys.stderr)
    except (AttributeError, OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _to_devnull(stream: TextIO) -> None:
    """Make ``stream``'s file descriptor /dev/null; a stream without one (a test's capture) is left as it is."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
