import gzip

import nibabel as nib
import numpy as np
import pytest

import lungct.nifti
from lungct.errors import ScanError
from lungct.nifti import FLOAT32_COPIES, decoded_bytes, preprocess, read_scan
from lungct.records import PreprocessConfig
from tests.conftest import synthetic_ct, write_nifti


def test_read_scan_returns_slices_first_in_ras(tmp_path, ct_volume):
    volume, meta = read_scan(str(write_nifti(tmp_path / "a.nii.gz", ct_volume)))
    assert volume.shape == (16, 24, 20)  # (D, H, W) from stored (x, y, z) = (20, 24, 16)
    assert volume.dtype == np.float32
    np.testing.assert_allclose(volume, np.round(ct_volume).transpose(2, 1, 0))
    assert meta.shape == (20, 24, 16) and meta.orientation == "RAS"
    assert meta.spacing == pytest.approx((0.7, 0.7, 8.0))


def test_read_scan_same_volume_stored_lps_and_ras_gives_the_same_array(tmp_path, ct_volume):
    nx, ny, _ = ct_volume.shape
    ras = write_nifti(tmp_path / "ras.nii.gz", ct_volume)
    lps_affine = np.array([[-0.7, 0, 0, 0.7 * (nx - 1)], [0, -0.7, 0, 0.7 * (ny - 1)], [0, 0, 8.0, 0], [0, 0, 0, 1]])
    lps = write_nifti(tmp_path / "lps.nii.gz", ct_volume[::-1, ::-1, :], lps_affine)
    a, meta_a = read_scan(str(ras))
    b, meta_b = read_scan(str(lps))
    assert meta_b.orientation == "LPS" and meta_a.orientation == "RAS"
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, slope, inter", [
    (np.int16, 1.0, -1024.0),   # the usual CT export: stored 0..4095, HU = stored - 1024
    (np.int16, 0.5, -1000.0),
    (np.int32, None, None),
    (np.float32, None, None),
])
def test_read_scan_applies_scale_slope_and_intercept(tmp_path, ct_volume, dtype, slope, inter):
    path = write_nifti(tmp_path / "a.nii.gz", ct_volume, dtype=dtype, slope=slope, inter=inter)
    volume, _ = read_scan(str(path))
    np.testing.assert_allclose(volume, ct_volume.transpose(2, 1, 0), atol=(slope or 1.0) / 2 + 1e-3)


def test_read_scan_reads_uncompressed_nii(tmp_path, ct_volume):
    volume, _ = read_scan(str(write_nifti(tmp_path / "a.nii", ct_volume)))
    assert volume.shape == (16, 24, 20)


def test_read_scan_accepts_a_4d_file_holding_one_volume(tmp_path, ct_volume):
    volume, meta = read_scan(str(write_nifti(tmp_path / "a.nii.gz", ct_volume[..., None])))
    assert volume.shape == (16, 24, 20) and meta.shape == (20, 24, 16)


def _expect_skip(path, reason_part):
    with pytest.raises(ScanError) as err:
        read_scan(str(path))
    assert reason_part in str(err.value)
    assert "\n" not in str(err.value)


def test_read_scan_rejects_a_file_that_is_not_nifti(tmp_path):
    path = tmp_path / "a.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    _expect_skip(path, "not a readable NIfTI file")


def test_read_scan_rejects_a_truncated_gzip(tmp_path, ct_volume):
    path = write_nifti(tmp_path / "a.nii.gz", ct_volume)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_skip(path, "truncated or corrupt image data")


def test_read_scan_rejects_a_4d_series(tmp_path, ct_volume):
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", np.stack([ct_volume] * 3, -1)), "4D image of shape (20, 24, 16, 3)")


def test_read_scan_rejects_a_2d_image(tmp_path, ct_volume):
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", ct_volume[:, :, 0]), "2D image")


def test_read_scan_rejects_a_single_slice_volume(tmp_path, ct_volume):
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", ct_volume[:, :, :1]), "2D image")


def test_read_scan_rejects_non_finite_voxels(tmp_path, ct_volume):
    ct_volume[3, 4, 5] = np.nan
    ct_volume[1, 1, 1] = np.inf
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", ct_volume, dtype=np.float32), "2 non-finite voxels")


def test_read_scan_rejects_a_constant_volume(tmp_path):
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", np.full((20, 24, 16), -1000.0)), "constant volume")


def test_read_scan_rejects_an_mr_intensity_range(tmp_path):
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 1800, (20, 24, 16))
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", mr), "does not look like CT in HU")


def test_read_scan_rejects_ct_stored_without_its_rescale(tmp_path, ct_volume):
    raw = ct_volume + 1024.0  # the stored values, with the intercept lost
    _expect_skip(write_nifti(tmp_path / "a.nii.gz", raw), "without its rescale slope/intercept")


def test_read_scan_rejects_a_non_nifti_image_format(tmp_path, ct_volume):
    path = tmp_path / "a.mgz"
    nib.save(nib.MGHImage(ct_volume.astype(np.float32), np.eye(4)), str(path))
    _expect_skip(path, "not a NIfTI image")


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_decoded_bytes_is_the_stored_dtype_plus_the_float32_working_copies(dtype):
    assert FLOAT32_COPIES == 2
    assert decoded_bytes((20, 24, 16), np.dtype(dtype)) == 20 * 24 * 16 * (np.dtype(dtype).itemsize + 8)


def test_read_scan_refuses_a_scan_above_max_bytes_before_reading_its_data(tmp_path, ct_volume, monkeypatch):
    """A small .nii.gz may hold gigabytes of float64; what its decoding needs is known from the header alone."""
    path = str(write_nifti(tmp_path / "a.nii.gz", ct_volume, dtype=np.float64))
    need = decoded_bytes(ct_volume.shape, np.dtype(np.float64))

    def never(*args):
        raise AssertionError("the image data was read")

    monkeypatch.setattr(lungct.nifti, "_read_canonical", never)
    with pytest.raises(ScanError, match=r"^decoding it takes about 0\.000123 GB \(20x24x16 = 7,680 voxels of float64 "
                       r"plus 2 float32 working copies\), above the cap of 0\.000123 GB \(--max-memory-gb\); "
                       r"refused before its data was read$"):
        read_scan(path, max_bytes=need - 1, cap_note="--max-memory-gb")


def test_read_scan_reads_a_scan_whose_decoding_fits_max_bytes_exactly(tmp_path, ct_volume):
    path = str(write_nifti(tmp_path / "a.nii.gz", ct_volume, dtype=np.float64))
    volume, meta = read_scan(path, max_bytes=decoded_bytes(ct_volume.shape, np.dtype(np.float64)))
    assert volume.shape == (16, 24, 20) and meta.dtype == "float64"


def test_preprocess_windows_to_unit_range_and_resizes_to_float16(ct_volume):
    config = PreprocessConfig(size=(8, 12, 10))
    out = preprocess(ct_volume.transpose(2, 1, 0).astype(np.float32), config)
    assert out.shape == (8, 12, 10) and out.dtype == np.float16
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert out.min() == 0.0  # air at -1000 HU maps to 0


def test_preprocess_upsamples_the_slice_axis(ct_volume):
    out = preprocess(ct_volume.transpose(2, 1, 0).astype(np.float32), PreprocessConfig(size=(32, 12, 10)))
    assert out.shape == (32, 12, 10)


def test_preprocess_window_is_configurable(ct_volume):
    volume = ct_volume.transpose(2, 1, 0).astype(np.float32)
    narrow = preprocess(volume, PreprocessConfig(size=(16, 24, 20), hu_min=-1000, hu_max=-500))
    assert narrow.max() == 1.0  # soft tissue at 40 HU saturates a lung window


def test_preprocess_config_rejects_a_bad_window():
    with pytest.raises(ValueError, match="hu_max"):
        PreprocessConfig(hu_min=400, hu_max=-1000)


@pytest.mark.parametrize("name, shape", [("example_ct.nii.gz", (112, 101, 122)),
                                         ("example_ct_sm.nii.gz", (30, 101, 122))])
def test_read_scan_loads_the_real_ct_scans(real_ct_dir, name, shape):
    volume, meta = read_scan(str(real_ct_dir / name))
    assert volume.shape == shape and meta.orientation == "RAS" and meta.spacing == (3.0, 3.0, 3.0)
    assert -1300 < volume.min() < -900
    out = preprocess(volume, PreprocessConfig())
    assert out.shape == (64, 128, 128) and out.dtype == np.float16 and np.isfinite(out).all()


def test_synthetic_ct_helper_is_deterministic():
    np.testing.assert_array_equal(synthetic_ct(seed=3), synthetic_ct(seed=3))


def test_read_scan_rejects_an_axis_too_long_to_be_a_voxel_without_an_overflow_warning(tmp_path, ct_volume):
    path = tmp_path / "km.nii"  # NIfTI-2 stores the sform in float64: 1e200 is finite there, its square is not
    nib.save(nib.Nifti2Image(ct_volume.astype(np.int16), np.diag([0.7, 0.7, 8.0, 1.0])), str(path))
    raw = path.read_bytes()
    header = nib.Nifti2Header(raw[:540], check=False)
    header["srow_x"] = [1e200, 0.0, 0.0, 0.0]
    header["sform_code"], header["qform_code"] = 1, 0
    path.write_bytes(header.binaryblock + raw[540:])
    with np.errstate(all="raise"):  # an overflow inside the check would raise here, not only warn
        _expect_skip(path, "mm long: a corrupt header")


def test_read_scan_rejects_an_extension_claiming_more_than_the_file_holds_before_allocating_it(tmp_path, ct_volume):
    path = write_nifti(tmp_path / "scan.nii", ct_volume)
    raw = path.read_bytes()
    header = nib.Nifti1Header(raw[:348], check=False)
    header["vox_offset"] = 352 + 16
    claim = (1 << 31) - 16  # 2 GiB: nibabel would allocate it before finding the file far shorter
    path.write_bytes(header.binaryblock + b"\x01\x00\x00\x00" + np.array([claim, 0], "<i4").tobytes() + bytes(8)
                     + raw[352:])
    _expect_skip(path, f"a header extension claims {claim} bytes")
