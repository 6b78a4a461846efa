"""Real vendor files (DM3/DM4, EMD, MRC) through read_rsciio, inspect_file, `phasepipe inspect` and ingest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from phasepipe import cli, imagefiles, ingest, sheet

FORMATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
DEFAULTS = {"voltage_kv": 200.0, "cs_mm": 1.0, "beam_divergence_mrad": 0.01, "defocus_spread_nm": 500.0}

# What the files hold, as rosettasciio 0.15 reads them (shape as [n, y, x], pixel (y, x) in nm).
# stackbuilder: 0.05998290330171585 µm per pixel; dmTest: y 2 Å, x 1 nm; the others carry no
# calibration (scale 1 with no unit, or the MRC reader's -1 nm for an empty cell).
EXPECTED = {
    "test-1.dm3": ("DigitalMicrograph", [1, 2, 2], "int16", None),
    "test-1.dm4": ("DigitalMicrograph", [2, 2, 2], "int16", None),
    "test-2-stack.dm3": ("DigitalMicrograph", [2, 2, 2], "float32", None),
    "test_stackbuilder_imagestack.dm3": ("DigitalMicrograph", [3, 2, 16], "uint32", [59.98290330171585] * 2),
    "dmTest_float32_nonSquare_diffPixelSize.dm3": ("DigitalMicrograph", [1, 64, 128], "float32", [0.2, 1.0]),
    "example_image.emd": ("EMD", [1, 3, 3], "int32", None),
    "ROI_Random_Scan_movie.mrc": ("MRC", [348, 16, 16], "uint16", None),
}


@pytest.fixture(scope="module")
def formats() -> Path:
    if not FORMATS.is_dir():
        pytest.skip(f"real vendor files not found at {FORMATS} (the shared data folder is absent)")
    return FORMATS


def test_every_vendor_file_is_expected(formats):
    """The table above covers the folder: a new file there must get its expected values here."""
    assert sorted(p.name for p in formats.iterdir() if p.name != "README.md") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_file_reports_shape_dtype_and_calibration(formats, name):
    """inspect_file gives format, [n, y, x], the file's dtype and the pixel size in nm."""
    fmt, shape, dtype, pixel = EXPECTED[name]
    report = imagefiles.inspect_file(formats / name)
    assert report["error"] is None
    assert report["format"] == fmt
    assert report["shape"] == shape
    assert report["n_images"] == shape[0]
    assert report["dtype"] == dtype
    if pixel is None:
        assert report["pixel_size_nm"] is None
        assert any("no usable pixel calibration" in p for p in report["problems"])
    else:
        assert report["pixel_size_nm"] == pytest.approx(pixel, rel=1e-9)


def test_non_square_pixels_are_a_problem(formats):
    """2 Å by 1 nm pixels: read in nm per axis, and reported as non-square."""
    report = imagefiles.inspect_file(formats / "dmTest_float32_nonSquare_diffPixelSize.dm3")
    assert report["pixel_size_nm"] == pytest.approx([0.2, 1.0])
    assert any("non-square" in p for p in report["problems"])


def test_calibrated_square_stack_has_no_problems(formats):
    report = imagefiles.inspect_file(formats / "test_stackbuilder_imagestack.dm3")
    assert report["problems"] == []


def test_read_rsciio_returns_the_file_data(formats):
    """read_rsciio gives the array rosettasciio reads, untouched, with the signal axes last."""
    from rsciio.digitalmicrograph import file_reader

    data, pixel, meta = imagefiles.read_rsciio(formats / "test_stackbuilder_imagestack.dm3")
    (signal,) = file_reader(str(formats / "test_stackbuilder_imagestack.dm3"))
    np.testing.assert_array_equal(data, signal["data"])
    assert pixel == pytest.approx((59.98290330171585, 59.98290330171585))
    assert meta["format"] == "DigitalMicrograph"


def test_cli_inspect_json_matches_inspect_file(formats, capsys):
    """`phasepipe inspect --json` lists one object per file, the same as inspect_file, exit 0."""
    paths = [str(formats / name) for name in sorted(EXPECTED)]
    cli.main(["inspect", "--json", *paths])
    reports = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in reports] == paths
    for report in reports:
        fmt, shape, dtype, pixel = EXPECTED[Path(report["path"]).name]
        assert (report["format"], report["shape"], report["dtype"]) == (fmt, shape, dtype)
        assert report["pixel_size_nm"] == (pytest.approx(pixel) if pixel else None)


def test_cli_inspect_table_one_line_per_file(formats, capsys):
    paths = [str(formats / name) for name in sorted(EXPECTED)]
    cli.main(["inspect", *paths])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(paths)  # header + one per file
    assert "3 x 2 x 16" in next(line for line in lines if "stackbuilder" in line)


@pytest.fixture
def truncated_dm3(formats, tmp_path) -> Path:
    """A copy of a DM3 file cut inside its tag tree, as an interrupted transfer leaves it."""
    raw = (formats / "test-1.dm3").read_bytes()
    path = tmp_path / "cut.dm3"
    path.write_bytes(raw[:20000])
    return path


@pytest.fixture
def spectrum_tif(tmp_path) -> Path:
    """A 1-D array (a spectrum) saved as TIFF."""
    path = tmp_path / "spectrum.tif"
    tifffile.imwrite(path, np.arange(64, dtype=np.float32))
    return path


@pytest.fixture
def spectrum_msa(tmp_path) -> Path:
    """A 1-D EMSA spectrum written by rosettasciio: read through the rsciio fallback."""
    from rsciio.msa import file_writer

    path = tmp_path / "spectrum.msa"
    axis = {"size": 64, "index_in_array": 0, "name": "Energy", "scale": 0.01, "offset": 0.0, "units": "keV"}
    signal = {
        "data": np.arange(64, dtype=np.float32),
        "axes": [axis],
        "metadata": {"General": {"title": "spectrum"}, "Signal": {"signal_type": "EDS"}},
        "original_metadata": {},
    }
    file_writer(str(path), signal)
    return path


def test_truncated_dm3_is_refused(truncated_dm3):
    report = imagefiles.inspect_file(truncated_dm3)
    assert "cut.dm3" in report["error"]
    assert "unreadable or truncated" in report["error"]
    assert report["shape"] is None


@pytest.mark.parametrize("fixture", ["spectrum_tif", "spectrum_msa"])
def test_spectrum_is_refused_as_1d(request, fixture):
    path = request.getfixturevalue(fixture)
    report = imagefiles.inspect_file(path)
    assert "1-D data" in report["error"]
    assert "where an image was expected" in report["error"]
    assert path.name in report["error"]


def test_cli_inspect_exits_non_zero_with_a_line_per_bad_file(formats, truncated_dm3, spectrum_tif, capsys):
    """Good and bad files together: all reported, exit 1, one reason per bad file on stderr."""
    good = formats / "test-1.dm3"
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect", "--json", str(good), str(truncated_dm3), str(spectrum_tif)])
    assert info.value.code != 0
    captured = capsys.readouterr()
    reports = json.loads(captured.out)
    assert [r["error"] is None for r in reports] == [True, False, False]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert "cut.dm3" in errors[0] and "truncated" in errors[0]
    assert "spectrum.tif" in errors[1] and "1-D data" in errors[1]


def test_ingest_refuses_a_truncated_dm3_naming_series_and_file(truncated_dm3):
    row = sheet.SeriesRow("s1", truncated_dm3.name, (0.0,), truncated_dm3.parent)
    with pytest.raises(imagefiles.InputError, match=r"series s1: file .*cut\.dm3 .*truncated"):
        ingest.ingest(row, DEFAULTS)


def test_ingest_dm3_stack_from_sheet(formats, tmp_path):
    """A DM3 stack through a sheet row: calibrated in µm (stackbuilder) and uncalibrated with pixel_size_nm."""
    for name in ("test_stackbuilder_imagestack.dm3", "test-2-stack.dm3"):
        shutil.copy(formats / name, tmp_path / name)
    path = tmp_path / "series.tsv"
    path.write_text(
        "series\tfiles\tdefocus_nm\tpixel_size_nm\n"
        "calibrated\ttest_stackbuilder_imagestack.dm3\t-1.6mm,0,1.6mm\t\n"
        "given\ttest-2-stack.dm3\t-1e5,1e5\t2.5\n"
        "missing\ttest-2-stack.dm3\t-1e5,1e5\t\n"
    )
    ds = ingest.ingest(sheet.sheet_row(path, "calibrated"), DEFAULTS)
    assert ds["intensity"].shape == (3, 2, 16)
    assert ds.attrs["pixel_size_nm"] == pytest.approx(59.98290330171585)
    assert ds.attrs["source_format"] == "DigitalMicrograph"
    assert float(ds["x"][1]) == pytest.approx(59.98290330171585)
    from rsciio.digitalmicrograph import file_reader

    (signal,) = file_reader(str(formats / "test_stackbuilder_imagestack.dm3"))
    np.testing.assert_array_equal(ds["intensity"].values, signal["data"].astype(np.float32))

    ds = ingest.ingest(sheet.sheet_row(path, "given"), DEFAULTS)
    assert ds["intensity"].shape == (2, 2, 2)
    assert ds.attrs["pixel_size_nm"] == 2.5

    with pytest.raises(imagefiles.InputError, match="series missing.*pixel_size_nm"):
        ingest.ingest(sheet.sheet_row(path, "missing"), DEFAULTS)


def test_rsciio_meta_picks_voltage_magnification_exposure_and_time():
    """Acquisition settings from rosettasciio's mapped metadata (the small vendor files carry none)."""
    import rsciio.digitalmicrograph as module

    signal = {
        "metadata": {
            "General": {"title": "img", "date": "2024-05-02", "time": "10:15:00"},
            "Acquisition_instrument": {
                "TEM": {"beam_energy": 300.0, "magnification": 20000, "Detector": {"Camera": {"exposure": 0.5}}}
            },
        }
    }
    meta = imagefiles._rsciio_meta(signal, module)
    assert meta == {
        "format": "DigitalMicrograph",
        "voltage_kv": 300.0,
        "magnification": 20000.0,
        "exposure_s": 0.5,
        "acquired": "2024-05-02T10:15:00",
        "title": "img",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_vendor_file_ingests(formats, name):
    """Each file ingests as a series (pixel_size_nm from the sheet where the file has no usable
    square calibration): float32 intensities of the file's shape, coordinates in nm."""
    _, shape, _, pixel = EXPECTED[name]
    square = pixel is not None and pixel[0] == pixel[1]
    row = sheet.SeriesRow(
        series="s1",
        files=name,
        defocus_nm=tuple(1.6e6 * (k + 1) for k in range(shape[0])),  # forms contrast at 60 nm pixels
        sheet_dir=formats,
        pixel_size_nm=None if square else 2.5,
    )
    ds = ingest.ingest(row, DEFAULTS)
    assert ds["intensity"].dtype == np.float32
    assert list(ds["intensity"].shape) == shape
    step = pixel[1] if square else 2.5
    if shape[2] > 1:
        assert float(ds["x"][1] - ds["x"][0]) == pytest.approx(step)
