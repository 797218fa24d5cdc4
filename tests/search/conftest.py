"""A tiny labelled data set for search tests, made once per session; precision pinning; a spy on scan loading;
loading a benchmark script as a module."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import lungct.nifti
import search.training.data
from lungct.discover import discover
from search.training.precision import PRECISION_ENV
from tests.conftest import make_mosmed

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """30 scans in the MosMedData layout: 12 CT-0, 12 CT-2/CT-3 (the task's), 2 CT-1 (excluded)."""
    return make_mosmed(tmp_path_factory.mktemp("tinydata"), {"CT-0": 12, "CT-1": 2, "CT-2": 8, "CT-3": 4})


@pytest.fixture(scope="session")
def severity_data(tmp_path_factory):
    """32 scans in the MosMedData layout with every grade of the severity task: 8 CT-0, 8 CT-1, 8 CT-2, 8 CT-3/CT-4."""
    return make_mosmed(tmp_path_factory.mktemp("severitydata"),
                       {"CT-0": 8, "CT-1": 8, "CT-2": 8, "CT-3": 6, "CT-4": 2})


@pytest.fixture(scope="session")
def one_trial_study(tiny_data, tmp_path_factory):
    """A studies folder holding a one-trial study of ``tiny_data`` (the seed baseline, no confirmation), made once;
    tests that write into it work on a copy."""
    from search import run  # only the tests that ask for it import the search

    root = tmp_path_factory.mktemp("one-trial-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        assert run.main(["--data", str(tiny_data), "--studies-dir", str(root), "--trials", "1", "--no-confirm",
                         "--size", "16", "16", "32", "--epochs", "1", "--workers", "1"]) == 0
    return root


@pytest.fixture(scope="session", autouse=True)
def float32_session():
    """float32 from the session's start, so the module and session fixtures that run a study or an export train
    in it too: a session fixture is set up before them, a function one only after. Without it those fixtures
    trained in bf16 where the CPU has it, with a bf16 probe per spec; with AVX2 kernels on a bf16 CPU (how CI's
    AVX2-only kind is emulated) bf16 runs in software and they took 12-24x as long (benchmarks/RESULTS.md,
    "Test suite")."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        yield


@pytest.fixture(autouse=True)
def float32(monkeypatch):
    """Every search test trains in float32 whatever this CPU's bf16 does, so what it asserts holds on every
    host (Intel with AMX, AMD without); tests of bf16 itself (test_precision.py) reset the policy."""
    monkeypatch.setenv(PRECISION_ENV, "float32")


class ScanSpy:
    """Records the study ids of the scans lungct's loader is asked for, and the path of every scan it reads."""

    def __init__(self, monkeypatch):
        self.asked: set[str] = set()
        self.read: set[str] = set()
        real_load, real_read = search.training.data.load_scans, lungct.nifti.read_scan

        def load(records, *args, **kwargs):
            self.asked |= {r.study_id for r in records}
            return real_load(records, *args, **kwargs)

        def read(path, *args, **kwargs):  # decoding runs in this process with --workers 1
            self.read.add(str(path))
            return real_read(path, *args, **kwargs)

        monkeypatch.setattr(search.training.data, "load_scans", load)
        monkeypatch.setattr(lungct.nifti, "read_scan", read)


def locked_test_part(studies_dir, data) -> tuple[set[str], set[str]]:
    """The study ids of the split file's test part, and the paths of their scans."""
    (split_file,) = (studies_dir / "splits").glob("split-*.json")
    test = set(json.loads(split_file.read_text())["test"])
    return test, {str(r.path) for r in discover(data, "course").records if r.study_id in test}


@pytest.fixture
def scan_spy(monkeypatch) -> ScanSpy:
    """A :class:`ScanSpy` for one test."""
    return ScanSpy(monkeypatch)
