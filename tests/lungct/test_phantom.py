"""Tests for lungct.phantom: layout, registry, categories, voxels, geometry, determinism and the CLI.

Small sets at ``matrix=64`` keep the whole file to a few seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungct.errors import DataError
from lungct.phantom import (
    INVOLVEMENT_BOUNDS,
    MARKER_NAME,
    REGISTRY_COLUMNS,
    assign_categories,
    class_counts,
    generate_phantoms,
    main,
    phantom_set_is_current,
    render_phantom,
)

MATRIX = 64
N = 6  # every category at least once (CT-2 twice)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    infos = generate_phantoms(out, N, seed=3, matrix=MATRIX, workers=1, progress=False)
    return out, infos


def read_registry(out: Path) -> list[dict]:
    with (out / "dataset_registry.csv").open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def canonical_volume(path: Path) -> np.ndarray:
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj).transpose(2, 1, 0)  # (D, H, W)


def test_class_counts_exact_for_default_n():
    assert class_counts(200) == {"CT-0": 80, "CT-1": 40, "CT-2": 50, "CT-3": 24, "CT-4": 6}


def test_class_counts_sum_to_n_and_keep_every_class_from_five():
    for n in range(1, 60):
        counts = class_counts(n)
        assert sum(counts.values()) == n
        if n >= 5:
            assert min(counts.values()) >= 1, (n, counts)
    assert class_counts(2) == {"CT-0": 1, "CT-1": 0, "CT-2": 1, "CT-3": 0, "CT-4": 0}


def test_assign_categories_shuffles_deterministically():
    assert assign_categories(50, 0) == assign_categories(50, 0)
    assert assign_categories(50, 0) != assign_categories(50, 1)
    expected = sorted(c for c, k in class_counts(50).items() for _ in range(k))
    assert sorted(assign_categories(50, 0)) == expected


def test_generate_phantoms_writes_mosmeddata_layout(phantom_set):
    out, infos = phantom_set
    assert [p.study_id for p in infos] == [f"study_{i:04d}" for i in range(1, N + 1)]
    assert {p.category for p in infos} == {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
    for p in infos:
        assert p.study_file == f"studies/{p.category}/{p.study_id}.nii.gz"
        assert (out / p.study_file).is_file()
    on_disk = sorted(f.relative_to(out).as_posix() for f in (out / "studies").rglob("*") if f.is_file())
    assert on_disk == sorted(p.study_file for p in infos)


def test_registry_is_bom_csv_listing_every_file(phantom_set):
    out, infos = phantom_set
    assert (out / "dataset_registry.csv").read_bytes().startswith(b"\xef\xbb\xbfstudy_id,")
    rows = read_registry(out)
    assert tuple(rows[0]) == REGISTRY_COLUMNS
    assert [r["study_id"] for r in rows] == [p.study_id for p in infos]
    for row in rows:
        path = out / row["study_file"]
        assert path.is_file()
        assert path.parent.name == row["category"]
        assert row["mask_file"] == ""


def test_registry_involvement_within_category_range(phantom_set):
    out, infos = phantom_set
    for row, info in zip(read_registry(out), infos, strict=True):
        inv, (lo, hi) = float(row["involvement"]), INVOLVEMENT_BOUNDS[row["category"]]
        assert inv == pytest.approx(info.involvement, abs=1e-6)
        if row["category"] == "CT-0":
            assert inv == 0.0
        elif row["category"] == "CT-1":
            assert 0.0 < inv < 0.25
        else:
            assert lo <= inv < hi, row


def test_phantom_files_are_int16_3d_with_plausible_hu(phantom_set):
    out, infos = phantom_set
    for p in infos:
        image = nib.load(out / p.study_file)
        data = np.asarray(image.dataobj)
        assert image.get_data_dtype() == np.int16
        assert data.ndim == 3 and data.shape == p.shape
        assert np.isfinite(data).all()
        assert data.min() <= -900
        assert (data >= 300).sum() > 20  # bone
        assert data.max() <= 3071


def test_phantom_affine_has_thick_slices_and_realistic_field_of_view(phantom_set):
    out, infos = phantom_set
    for p in infos:
        image = nib.load(out / p.study_file)
        spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
        np.testing.assert_allclose(spacing, p.spacing, rtol=1e-5)
        assert 8.0 <= spacing[2] <= 10.0
        assert 30 <= p.shape[2] <= 45
        assert 330.0 <= spacing[0] * MATRIX <= 385.0
        assert p.shape[:2] == (MATRIX, MATRIX)


def test_phantom_files_vary_stored_orientation_but_read_back_canonically(phantom_set):
    out, infos = phantom_set
    codes = {"".join(nib.aff2axcodes(nib.load(out / p.study_file).affine)) for p in infos}
    assert len(codes) > 1
    for i, p in enumerate(infos):
        volume = canonical_volume(out / p.study_file)
        np.testing.assert_array_equal(volume, render_phantom(3, i, p.category, matrix=MATRIX).volume_hu)
        # Canonical H runs posterior to anterior: the spine's dense bone sits in the back half.
        bone_rows = np.nonzero(volume >= 600)[1]
        assert bone_rows.size and bone_rows.mean() < volume.shape[1] / 2


def test_render_phantom_lesions_lie_in_lungs_and_raise_density():
    clean = render_phantom(0, 4, "CT-0", matrix=MATRIX)
    sick = render_phantom(0, 4, "CT-3", matrix=MATRIX)
    assert not clean.lesion_mask.any()
    assert not (sick.lesion_mask & ~sick.lung_mask).any()
    np.testing.assert_array_equal(clean.lung_mask, sick.lung_mask)  # the category changes lesions only
    healthy = sick.lung_mask & ~sick.lesion_mask
    assert sick.volume_hu[sick.lesion_mask].mean() > sick.volume_hu[healthy].mean() + 100


def test_generate_phantoms_deterministic_by_seed(tmp_path):
    first = generate_phantoms(tmp_path / "a", 2, seed=5, matrix=MATRIX, workers=1, progress=False)
    generate_phantoms(tmp_path / "b", 2, seed=5, matrix=MATRIX, workers=2, progress=False)
    generate_phantoms(tmp_path / "c", 2, seed=6, matrix=MATRIX, workers=1, progress=False)
    for p in first:
        a, b = tmp_path / "a" / p.study_file, tmp_path / "b" / p.study_file
        assert a.read_bytes() == b.read_bytes()  # serial and parallel runs write the same bytes
    va = canonical_volume(tmp_path / "a" / first[0].study_file)
    vc = canonical_volume(next((tmp_path / "c" / "studies").rglob("study_0001.nii.gz")))
    assert va.shape != vc.shape or not np.array_equal(va, vc)


def test_generate_phantoms_replaces_previous_set(tmp_path):
    generate_phantoms(tmp_path, 3, seed=0, matrix=MATRIX, workers=1, progress=False)
    infos = generate_phantoms(tmp_path, 2, seed=0, matrix=MATRIX, workers=1, progress=False)
    files = sorted(f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*.nii.gz"))
    assert files == sorted(p.study_file for p in infos)
    assert len(read_registry(tmp_path)) == 2
    assert phantom_set_is_current(tmp_path, n=2, seed=0, matrix=MATRIX)
    assert not phantom_set_is_current(tmp_path, n=3, seed=0, matrix=MATRIX)


def test_generate_phantoms_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=MARKER_NAME):
        generate_phantoms(tmp_path, 1, matrix=MATRIX, workers=1, progress=False)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["notes.txt"]


def test_main_writes_set(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "set"), "--n", "2", "--matrix", "64", "--workers", "1",
                 "--no-progress"]) == 0
    assert len(read_registry(tmp_path / "set")) == 2
    assert "wrote 2 phantoms" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "named"), [
    (["--n", "0"], "--n"),
    (["--matrix", "32"], "--matrix"),
    (["--workers", "0"], "--workers"),
])
def test_main_bad_argument_is_one_line_error(tmp_path, capsys, args, named):
    assert main(["--out", str(tmp_path / "set"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err
    assert not (tmp_path / "set").exists()


def test_main_foreign_out_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "data.nii.gz").write_bytes(b"not a phantom set")
    assert main(["--out", str(tmp_path), "--n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err
