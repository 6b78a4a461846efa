"""The separate stage's checks of a group, before any joint fit."""

import numpy as np
import pytest
import xarray as xr

from phasepipe import io, partners


def _store(series: str, shape=(64, 64), pixel=5.0) -> xr.Dataset:
    return xr.Dataset({"phase": (("y", "x"), np.zeros(shape))}, attrs={"series": series, "pixel_size_nm": pixel})


@pytest.mark.parametrize(
    ("stores", "message"),
    [
        ({"a": _store("a"), "b": io.failed_dataset("b", "bad file", "ingest")}, "partner(s) b failed"),
        ({"a": _store("a"), "b": _store("b", pixel=2.5)}, "different pixel size (a 5 nm, b 2.5 nm)"),
        ({"a": _store("a"), "b": _store("b", (64, 80))}, "different image shape (a 64 x 64 px, b 64 x 80 px)"),
        ({"a": _store("a", (600, 600)), "b": _store("b", (600, 600))}, "larger than one tile"),
    ],
)
def test_a_group_that_cannot_be_fitted_jointly_says_why(stores, message):
    assert message in partners.group_problem(stores, tile_px=512)


def test_a_group_of_like_series_can_be_fitted():
    assert partners.group_problem({"a": _store("a"), "b": _store("b")}, tile_px=512) == ""
