"""A tiny labelled data set for search tests, made once per session."""

import pytest

from tests.conftest import make_mosmed


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """30 scans in the MosMedData layout: 12 CT-0, 12 CT-2/CT-3 (the task's), 2 CT-1 (excluded)."""
    return make_mosmed(tmp_path_factory.mktemp("tinydata"), {"CT-0": 12, "CT-1": 2, "CT-2": 8, "CT-3": 4})
