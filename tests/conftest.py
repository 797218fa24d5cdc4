"""Shared test helpers: tiny, deliberately non-cubic synthetic CT volumes written with nibabel."""

from __future__ import annotations

# isort: off
# First, before numpy or torch loads: pins this pytest-xdist worker to its own cores and sizes `-n auto`.
from tests.workers import (  # noqa: F401
    every_core,
    pytest_collection_modifyitems,
    pytest_xdist_auto_num_workers,
    worker_index,
    worker_name,
)
# isort: on

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# The workplace keeps two real scans in a shared/ folder beside the checkout, or beside a folder above it
# (a clone made elsewhere in the same workspace); LUNGCT_REAL_CT points anywhere else.
_CANDIDATES = [parent / "shared" / "data" / "real-ct" for parent in Path(__file__).resolve().parents[1:]]
REAL_CT_DIR = Path(os.environ.get("LUNGCT_REAL_CT") or next(
    (c for c in _CANDIDATES if (c / "example_ct.nii.gz").is_file()), _CANDIDATES[0]))


def synthetic_ct(shape_xyz: tuple[int, int, int] = (20, 24, 16), seed: int = 0) -> np.ndarray:
    """A small HU volume in (x, y, z) order: air around an elliptic body holding two darker lungs."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_xyz), indexing="ij")
    hu = np.full(shape_xyz, -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    hu[((x - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0
    hu[((x + 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0
    hu[(x / 0.12) ** 2 + ((y + 0.55) / 0.12) ** 2 < 1] = 700.0  # spine
    hu += 10.0 * z  # a gradient along z, so an axis flip shows
    return hu + rng.normal(0, 5, shape_xyz)


@pytest.fixture
def all_cores():
    """Every core of the machine for this test, though under ``-n`` its worker has only its share: for the tests of
    ``search.run --jobs 2``, which refuses more worker processes than cores."""
    with every_core():
        yield


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype=np.int16,
                slope: float | None = None, inter: float | None = None) -> Path:
    """Write ``data`` (HU, x/y/z order) as NIfTI; with slope/intercept it is stored raw and rescaled on load."""
    affine = np.diag([0.7, 0.7, 8.0, 1.0]) if affine is None else affine
    if slope is not None:
        stored = np.round((data - (inter or 0.0)) / slope).astype(dtype)
        image = nib.Nifti1Image(stored, affine)
        image.header.set_slope_inter(slope, inter or 0.0)
    else:
        data = np.asarray(data)
        image = nib.Nifti1Image((np.round(data) if np.issubdtype(dtype, np.integer) else data).astype(dtype), affine)
        image.header.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def make_mosmed(root: Path, per_category: dict[str, int] | None = None, registry: bool = True) -> Path:
    """A tiny data set in the MosMedData layout, with a UTF-8-with-BOM registry."""
    per_category = per_category or {"CT-0": 2, "CT-1": 1, "CT-2": 1, "CT-3": 1}
    rows, n = [], 0
    for category, count in per_category.items():
        for _ in range(count):
            n += 1
            rel = f"studies/{category}/study_{n:04d}.nii.gz"
            write_nifti(root / rel, synthetic_ct(seed=n))
            rows.append({"study_id": n, "category": category, "study_file": "/" + rel, "mask_file": ""})
    if registry:
        with (root / "dataset_registry.csv").open("w", newline="", encoding="utf-8-sig") as fh:
            writer = csv.DictWriter(fh, ["study_id", "category", "study_file", "mask_file"])
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture
def ct_volume() -> np.ndarray:
    """A (20, 24, 16) synthetic CT volume in HU."""
    return synthetic_ct()


@pytest.fixture
def real_ct_dir() -> Path:
    """The two real CT scans shipped in ../shared/data/real-ct (skipped where absent)."""
    if not (REAL_CT_DIR / "example_ct.nii.gz").is_file():
        pytest.skip(f"real CT scans not found in {REAL_CT_DIR}")
    return REAL_CT_DIR


POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres"


def _worker_database(url: str) -> str:
    """``url`` itself without xdist; else a fresh database of this worker's own on that server, so that two
    workers never create Optuna's tables in one database at the same moment (a race PostgreSQL reports as
    "relation already exists")."""
    worker = worker_name()
    if not worker:
        return url
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    with psycopg.connect(base.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a real PostgreSQL server: $LUNGCT_TEST_POSTGRES (CI starts one with .ci/postgres), else a
    throwaway one started here from the machine's PostgreSQL binaries. Without either the test is skipped,
    unless $LUNGCT_REQUIRE_POSTGRES is set (as in CI): then it fails."""
    url = os.environ.get("LUNGCT_TEST_POSTGRES")
    if url:
        yield _worker_database(url)
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        message = "no PostgreSQL server: set LUNGCT_TEST_POSTGRES or install Debian's postgresql package"
        if os.environ.get("LUNGCT_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lungct-pg-"))
    folder.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    env = {**os.environ, "LUNGCT_PG_PORT": str(55433 + worker_index())}  # one server per xdist worker
    started = subprocess.run([str(POSTGRES_SCRIPT), "start", str(folder / "pg")], capture_output=True, text=True,
                             env=env)
    if started.returncode != 0:
        pytest.fail(f"could not start PostgreSQL: {started.stderr.strip()}")
    yield started.stdout.strip()
    subprocess.run([str(POSTGRES_SCRIPT), "stop", str(folder / "pg")], capture_output=True, env=env)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_kind(request) -> str:
    """Run a test against the local default storage (SQLite) and against a real PostgreSQL server."""
    return request.param
