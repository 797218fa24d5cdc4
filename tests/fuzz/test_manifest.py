"""Fuzzing the CSV files discovery reads (``lungct.discover``): a manifest, and a MosMedData registry.

Both come with the data, from whoever made it. Examples are CSV files of any columns (the expected ones in any
case and spacing, and others), ragged rows, cells that name files that exist, do not, escape the folder, name a
user that does not exist or hold control characters, categories and labels valid or not, under every task;
written as UTF-8 with or without a BOM, as UTF-16 or Latin-1, or with bytes changed. Discovery must give records
it can stand behind (existing files, unique study ids, labels the task allows) and a reason for each file it
passes over, or a one-line ``DataError``.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from lungct.discover import REGISTRY_NAME, Discovery, discover
from lungct.errors import DataError, printable
from lungct.records import TASKS, get_task
from tests.fuzz.common import examples, mutated_bytes

ROOT = "{root}"  # stands for the example's folder in a cell, filled in when the file is written
FILES = ("a.nii.gz", "b.nii", "notes.txt", "sub/c.NII.GZ", "studies/CT-0/s1.nii.gz", "studies/CT-1/s2.nii.gz",
         "studies/CT-3/s3.nii", "studies/CT-23/s4.nii.gz")

path_cells = st.one_of(
    st.sampled_from(FILES),
    st.sampled_from(FILES).map(lambda f: f"{ROOT}/{f}"),
    st.sampled_from(FILES).map(lambda f: f"/{f}"),
    st.sampled_from(["", " ", "missing.nii.gz", "../a.nii.gz", "sub/../a.nii.gz", "~/a.nii.gz", "~nosuchuser9/a.nii",
                     "a.nii.gz\x00", "\x1b[2Ja.nii", "a" * 300 + ".nii", "sub", ".", "/dev/null", "\\a.nii.gz"]),
    st.text(max_size=10),
)
category_cells = st.one_of(st.sampled_from(["CT-0", "CT-1", "CT-2", "CT-3", "CT-4", "CT-23", "ct-2", " CT-3 ", "CT-5",
                                            "", "\u202eCT-0"]), st.text(max_size=5))
label_cells = st.one_of(st.sampled_from(["0", "1", " 1", "2", "-1", "1.0", "", "true"]), st.text(max_size=3))
cells = st.one_of(path_cells, category_cells, label_cells)
manifest_columns = st.one_of(st.sampled_from(["path", "category", "label", "study_id", " Path ", "LABEL", "extra", ""]),
                             st.text(max_size=6))
registry_columns = st.one_of(st.sampled_from(["study_id", "category", "study_file", "mask_file", "Category", ""]),
                             st.text(max_size=6))


def csv_text(columns: st.SearchStrategy[str], required: list[str]) -> st.SearchStrategy[str]:
    """CSV text: a header (the required columns with others, or any), then rows that may be ragged."""
    @st.composite
    def build(draw: st.DrawFn) -> str:
        header = draw(st.one_of(st.permutations(required).flatmap(
            lambda cols: st.lists(columns, max_size=2).map(lambda extra: list(cols) + extra)),
            st.lists(columns, max_size=5)))
        rows = draw(st.lists(st.lists(cells, min_size=max(0, len(header) - 1), max_size=len(header) + 1), max_size=6))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    return build()


def encoded(texts: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """CSV text as UTF-8 (with or without a BOM), UTF-16, Latin-1, or with bytes changed."""
    return st.tuples(texts, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "mutated"])).flatmap(
        lambda pair: mutated_bytes(pair[0].encode("utf-8", "surrogatepass")) if pair[1] == "mutated"
        else st.just(pair[0].encode(pair[1], "replace" if pair[1] == "latin-1" else "surrogatepass")))


def make_files(root: Path) -> None:
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # discovery never reads image data


def check_discovery(found: Discovery, task: str) -> None:
    """What discovery returns can be trusted: existing files, unique ids, labels the task allows, reasons."""
    kept = found.records + found.excluded
    assert kept, "discover returned no scans instead of raising DataError"
    assert len({r.study_id for r in kept}) == len(kept)
    for record in kept:
        assert Path(record.path).is_absolute() and Path(record.path).is_file(), record.path
    assert all(r.label in range(get_task(task).n_grades) for r in found.records)
    assert all(r.label is None for r in found.excluded)
    assert all(isinstance(s.reason, str) and s.reason and printable(str(s)) == str(s) for s in found.skipped)


@examples(5)
@given(content=encoded(csv_text(manifest_columns, ["path", "category"]) | csv_text(manifest_columns, ["path", "label"])
                       | st.text(max_size=40)),
       task=st.sampled_from(sorted(TASKS)))
def test_discover_reads_any_manifest_as_trustworthy_records_or_a_data_error(content, task):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        root = Path(holder)
        make_files(root)
        manifest = root / "manifest.csv"
        manifest.write_bytes(content.replace(ROOT.encode(), str(root).encode()))
        try:
            found = discover(manifest, task)
        except DataError:  # one printable line by construction (lungct.errors)
            return
        assert found.layout == "manifest"
        check_discovery(found, task)


@examples(5)
@given(content=encoded(csv_text(registry_columns, ["study_id", "category", "study_file", "mask_file"])),
       task=st.sampled_from(sorted(TASKS)))
def test_discover_reads_any_mosmeddata_registry_as_trustworthy_records_or_a_data_error(content, task):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        root = Path(holder)
        make_files(root)
        (root / REGISTRY_NAME).write_bytes(content.replace(ROOT.encode(), str(root).encode()))
        try:
            found = discover(root, task)
        except DataError:
            return
        assert found.layout == "mosmeddata"
        check_discovery(found, task)
