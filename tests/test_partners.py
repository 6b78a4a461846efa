"""The separate stage: its checks of a group before any joint fit, and the joint fit's length."""

import numpy as np
import pytest
import xarray as xr

from phasepipe import configuration, io, joint, partners, simulate


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


def _reconstructed_store(path, aligned: xr.Dataset) -> None:
    """A reconstructed store of what separate_group reads, for the series of ``aligned``."""
    nominal = aligned["defocus_nominal_nm"].values
    maps = np.ones((aligned.sizes["y"], aligned.sizes["x"]))
    io.write_store(
        xr.Dataset(
            {
                "phase": (("y", "x"), 0 * maps),
                "amplitude": (("y", "x"), maps),
                "defocus_nominal_nm": (("image",), nominal),
                "defocus_nm": (("image",), nominal),
                "shift_y_px": (("image",), 0 * nominal),
                "shift_x_px": (("image",), 0 * nominal),
            },
            attrs={"series": aligned.attrs["series"], "pixel_size_nm": 5.0, "tv_weight": 1e-2},
        ),
        path,
    )


@pytest.mark.parametrize(("iterations", "expected"), [(60, 60), ("auto", joint.ITERATIONS)])
def test_a_fixed_number_of_iterations_caps_the_joint_fit(tmp_path, monkeypatch, aligned_store, iterations, expected):
    """``reconstruction.iterations: 60`` (a quick look) gives the joint fit of a group 60
    iterations, not its own 600; ``auto`` leaves the 600."""
    lengths = []

    def joint_fit(*args, iterations, **kwargs):
        lengths.append(iterations)
        raise joint.RegistrationError("stopped by the test")

    monkeypatch.setattr(joint, "register_members", lambda members, starts: None)
    monkeypatch.setattr(joint, "separate", joint_fit)
    aligned, reconstructed = [], []
    for series in "ab":
        store, _ = aligned_store(tmp_path / f"aligned_{series}.zarr", simulate.SeriesSpec(series, "vortex", size_px=64))
        aligned.append(store)
        reconstructed.append(tmp_path / f"reconstructed_{series}.zarr")
        _reconstructed_store(reconstructed[-1], io.open_store(store).load())
    group = {"members": ["a", "b"], "relation": "flip", "roles": {"a": "magnetic", "b": "flip"}}
    section = configuration.shipped_defaults()["reconstruction"] | {"iterations": iterations}
    warnings = partners.separate_group(group, aligned, reconstructed, section, tmp_path / "out")
    assert lengths == [expected]
    assert warnings["b"] == "separation: stopped by the test; the series are reconstructed alone"
