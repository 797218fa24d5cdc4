"""Fuzzing NIfTI headers as a data loader reads them (``lungct.nifti.read_scan``): a volume, or a skipped scan.

Each example starts from a small valid CT file (NIfTI-1 or NIfTI-2, plain or gzipped) and changes its header as
stored, past nibabel's own fixes: any field to any value its type holds (dims and voxel sizes, the data type,
offsets, scaling, both voxel-to-world matrices, the magic), bytes flipped or cut, the data truncated, the gzip
stream damaged. Large sizes are declared in the header, never written. ``read_scan`` must give a finite (D, H, W)
volume that preprocessing takes, or a ``ScanError`` (whose message a loader shows as the scan's skip reason),
within the deadline and within memory that the file can account for.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
import tempfile
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lungct import nifti
from lungct.errors import ScanError
from lungct.records import PreprocessConfig
from tests.conftest import synthetic_ct, write_nifti
from tests.fuzz.common import examples, mutated_bytes

# Nibabel's header classes and the bytes of their header (the data follows, after any extensions).
FORMATS = {"nifti1": (nib.Nifti1Header, 348), "nifti2": (nib.Nifti2Header, 540)}
FIELDS = ("dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter", "qform_code", "sform_code",
          "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z",
          "sizeof_hdr", "magic", "xyzt_units", "intent_code", "dim_info")
DATATYPES = tuple(int(code) for code in nib.nifti1.data_type_codes.value_set("code"))
EDGE_INTS = (0, 1, 2, 3, 4, 7, 8, 16, 20, 24, 255, 348, 352, 540, 544, 32767, -1, -32768, 1 << 20, 1 << 31)
EDGE_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.7, 8.0, 1e-30, 1e30, 3e38, math.nan, math.inf, -math.inf)
CONFIG = PreprocessConfig(size=(8, 12, 10))
# Python allocations of one read (tracemalloc, which numpy reports to) may exceed the data the file can hold
# (its size, or 1032x that gzipped) this many times over: a float32 copy of int8 voxels, the canonical and
# transposed copies.
COPIES = 16
BASE_BYTES = 32 << 20


@functools.cache
def valid_file(kind: str) -> bytes:
    """The bytes of a valid small CT scan (20x24x16 int16, 8 mm slices) as NIfTI-1 or NIfTI-2, uncompressed."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        one = write_nifti(Path(holder) / "one.nii", synthetic_ct(seed=1))
        path = one
        if kind == "nifti2":
            image = nib.load(one)
            path = Path(holder) / "two.nii"
            nib.save(nib.Nifti2Image(np.asanyarray(image.dataobj), image.affine, image.header), path)
        nifti.read_scan(str(path))  # the fuzzing starts from scans the loader takes
        return path.read_bytes()


class NiftiCase:
    """A file to read, shown in a failure report by what was done to the valid scan, not by its 16 kB.

    A plain class, not a dataclass: Hypothesis prints a dataclass field by field, bytes included.
    """

    def __init__(self, content: bytes, suffix: str, changes: str):
        self.content, self.suffix, self.changes = content, suffix, changes

    def __repr__(self) -> str:
        return f"NiftiCase({self.suffix}, {self.changes}, {len(self.content):,} bytes)"


def field_values(dtype: np.dtype, name: str) -> st.SearchStrategy:
    """Any value a header field of ``dtype`` can hold, with its edge values and, per field, the usual ones."""
    base, shape = dtype.base, dtype.shape
    if base.kind in "iu":
        info = np.iinfo(base)
        edges = [v for v in EDGE_INTS if info.min <= v <= info.max] + [info.min, info.max]
        usual = DATATYPES if name == "datatype" else ()
        one = st.one_of(st.sampled_from(edges), st.sampled_from(usual) if usual else st.nothing(),
                        st.integers(info.min, info.max))
    elif base.kind == "f":
        one = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(width=32 if base.itemsize == 4 else 64))
    else:
        one = st.one_of(st.sampled_from([b"n+1", b"ni1", b"n+2", b"ni2", b"", b"n+1\x00\x00"]),
                        st.binary(max_size=base.itemsize))
    return st.lists(one, min_size=shape[0], max_size=shape[0]) if shape else one


@st.composite
def nifti_files(draw: st.DrawFn) -> NiftiCase:
    """A valid scan with its header patched, then perhaps damaged, perhaps gzipped (and the gzip damaged)."""
    kind = draw(st.sampled_from(sorted(FORMATS)))
    header_class, header_bytes = FORMATS[kind]
    raw = valid_file(kind)
    header = header_class(raw[:header_bytes], check=False)
    changes = [kind]
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=4)):
        value = draw(field_values(header.structarr.dtype[name], name))
        header[name] = value
        changes.append(f"{name}={value!r}")
    data = header.binaryblock + raw[header_bytes:]
    damage = draw(st.sampled_from(["none", "none", "header bytes", "anywhere", "cut"]))
    if damage == "header bytes":
        damaged = draw(mutated_bytes(data, focus=header_bytes + 4))
    elif damage == "anywhere":
        damaged = draw(mutated_bytes(data))
    elif damage == "cut":
        damaged = data[:draw(st.integers(0, len(data) - 1))]
    else:
        damaged = data
    if damaged != data:
        pairs = enumerate(zip(damaged, data, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(damaged), len(data)))
        changes.append(f"{damage} from byte {first}, {len(damaged):,} bytes")
    if not draw(st.booleans()):
        return NiftiCase(damaged, ".nii", ", ".join(changes))
    packed = gzip.compress(damaged, compresslevel=1, mtime=0)
    if draw(st.booleans()):
        packed = draw(mutated_bytes(packed))
        changes.append("gzip stream damaged")
    return NiftiCase(packed, ".nii.gz", ", ".join(changes))


def read_in_bounded_memory(case: NiftiCase) -> tuple[np.ndarray, nifti.ScanMeta] | ScanError:
    """``read_scan`` on the case's file: its result or its ScanError, after checking the memory it took."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        path = Path(holder) / f"scan{case.suffix}"
        path.write_bytes(case.content)
        tracemalloc.start()
        try:
            outcome = nifti.read_scan(str(path))
        except ScanError as e:
            outcome = e
        finally:  # any other exception propagates as it is
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    holdable = len(case.content) * (nifti.MAX_GZIP_RATIO if case.suffix == ".nii.gz" else 1)
    assert peak <= BASE_BYTES + COPIES * holdable, f"{peak:,} bytes allocated to read a {len(case.content):,}-byte file"
    return outcome


@examples(8)
@given(case=nifti_files())
def test_read_scan_gives_a_finite_volume_or_a_skip_reason_in_bounded_memory(case):
    outcome = read_in_bounded_memory(case)
    if isinstance(outcome, ScanError):
        assert str(outcome)  # the reason shown beside the skipped path
        return
    volume, meta = outcome
    assert volume.dtype == np.float32 and volume.ndim == 3 and np.isfinite(volume).all()
    assert sorted(volume.shape) == sorted(meta.shape) and meta.body_axis_slices >= nifti.MIN_SLICES
    model_input = nifti.preprocess(volume, CONFIG)
    assert model_input.shape == CONFIG.size and np.isfinite(model_input).all()


def _with_vox_offset(value: float) -> NiftiCase:
    raw = valid_file("nifti1")
    header = nib.Nifti1Header(raw[:348], check=False)
    header["vox_offset"] = value
    return NiftiCase(header.binaryblock + raw[348:], ".nii", f"nifti1, vox_offset={value}")


def _with_extension_claiming(size: int) -> NiftiCase:
    """A NIfTI-1 file with one 16-byte extension whose own header claims ``size`` bytes."""
    raw = valid_file("nifti1")
    header = nib.Nifti1Header(raw[:348], check=False)
    header["vox_offset"] = 352 + 16
    extension = struct.pack("<ii", size, 0) + bytes(8)
    return NiftiCase(header.binaryblock + b"\x01\x00\x00\x00" + extension + raw[352:], ".nii",
                     f"nifti1, an extension claiming {size:,} bytes")


# What the long profile found, kept as fixed examples so that they are checked on every run.
@pytest.mark.parametrize("make", [
    pytest.param(lambda: _with_vox_offset(math.inf), id="vox_offset_inf"),
    pytest.param(lambda: _with_vox_offset(-math.inf), id="vox_offset_minus_inf"),
    pytest.param(lambda: _with_extension_claiming(256 << 20), id="extension_claims_256MiB"),
    pytest.param(lambda: _with_extension_claiming((1 << 31) - 16), id="extension_claims_2GiB"),
])
def test_read_scan_found_cases_give_a_skip_reason_in_bounded_memory(make):
    assert isinstance(read_in_bounded_memory(make()), ScanError)
