"""Input: image files (TIFF), ingestion of a series and the Zarr stores that join the stages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from phasepipe import imagefiles, ingest, io, sheet, simulate

DEFOCUS = (-1.6e6, 0.0, 1.6e6)
DEFAULTS = {"voltage_kv": 200.0, "cs_mm": 1.0, "beam_divergence_mrad": 0.01, "defocus_spread_nm": 500.0}
HEADER = "series\tfiles\tdefocus_nm"


def _sheet(folder: Path, text: str, name: str = "series.tsv") -> Path:
    """Write a TSV sheet from lines whose fields are separated by '|' (easier to read than tabs)."""
    path = folder / name
    path.write_text(text.replace("|", "\t"))
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Three simulated 32 px images: (3, 32, 32) float32, distinct from each other."""
    stack, _ = simulate.simulate_series(
        simulate.SeriesSpec("s1", "vortex", size_px=32, defocus_nominal_nm=DEFOCUS, seed=3)
    )
    return stack


def _write_2d(path: Path, image: np.ndarray, pixel_size_nm: float = 5.0) -> None:
    """One calibrated 2-D image file (a 1-page ImageJ TIFF, read back as 2-D)."""
    imagefiles.write_tiff(path, image[None], pixel_size_nm)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _row(tmp_path: Path, files: str, defocus=DEFOCUS, **kwargs) -> sheet.SeriesRow:
    return sheet.SeriesRow(series="s1", files=files, defocus_nm=tuple(defocus), sheet_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


def test_ingest_simulated_campaign(tmp_path):
    """A campaign written by the simulator ingests: float32 (image, y, x), nm coords, nominal defocus, provenance."""
    spec = simulate.SeriesSpec("s1", "vortex", size_px=32, defocus_nominal_nm=DEFOCUS, seed=1, session="day1")
    (row,) = sheet.read_sheet(simulate.write_campaign(tmp_path, [spec]))
    ds = ingest.ingest(row, DEFAULTS)
    expected, _ = simulate.simulate_series(spec)
    assert ds["intensity"].dims == ("image", "y", "x")
    assert ds["intensity"].shape == (3, 32, 32)
    assert ds["intensity"].dtype == np.float32
    np.testing.assert_array_equal(ds["intensity"].values, expected)
    assert float(ds["y"][1] - ds["y"][0]) == pytest.approx(5.0)
    assert float(ds["x"][31]) == pytest.approx(31 * 5.0)
    np.testing.assert_array_equal(ds["defocus_nominal_nm"].values, DEFOCUS)
    assert ds.attrs["status"] == "ok"
    assert ds.attrs["series"] == "s1"
    assert ds.attrs["session"] == "day1"
    assert ds.attrs["pixel_size_nm"] == pytest.approx(5.0)
    assert json.loads(ds.attrs["source_files"]) == {"s1.tif": _sha256(tmp_path / "s1.tif")}
    assert json.loads(ds.attrs["microscope"]) == DEFAULTS
    assert not io.is_failed(ds)


def test_ingest_microscope_overrides_and_pixel_size_from_sheet(tmp_path, images):
    """Sheet columns override the microscope defaults; pixel_size_nm overrides the file's 5 nm calibration."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    path = _sheet(
        tmp_path,
        f"{HEADER}|pixel_size_nm|voltage_kv|defocus_spread_nm\ns1|stack.tif|-1.6e6,0,1.6e6|2.5|300|250\n",
    )
    ds = ingest.ingest(sheet.sheet_row(path, "s1"), DEFAULTS)
    assert ds.attrs["pixel_size_nm"] == 2.5
    assert float(ds["y"][1] - ds["y"][0]) == pytest.approx(2.5)
    assert float(ds["x"][1] - ds["x"][0]) == pytest.approx(2.5)
    assert json.loads(ds.attrs["microscope"]) == {
        "voltage_kv": 300.0,
        "cs_mm": 1.0,
        "beam_divergence_mrad": 0.01,
        "defocus_spread_nm": 250.0,
    }


def test_ingest_stacks_2d_files_in_listed_order(tmp_path, images):
    """Three 2-D files listed 'c;a;b' stack in that order (not alphabetically), each checksummed."""
    names = ["c.tif", "a.tif", "b.tif"]
    for name, image in zip(names, images, strict=True):
        _write_2d(tmp_path / name, image)
    ds = ingest.ingest(_row(tmp_path, ";".join(names)), DEFAULTS)
    assert ds["intensity"].shape == (3, 32, 32)
    np.testing.assert_array_equal(ds["intensity"].values, images)
    assert json.loads(ds.attrs["source_files"]) == {name: _sha256(tmp_path / name) for name in names}


def _refusal(row: sheet.SeriesRow, *parts: str) -> str:
    """ingest(row) raises InputError whose message contains every part; returns the message."""
    with pytest.raises(imagefiles.InputError) as info:
        ingest.ingest(row, DEFAULTS)
    message = str(info.value).replace(str(row.sheet_dir), "<dir>")  # test names are in tmp_path
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_ingest_refuses_image_count_differing_from_defocus_list(tmp_path, images):
    """3 images with 4 defocus values is refused, naming series, file and both counts."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    _refusal(
        _row(tmp_path, "stack.tif", defocus=(-2e6, -1e6, 0, 1e6)), "series s1", "stack.tif", "3 images", "4 defocus"
    )


def test_ingest_refuses_nan_pixels(tmp_path, images):
    """Two non-finite pixels (NaN and inf) are refused and counted."""
    bad = images.copy()
    bad[1, 5, 5] = np.nan
    bad[2, 0, 0] = np.inf
    imagefiles.write_tiff(tmp_path / "stack.tif", bad, 5.0)
    _refusal(_row(tmp_path, "stack.tif"), "series s1", "stack.tif", "2 NaN or infinite")


def test_ingest_refuses_images_of_different_shapes(tmp_path, images):
    """2-D files of 32x32 and 32x24 in one series are refused, naming the shapes and files."""
    _write_2d(tmp_path / "a.tif", images[0])
    _write_2d(tmp_path / "b.tif", images[1, :, :24])
    _write_2d(tmp_path / "c.tif", images[2])
    _refusal(_row(tmp_path, "a.tif;b.tif;c.tif"), "series s1", "b.tif", "different shapes", "(32, 24)")


def test_ingest_refuses_a_missing_file(tmp_path, images):
    """A listed file that does not exist is refused by name."""
    _write_2d(tmp_path / "a.tif", images[0])
    _refusal(_row(tmp_path, "a.tif;gone.tif;a.tif"), "series s1", "gone.tif", "does not exist")


def test_ingest_refuses_a_garbage_file(tmp_path):
    """A file that is not a TIFF at all is refused by name, raw input untouched."""
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"this is not an image " * 20)
    before = path.read_bytes()
    _refusal(_row(tmp_path, "garbage.tif"), "series s1", "garbage.tif", "cannot be read")
    assert path.read_bytes() == before


def test_ingest_refuses_a_truncated_2d_file(tmp_path, images):
    """A 2-D file cut short inside its pixel data is refused by name."""
    _write_2d(tmp_path / "a.tif", images[0])
    _write_2d(tmp_path / "b.tif", images[1])
    _write_2d(tmp_path / "c.tif", images[2])
    raw = (tmp_path / "b.tif").read_bytes()
    (tmp_path / "b.tif").write_bytes(raw[: len(raw) - 1000])
    _refusal(_row(tmp_path, "a.tif;b.tif;c.tif"), "series s1", "b.tif", "cannot be read")


def test_ingest_refuses_a_truncated_stack(tmp_path, images):
    """A 3-image stack cut in half is refused, naming series and file."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    raw = (tmp_path / "stack.tif").read_bytes()
    (tmp_path / "stack.tif").write_bytes(raw[: len(raw) // 2])
    _refusal(_row(tmp_path, "stack.tif"), "series s1", "stack.tif")


def test_ingest_truncated_stack_message_says_the_file_is_damaged(tmp_path, images):
    """The message for a truncated stack says what is wrong: the file is truncated or corrupt."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    raw = (tmp_path / "stack.tif").read_bytes()
    (tmp_path / "stack.tif").write_bytes(raw[: len(raw) // 2])
    message = _refusal(_row(tmp_path, "stack.tif"), "stack.tif")
    assert any(word in message for word in ("truncated", "corrupt", "cannot be read")), message


def test_ingest_refuses_an_uncalibrated_tiff_without_sheet_pixel_size(tmp_path, images):
    """A TIFF without calibration needs pixel_size_nm in the sheet; with it, the same file ingests."""
    tifffile.imwrite(tmp_path / "plain.tif", images, photometric="minisblack")
    _refusal(_row(tmp_path, "plain.tif"), "series s1", "plain.tif", "pixel_size_nm")
    ds = ingest.ingest(_row(tmp_path, "plain.tif", pixel_size_nm=4.0), DEFAULTS)
    assert float(ds["y"][1] - ds["y"][0]) == pytest.approx(4.0)


def test_ingest_refuses_non_square_pixels(tmp_path, images):
    """SPEC 'Bad input': a non-square pixel calibration (5 nm x 6 nm) is refused."""
    tifffile.imwrite(
        tmp_path / "rect.tif",
        images,
        imagej=True,
        resolution=(1 / 5.0, 1 / 6.0),
        metadata={"unit": "nm", "axes": "ZYX"},
    )
    _refusal(_row(tmp_path, "rect.tif"), "series s1", "rect.tif")


def test_ingest_refuses_a_file_list_without_files(tmp_path):
    """files = ';' names no file: InputError (the CLI only turns InputError into a failed store)."""
    with pytest.raises(imagefiles.InputError, match="series s1"):
        ingest.ingest(_row(tmp_path, ";"), DEFAULTS)


# ---------------------------------------------------------------------------------------------
# stores
# ---------------------------------------------------------------------------------------------


def test_store_round_trip_zarr_v3(tmp_path, images):
    """write_store writes a Zarr v3 store (zarr.json at its root, tiled chunks); open_store reads it back equal."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    ds = ingest.ingest(_row(tmp_path, "stack.tif"), DEFAULTS)
    store = tmp_path / "s1.zarr"
    io.write_store(ds, store, chunk_px=16)
    root = json.loads((store / "zarr.json").read_text())
    assert root["zarr_format"] == 3
    assert root["node_type"] == "group"
    back = io.open_store(store)
    assert back["intensity"].encoding["chunks"] == (3, 16, 16)
    back = back.load()
    xr.testing.assert_identical(back, ds)
    assert back["intensity"].dtype == np.float32

    io.write_store(ds.isel(image=[0]), store)  # an existing store is replaced, not merged
    assert io.open_store(store).sizes["image"] == 1


def test_failed_store_round_trip(tmp_path):
    """A failed series' store keeps status, message and stage through Zarr; is_failed tells it apart."""
    store = tmp_path / "bad.zarr"
    io.write_store(io.failed_dataset("bad", "series bad: file x.tif does not exist", "ingest"), store)
    assert (store / "zarr.json").is_file()
    back = io.open_store(store)
    assert io.is_failed(back)
    assert back.attrs == {
        "series": "bad",
        "status": "failed",
        "error": "series bad: file x.tif does not exist",
        "failed_stage": "ingest",
    }
    assert not io.is_failed(xr.Dataset(attrs={"series": "ok", "status": "ok"}))


def test_hot_and_dead_pixels_are_repaired_and_counted():
    """A hot pixel and a detector zero are replaced by their neighbours' median; the rest is untouched."""
    rng = np.random.default_rng(0)
    stack = rng.normal(1000.0, 10.0, size=(2, 64, 64)).astype(np.float32)
    clean = stack.copy()
    stack[0, 10, 20] = 60000.0
    stack[1, 30, 31] = 0.0
    hot, dead = ingest.repair_outlier_pixels(stack)
    assert (hot, dead) == (1, 1)
    assert abs(stack[0, 10, 20] - 1000.0) < 40 and abs(stack[1, 30, 31] - 1000.0) < 40
    changed = np.argwhere(stack != clean)
    assert sorted(map(tuple, changed)) == [(0, 10, 20), (1, 30, 31)]


def test_simulated_series_has_no_false_hot_pixels():
    """Strong Lorentz contrast (caustics at 1.6 mm) is not mistaken for hot pixels."""
    for spec in simulate.demo_campaign():
        images, _ = simulate.simulate_series(spec)
        assert ingest.repair_outlier_pixels(images.copy()) == (0, 0), spec.series


def test_ingest_fails_a_row_with_a_problem_before_reading_any_file(tmp_path):
    """A row the sheet found implausible fails with that problem; its (missing) files are not looked at."""
    row = _row(tmp_path, "not-there.tif", problem="series s1: column voltage_kv (...): is 200000.0, outside ...")
    message = _refusal(row, "column voltage_kv")
    assert "does not exist" not in message


def test_ingest_refuses_um_typed_as_nm_at_the_files_pixel_size(tmp_path, images):
    """Defocus 1600 'nm' (um meant) forms no contrast at the file's 5 nm pixels: refused by name."""
    imagefiles.write_tiff(tmp_path / "stack.tif", images, 5.0)
    _refusal(_row(tmp_path, "stack.tif", defocus=(-1600, 0, 1600)), "series s1", "defocus_nm", "did you give mm or um")
