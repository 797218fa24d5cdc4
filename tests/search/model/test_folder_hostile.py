"""Hostile model folders, generated here, handed to ``python -m search.predict`` as a user would be handed them.

Think of a folder received from a stranger: links to /dev/zero or to files outside it, FIFOs, huge or deeply
nested JSON, NaN, infinity, negative and bool-as-int fields, a spec of 8192 filters or one that fits the
spec's limits and still makes 8 GB feature maps, weights whose names, shapes or dtypes are not the spec's or
whose header lies about its size, a task whose classes contradict it, an unknown format version. Each
refusal must be exit 2 with one line naming the file and the field, no traceback, no hang, bounded memory
and nothing written anywhere. The optional files (metrics.json, MODEL_CARD.md) must never fail a
prediction, nor silently drop what they would have said.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import search.model.folder
from lungct.records import PreprocessConfig, get_task
from search.model.folder import CARD, ENSEMBLE, METRICS, PREPROCESS, SPEC, WEIGHTS, ModelInfo, save_model
from search.predict import main
from space import ArchSpec, LevelSpec, TrainSpec, build, memory
from tests.conftest import synthetic_ct, write_nifti

SIZE = (16, 24, 20)
DEADLINE_S = 20  # a case that takes longer hangs (each takes well under a second)
MAX_PYTHON_PEAK = 8 << 20  # Python allocations of one case (tracemalloc); measured: at most 0.8 MiB
REPO = Path(__file__).resolve().parents[3]


def valid_folder(path: Path) -> Path:
    """A complete, valid model folder (tiny spec, phantom-trained metrics, a card) as export writes it."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(0)
    save_model(path, build(spec).eval(), spec, TrainSpec(), ModelInfo.for_task(get_task("course"),
                                                                                 PreprocessConfig(size=SIZE)))
    (path / METRICS).write_text(json.dumps({"data": {"phantoms": True}, "test": {"n": 3}}))
    (path / CARD).write_text("# Model card\n")
    return path


# --- mutations: each takes (folder, a folder outside it) and spoils one thing ---------------------------------

def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def mutate(folder: Path, outside: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return mutate


def put(*keys_and_value) -> Callable[[dict], None]:
    *keys, value = keys_and_value

    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        if value is KeyError:
            del data[keys[-1]]
        else:
            data[keys[-1]] = value
    return change


def rename(key: str, to: str) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data[to] = data.pop(key)
    return change


def text(name: str, content: bytes | str) -> Callable[[Path, Path], None]:
    def mutate(folder: Path, outside: Path) -> None:
        (folder / name).unlink()
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return mutate


def link(name: str, target: str | None = None) -> Callable[[Path, Path], None]:
    """``name`` becomes a symbolic link to ``target``, or to a good copy of itself outside the folder."""
    def mutate(folder: Path, outside: Path) -> None:
        to = target
        if to is None:
            to = str(outside / name)
            shutil.copy(folder / name, to)
        (folder / name).unlink()
        (folder / name).symlink_to(to)
    return mutate


def fifo(name: str) -> Callable[[Path, Path], None]:
    def mutate(folder: Path, outside: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)
    return mutate


def a_folder(name: str) -> Callable[[Path, Path], None]:
    def mutate(folder: Path, outside: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return mutate


def nested(depth: int) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}"


def state(change: Callable[[dict], None], metadata: dict | None = None) -> Callable[[Path, Path], None]:
    """Rewrite the weights from their state dict after ``change(state)``."""
    def mutate(folder: Path, outside: Path) -> None:
        tensors = load_file(folder / WEIGHTS)
        change(tensors)
        save_file(tensors, str(folder / WEIGHTS), metadata=metadata)
    return mutate


def header(change: Callable[[dict], None], length: Callable[[int], int] | None = None,
           cut: int | None = None) -> Callable[[Path, Path], None]:
    """Rewrite the safetensors header (and optionally its length field, or cut the file) around the same data."""
    def mutate(folder: Path, outside: Path) -> None:
        raw = (folder / WEIGHTS).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        head = json.loads(raw[8:8 + n])
        change(head)
        encoded = json.dumps(head).encode()
        out = struct.pack("<Q", length(len(encoded)) if length else len(encoded)) + encoded + raw[8 + n:]
        (folder / WEIGHTS).write_bytes(out[:cut] if cut is not None else out)
    return mutate


def other_metadata_spec(head: dict) -> None:
    spec = json.loads(head["__metadata__"]["spec"])
    spec["activation"] = "elu"  # the same tensors, another network
    head["__metadata__"]["spec"] = json.dumps(spec)


def overlap(head: dict) -> None:
    head["head.out.bias"]["data_offsets"] = [0, 4]


def sparse(name: str, size: int) -> Callable[[Path, Path], None]:
    def mutate(folder: Path, outside: Path) -> None:
        os.truncate(folder / name, size)  # a sparse file: no disk used
    return mutate


def huge_spec(folder: Path, outside: Path) -> None:
    """A consistent folder of 2 MB: one level of 2048 filters at the seed's 64x128x128, its weights the spec's.

    Within the spec's limits and the input size cap, but a forward pass makes 8.6 GB feature maps.
    """
    spec = ArchSpec(levels=(LevelSpec(2048),), padding="same", head_units=())
    info = ModelInfo.for_task(get_task("course"), PreprocessConfig(size=(64, 128, 128)))
    save_model(folder, build(spec), spec, TrainSpec(), info)


def swap_classes(data: dict) -> None:
    data["negative"], data["positive"] = data["positive"], data["negative"]
    data["classes"] = data["classes"][::-1]


# name -> (mutation, the file refused, words the line must hold)
REFUSED: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    # files that are not what they claim to be
    "spec_links_to_dev_zero": (link(SPEC, "/dev/zero"), SPEC, "outside the model folder"),
    "weights_link_to_dev_zero": (link(WEIGHTS, "/dev/zero"), WEIGHTS, "outside the model folder"),
    "preprocess_links_out_of_the_folder": (link(PREPROCESS), PREPROCESS, "outside the model folder"),
    "ensemble_links_to_dev_zero": (link(ENSEMBLE, "/dev/zero"), ENSEMBLE, "outside the model folder"),
    "spec_is_a_fifo": (fifo(SPEC), SPEC, "a FIFO, not a regular file"),
    "weights_is_a_fifo": (fifo(WEIGHTS), WEIGHTS, "a FIFO, not a regular file"),
    "preprocess_is_a_folder": (a_folder(PREPROCESS), PREPROCESS, "a folder, not a regular file"),
    "spec_of_2_mib": (text(SPEC, " " * (2 << 20) + "{}"), SPEC, "more than the 1,048,576"),
    "weights_sparse_10_gb": (sparse(WEIGHTS, 10 << 30), WEIGHTS, "more than the"),
    # JSON that is not plain data
    "preprocess_nested_200000_deep": (text(PREPROCESS, nested(200_000)), PREPROCESS, "nested deeper than 32"),
    "preprocess_nested_40_deep": (text(PREPROCESS, nested(40)), PREPROCESS, "nested deeper than 32"),
    "preprocess_repeats_threshold": (text(PREPROCESS, '{"threshold": 0.5, "threshold": 0.01}'), PREPROCESS,
                                     "threshold: the key appears more than once"),
    "spec_not_utf8": (text(SPEC, b'{"levels": "\xff"}'), SPEC, "not UTF-8"),
    "preprocess_5000_digit_number": (text(PREPROCESS, '{"threshold": ' + "9" * 5000 + "}"), PREPROCESS,
                                     "unreadable"),
    "spec_is_a_list": (text(SPEC, "[]"), SPEC, "expected a JSON object"),
    "spec_is_empty": (text(SPEC, ""), SPEC, "unreadable"),
    # preprocess.json fields
    "format_version_2": (edit_json(PREPROCESS, put("format_version", 2)), PREPROCESS, "format_version: unknown 2"),
    "format_version_missing": (edit_json(PREPROCESS, put("format_version", KeyError)), PREPROCESS,
                               "format_version: missing"),
    "format_version_true": (edit_json(PREPROCESS, put("format_version", True)), PREPROCESS, "format_version"),
    "format_version_string": (edit_json(PREPROCESS, put("format_version", "1")), PREPROCESS, "format_version"),
    "threshold_nan": (edit_json(PREPROCESS, put("threshold", float("nan"))), PREPROCESS, "threshold"),
    "threshold_minus_inf": (edit_json(PREPROCESS, put("threshold", float("-inf"))), PREPROCESS, "threshold"),
    "threshold_true": (edit_json(PREPROCESS, put("threshold", True)), PREPROCESS, "threshold"),
    "threshold_0": (edit_json(PREPROCESS, put("threshold", 0)), PREPROCESS, "threshold: expected a number strictly"),
    "threshold_1": (edit_json(PREPROCESS, put("threshold", 1.0)), PREPROCESS, "threshold: expected a number strictly"),
    "size_bool_as_int": (edit_json(PREPROCESS, put("preprocess", "size", [True, 24, 20])), PREPROCESS,
                         "preprocess.size"),
    "size_negative": (edit_json(PREPROCESS, put("preprocess", "size", [-16, 24, 20])), PREPROCESS, "preprocess.size"),
    "size_above_the_cap": (edit_json(PREPROCESS, put("preprocess", "size", [256, 256, 257])), PREPROCESS,
                           "preprocess.size"),
    "hu_min_minus_1e30": (edit_json(PREPROCESS, put("preprocess", "hu_min", -1e30)), PREPROCESS,
                          "preprocess.hu_min"),
    "preprocess_misspelt_threshold": (edit_json(PREPROCESS, rename("threshold", "Threshold")), PREPROCESS,
                                      "Threshold: unknown key; did you mean 'threshold'?"),
    "spec_misspelt_field": (edit_json(SPEC, rename("dropout", "Dropout")), SPEC, "did you mean 'dropout'?"),
    "preprocess_extra_field": (edit_json(PREPROCESS, put("preprocess", "gamma", 2.0)), PREPROCESS,
                               "preprocess: expected an object with exactly"),
    "task_unknown": (edit_json(PREPROCESS, put("task", "covid")), PREPROCESS, "task: unknown task 'covid'"),
    "task_a_number": (edit_json(PREPROCESS, put("task", 1)), PREPROCESS, "task: expected a task name"),
    "ct0_named_positive": (edit_json(PREPROCESS, put("positive", ["CT-0"])), PREPROCESS,
                           "positive: ['CT-0'] contradicts task 'course'"),
    "classes_and_categories_swapped": (edit_json(PREPROCESS, swap_classes), PREPROCESS,
                                       "negative: ['CT-2', 'CT-3'] contradicts task 'course'"),
    "class_names_swapped": (edit_json(PREPROCESS, put("classes", ["CT-2 or CT-3", "CT-0"])), PREPROCESS,
                            "classes: ['CT-2 or CT-3', 'CT-0'] contradicts"),
    "unknown_category": (edit_json(PREPROCESS, put("positive", ["CT-9"])), PREPROCESS, "positive: unknown categor"),
    "task_description_changed": (edit_json(PREPROCESS, put("task_description", "CT-0 is sick")), PREPROCESS,
                                 "task_description"),
    # spec.json fields
    "spec_8192_filters": (edit_json(SPEC, put("levels", 0, "filters", 8192)), SPEC,
                          "ArchSpec.levels[0]: LevelSpec.filters: must be <= 2,048"),
    "spec_negative_filters": (edit_json(SPEC, put("levels", 0, "filters", -1)), SPEC, "LevelSpec.filters"),
    "spec_bool_filters": (edit_json(SPEC, put("levels", 0, "filters", True)), SPEC, "LevelSpec.filters"),
    "spec_float_filters": (edit_json(SPEC, put("levels", 0, "filters", 4.5)), SPEC, "LevelSpec.filters"),
    "spec_1000_convs": (edit_json(SPEC, put("levels", 0, "n_convs", 1000)), SPEC, "LevelSpec.n_convs: must be <= 8"),
    "spec_9_levels": (edit_json(SPEC, put("levels", [{"filters": 4}] * 9)), SPEC, "ArchSpec.levels: at most 8"),
    "spec_head_of_100000": (edit_json(SPEC, put("head_units", [100_000])), SPEC, "ArchSpec.head_units[0]"),
    "spec_dropout_nan": (edit_json(SPEC, put("dropout", float("nan"))), SPEC, "ArchSpec.dropout"),
    "spec_code_as_activation": (edit_json(SPEC, put("activation", "__import__('os')")), SPEC, "ArchSpec.activation"),
    "spec_unknown_field": (edit_json(SPEC, put("weights_url", "http://x")), SPEC, "<field name>"),
    "spec_of_8_gb_feature_maps": (huge_spec, SPEC, "levels: the network needs about"),
    # ensemble.json
    "ensemble_of_a_billion": (text(ENSEMBLE, '{"members": 1000000000}'), ENSEMBLE, "members"),
    "ensemble_of_true": (text(ENSEMBLE, '{"members": true}'), ENSEMBLE, "members"),
    "ensemble_misspelt_members": (text(ENSEMBLE, '{"members": 1, "Members": 3}'), ENSEMBLE, "did you mean 'members'?"),
    # weights.safetensors: names, shapes, dtypes
    "weights_wrong_shape": (state(put("head.out.weight", torch.zeros(1, 9))), WEIGHTS,
                            "head.out.weight has shape [1, 9], the spec's is [1, 8]"),
    "weights_float64": (state(lambda t: t.update({k: v.double() for k, v in t.items() if v.is_floating_point()})),
                        WEIGHTS, "dtype: 'F64'"),
    "weights_counter_as_float": (state(lambda t: t.update({k: v.float() for k, v in t.items()
                                                           if k.endswith("num_batches_tracked")})),
                                 WEIGHTS, "has dtype F32, the spec's is I64"),
    "weights_extra_tensor": (state(put("evil", torch.zeros(3))), WEIGHTS, "unexpected evil"),
    "weights_missing_tensor": (state(put("head.out.bias", KeyError)), WEIGHTS, "missing head.out.bias"),
    "weights_metadata_of_another_spec": (header(other_metadata_spec), WEIGHTS, "its metadata holds another spec"),
    # weights.safetensors: a header that lies
    "weights_header_claims_2_to_the_62": (header(lambda h: None, length=lambda n: 1 << 62), WEIGHTS,
                                          "header: claims 4,611,686,018,427,387,904 bytes"),
    "weights_truncated_in_the_header": (header(lambda h: None, cut=100), WEIGHTS, "header: claims"),
    "weights_truncated_in_the_data": (header(lambda h: None, cut=-40), WEIGHTS, "truncated"),
    "weights_empty": (text(WEIGHTS, b""), WEIGHTS, "header: 0 bytes"),
    "weights_overlapping_tensors": (header(overlap), WEIGHTS, "data_offsets"),
    "weights_are_a_pickle": (text(WEIGHTS, b"\x80\x04\x95" + b"\x00" * 64), WEIGHTS, "header"),
}


class Hang(BaseException):
    """Raised by the deadline; a BaseException, so no handler for OSError or Exception swallows it."""


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    # The first meta-device pass imports torch's dispatch machinery (sympy and ~800 modules: about 60 MB of
    # Python allocations and a second, once per process); done here, it is not counted against a case.
    memory(ArchSpec(levels=(LevelSpec(4),)), SIZE)
    return valid_folder(tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> str:
    return str(write_nifti(tmp_path_factory.mktemp("scan") / "s.nii.gz", synthetic_ct()))


def make_case(good: Path, root: Path, case: str) -> Path:
    """A copy of the good folder under ``root``/model with the case's mutation (an ensemble.json for its cases)."""
    folder, outside = root / "model", root / "outside"
    shutil.copytree(good, folder)
    outside.mkdir()
    if case.startswith("ensemble_"):
        (folder / ENSEMBLE).write_text('{"members": 1}')
    REFUSED[case][0](folder, outside) if case in REFUSED else OPTIONAL[case][0](folder, outside)
    return folder


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def run_guarded(argv: list[str], root: Path, capsys, monkeypatch) -> tuple[int, str, str, int]:
    """``main(argv)`` from an empty working folder under a deadline, with tracemalloc; (code, out, err, peak)."""
    (root / "cwd").mkdir()
    monkeypatch.chdir(root / "cwd")
    before = snapshot(root)

    def hang(signum, frame):
        raise Hang(f"no answer within {DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
    tracemalloc.start()
    try:
        code = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    assert snapshot(root) == before, "something was written, moved or removed"
    assert "Traceback" not in out + err
    return code, out, err, peak


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_model_folder_is_refused_in_one_line_naming_file_and_field(good, scan, tmp_path, capsys, monkeypatch,
                                                                           case):
    _, name, words = REFUSED[case]
    folder = make_case(good, tmp_path, case)
    monkeypatch.setattr(search.model.folder, "machine_memory_bytes", lambda: 16 << 30)  # the same cap on every host
    code, out, err, peak = run_guarded([str(folder), scan], tmp_path, capsys, monkeypatch)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {folder / name}: ") and words in lines[0], lines[0]
    assert peak < MAX_PYTHON_PEAK, f"{peak:,} bytes"


def test_the_valid_folder_predicts(good, scan, tmp_path, capsys, monkeypatch):
    code, out, err, _ = run_guarded([str(good), scan, "--json"], tmp_path, capsys, monkeypatch)
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["trained_on_phantoms"] is True and result["notes"] == [] and len(result["results"]) == 1


def test_memory_cap_is_said_with_the_flag_that_raises_it(good, scan, tmp_path, capsys, monkeypatch):
    code, _, err, _ = run_guarded([str(good), scan, "--max-memory-gb", "0.0001"], tmp_path, capsys, monkeypatch)
    assert code == 2
    line, = err.strip().splitlines()
    assert line.startswith(f"error: {good / SPEC}: levels: the network needs about ") and "--max-memory-gb" in line
    assert main([str(good), scan, "--max-memory-gb", "1"]) == 0


def test_default_memory_cap_is_half_the_machine(good, scan, tmp_path, capsys, monkeypatch):
    folder = make_case(good, tmp_path / "c", "spec_of_8_gb_feature_maps")
    monkeypatch.setattr(search.model.folder, "machine_memory_bytes", lambda: 16 << 30)
    _, _, err, _ = run_guarded([str(folder), scan], tmp_path, capsys, monkeypatch)
    assert "for one scan at 64x128x128 (preprocess.json), above the cap of 8.59 GB, 0.5 of the memory" in err
    monkeypatch.setattr(search.model.folder, "machine_memory_bytes", lambda: 1 << 40)
    assert search.model.folder.check_memory(folder, ArchSpec.from_json((folder / SPEC).read_text()), (64, 128, 128), 1)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_memory_gb_must_be_a_positive_number(good, scan, capsys, value):
    assert main([str(good), scan, "--max-memory-gb", value]) == 2
    assert capsys.readouterr().err.startswith("error: --max-memory-gb: expected a positive number")


# Optional files: the prediction goes ahead, and the one line says what is unknown.
OPTIONAL: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "metrics_links_to_dev_zero": (link(METRICS, "/dev/zero"), "outside the model folder"),
    "metrics_is_a_fifo": (fifo(METRICS), "a FIFO, not a regular file"),
    "metrics_not_json": (text(METRICS, "{not json"), "unreadable"),
    "metrics_phantoms_as_a_string": (text(METRICS, '{"data": {"phantoms": "yes"}}'), "data.phantoms"),
    "metrics_misspelt_data": (text(METRICS, '{"Data": {"phantoms": true}}'), "Data: unknown key; did you mean 'data'?"),
    "metrics_of_10_mib": (text(METRICS, " " * (10 << 20)), "more than the"),
    "metrics_nested_100000_deep": (text(METRICS, nested(100_000)), "nested deeper"),
}


@pytest.mark.parametrize("case", sorted(OPTIONAL))
def test_unreadable_metrics_keeps_a_warning_instead_of_the_phantom_line(good, scan, tmp_path, capsys, monkeypatch,
                                                                        case):
    folder = make_case(good, tmp_path, case)
    code, out, err, peak = run_guarded([str(folder), scan], tmp_path, capsys, monkeypatch)
    assert code == 0 and err == ""
    line, = [line for line in out.splitlines() if METRICS in line]
    assert line.startswith(f"warning: {folder / METRICS}: ") and OPTIONAL[case][1] in line
    assert "whether this model was trained on the synthetic phantoms is unknown" in line
    assert peak < MAX_PYTHON_PEAK, f"{peak:,} bytes"
    assert main([str(folder), scan, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trained_on_phantoms"] is None and any(METRICS in note for note in result["notes"])


def test_missing_optional_files_are_said_in_one_line_each(good, scan, tmp_path, capsys, monkeypatch):
    folder = make_case(good, tmp_path, "none")
    (folder / METRICS).unlink()
    link(CARD)(folder, tmp_path / "outside")
    code, out, _, _ = run_guarded([str(folder), scan], tmp_path, capsys, monkeypatch)
    assert code == 0
    assert sum(METRICS in line for line in out.splitlines()) == 1 and f"no {METRICS} in {folder}" in out
    card, = [line for line in out.splitlines() if CARD in line]
    assert "outside the model folder" in card and "the model card is unreadable" in card


OPTIONAL["none"] = (lambda folder, outside: None, "")


def test_a_link_within_the_folder_is_followed(good, scan, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    (folder / "spec-v1.json").write_bytes((folder / SPEC).read_bytes())
    (folder / SPEC).unlink()
    (folder / SPEC).symlink_to("spec-v1.json")
    assert main([str(folder), scan]) == 0


HARNESS = """
import contextlib, io, json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from search.predict import main
results = {}
for name, argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results[name] = [main(argv), err.getvalue()]
# VmHWM, this process's own peak: ru_maxrss keeps the forking parent's peak across exec (pytest's, which
# reaches ~1.7 GB late in the suite), so it measured the test runner, not predict.
with open("/proc/self/status") as fh:
    results["max_rss_kib"] = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(json.dumps(results))
"""


def test_every_hostile_folder_is_refused_under_a_3_gib_address_space(good, scan, tmp_path):
    """The same cases in one fresh process whose address space is capped at 3 GiB, so that a C allocation
    (torch, safetensors) past the cap would crash it: every case must still be a one-line exit 2, quickly,
    within a resident set of 1 GiB. The default memory cap then follows the limit (half of 3 GiB)."""
    cases = [(case, [str(make_case(good, tmp_path / case, case)), scan]) for case in sorted(REFUSED)]
    (tmp_path / "cwd").mkdir()
    before = snapshot(tmp_path)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HARNESS, str(3 << 30)], input=json.dumps(cases), text=True,
                          capture_output=True, timeout=120, cwd=tmp_path / "cwd",
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for case, argv in cases:
        code, err = results[case]
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (case, err)
        assert err.startswith(f"error: {argv[0]}/{REFUSED[case][1]}: "), (case, err)
    assert results["max_rss_kib"] < 1 << 20, f"{results['max_rss_kib']:,} KiB"
    assert time.monotonic() - start < 100
    assert snapshot(tmp_path) == before
