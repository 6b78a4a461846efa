"""Synthetic campaigns: series shape and ground truth, acquisition errors, and the files written."""

import csv

import numpy as np
import pytest
import tifffile
import xarray as xr

from phasepipe import simulate

FIVE = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)


def spec(texture: str = "vortex", **overrides) -> simulate.SeriesSpec:
    """A small series (64 px) with five images."""
    settings = {"size_px": 64, "defocus_nominal_nm": FIVE} | overrides
    return simulate.SeriesSpec(f"t_{texture}", texture, **settings)


@pytest.mark.parametrize("texture", simulate.TEXTURES)
def test_series_images_and_truth(texture):
    """Each texture gives N finite float32 images with positive mean, and a complete ground truth."""
    images, truth = simulate.simulate_series(spec(texture))
    assert images.shape == (5, 64, 64)
    assert images.dtype == np.float32
    assert np.all(np.isfinite(images))
    assert np.all(images.mean(axis=(1, 2)) > 0)
    for name in ("phase", "amplitude", "defocus_nm", "defocus_nominal_nm", "shift_y_px", "shift_x_px"):
        assert name in truth
    assert truth["phase"].shape == (64, 64)
    assert truth["defocus_nm"].shape == (5,)
    np.testing.assert_array_equal(truth["defocus_nominal_nm"].values, FIVE)
    assert truth["phase"].std() > 0.1  # the texture is there
    assert np.all((truth["amplitude"] > 0) & (truth["amplitude"] <= 1))


def test_defocus_calibration_and_reference_drift():
    """True defocus = calibration x nominal (up to 0.2 % jitter); drift is measured from the in-focus image."""
    _, truth = simulate.simulate_series(spec(calibration=1.05, drift_px=3.0))
    nominal = truth["defocus_nominal_nm"].values
    true = truth["defocus_nm"].values
    defocused = nominal != 0
    np.testing.assert_allclose(true[defocused] / nominal[defocused], 1.05, atol=0.01)
    assert true[~defocused] == pytest.approx(0.0)
    reference = int(np.argmin(np.abs(nominal)))
    assert truth["shift_y_px"].values[reference] == 0.0
    assert truth["shift_x_px"].values[reference] == 0.0
    assert np.abs(np.concatenate([truth["shift_y_px"].values, truth["shift_x_px"].values])).max() > 0.5


def test_seed_determines_the_series():
    """The same seed reproduces images exactly; another seed gives another object and noise."""
    first, _ = simulate.simulate_series(spec(seed=7))
    again, _ = simulate.simulate_series(spec(seed=7))
    other, _ = simulate.simulate_series(spec(seed=8))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 0.01 * first.mean()


def test_unknown_texture_is_rejected_by_name():
    """An unknown texture raises ValueError naming it."""
    with pytest.raises(ValueError, match="'bubbles'"):
        simulate.simulate_series(spec("bubbles"))


def test_write_campaign(tmp_path):
    """One calibrated ImageJ TIFF (1 / pixel size per nm), one truth zarr per series, and a TSV sheet."""
    specs = [spec("vortex"), spec("stripes", pixel_size_nm=2.5, defocus_nominal_nm=FIVE[1:4])]
    sheet = simulate.write_campaign(tmp_path, specs)

    with open(sheet, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(specs)
    assert tuple(rows[0].keys()) == simulate.SHEET_COLUMNS

    for row, s in zip(rows, specs, strict=True):
        assert row["series"] == s.series
        np.testing.assert_allclose([float(d) for d in row["defocus_nm"].split(",")], s.defocus_nominal_nm)
        images, _ = simulate.simulate_series(s)
        with tifffile.TiffFile(tmp_path / row["files"]) as tif:
            assert tif.is_imagej
            assert tif.imagej_metadata["unit"] == "nm"
            num, den = tif.pages[0].tags["XResolution"].value
            assert num / den == pytest.approx(1 / s.pixel_size_nm)
            np.testing.assert_array_equal(tif.asarray(), images)
        truth = xr.open_zarr(tmp_path / row["truth"], consolidated=False)
        np.testing.assert_allclose(truth["defocus_nominal_nm"].values, s.defocus_nominal_nm)
        assert truth["phase"].shape == (s.size_px, s.size_px)
