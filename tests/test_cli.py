"""The command line run alone: failures exit non-zero, the workflow's flag records them instead;
``export`` and ``status``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import xarray as xr

from phasepipe import cli, imagefiles, io

MICROSCOPE = json.dumps({"voltage_kv": 200.0, "cs_mm": 1.0, "beam_divergence_mrad": 0.01, "defocus_spread_nm": 500.0})


@pytest.fixture
def bad_sheet(tmp_path):
    """A sheet whose one series names a file that does not exist."""
    sheet = tmp_path / "series.tsv"
    sheet.write_text("series\tfiles\tdefocus_nm\nghost\tghost.tif\t-1.6mm,0,1.6mm\n")
    return sheet


def test_a_failing_stage_run_alone_exits_1_and_writes_nothing(bad_sheet, tmp_path, caplog):
    out = tmp_path / "ingested.zarr"
    with pytest.raises(SystemExit) as stop:
        cli.main(
            ["ingest", "--sheet", str(bad_sheet), "--series", "ghost", "--microscope", MICROSCOPE, "--out", str(out)]
        )
    assert stop.value.code == 1
    assert not out.exists()
    assert "ghost.tif does not exist" in caplog.text


def test_the_workflow_flag_records_the_failure_and_the_next_stage_passes_it_on(bad_sheet, tmp_path):
    """--record-failure: the failed store is the output (exit 0); align given it passes it on with the
    flag, and alone exits 1 naming the first failure."""
    ingested, aligned = tmp_path / "ingested.zarr", tmp_path / "aligned.zarr"
    cli.main(["ingest", "--sheet", str(bad_sheet), "--series", "ghost", "--out", str(ingested), "--record-failure"])
    ds = io.open_store(ingested)
    assert io.is_failed(ds) and ds.attrs["failed_stage"] == "ingest"
    with pytest.raises(SystemExit) as stop:
        cli.main(["align", "--in", str(ingested), "--out", str(aligned)])
    assert stop.value.code == 1 and not aligned.exists()
    cli.main(["align", "--in", str(ingested), "--out", str(aligned), "--record-failure"])
    assert io.open_store(aligned).attrs["error"] == ds.attrs["error"]


@pytest.mark.parametrize(
    ("stage", "settings", "message"),
    [
        ("align", {"transform": "affine"}, "'align.transform' is 'affine'; allowed: 'translation', 'similarity'"),
        ("reconstruct", {"refine": ["focus"]}, "'reconstruction.refine.0' is 'focus'; allowed: 'defocus'"),
        ("reconstruct", {"tile_px": 8}, "'reconstruction.tile_px' is 8, outside the range >= 32"),
    ],
)
def test_a_stage_run_alone_checks_its_section_against_the_schema(stage, settings, message, tmp_path, caplog):
    """The section a stage command is given is checked as the workflow checks the config, before
    any input is read (the input here does not exist): exit 2, the key named."""
    args = [stage, "--in", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "out.zarr")]
    with pytest.raises(SystemExit) as stop:
        cli.main([*args, "--settings", json.dumps(settings)])
    assert stop.value.code == 2
    assert message in caplog.text
    assert not (tmp_path / "out.zarr").exists()


def test_export_writes_calibrated_tiffs_of_every_map(tmp_path, capsys):
    """Every (y, x) variable of every good series, float32, pixel size in nm in the ImageJ tags; a
    failed series is skipped."""
    release = tmp_path / "release"
    rng = np.random.default_rng(0)
    maps = {name: rng.standard_normal((12, 16)).astype(np.float32) for name in ("phase", "amplitude", "tie_phase")}
    good = xr.Dataset(
        {name: (("y", "x"), values) for name, values in maps.items()}
        | {"defocus_nm": (("image",), np.array([-1.0, 0.0, 1.0]))},
        coords={"y": np.arange(12) * 2.5, "x": np.arange(16) * 2.5},
        attrs={"series": "s1", "status": "ok", "pixel_size_nm": 2.5},
    )
    io.write_store(good, release / "series" / "s1.zarr")
    io.write_store(io.failed_dataset("s2", "series s2: broken", "ingest"), release / "series" / "s2.zarr")
    cli.main(["export", str(release), "--out", str(tmp_path / "tiff")])
    written = sorted(p.name for p in (tmp_path / "tiff").iterdir())
    assert written == ["s1_amplitude.tif", "s1_phase.tif", "s1_tie_phase.tif"]
    assert capsys.readouterr().out.count(".tif") == 3
    with tifffile.TiffFile(tmp_path / "tiff" / "s1_phase.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), maps["phase"])
        assert tif.imagej_metadata["unit"] == "nm"
        numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert denominator / numerator == pytest.approx(2.5)
    _, pixel, _ = imagefiles.read_tiff(tmp_path / "tiff" / "s1_phase.tif")
    assert pixel == pytest.approx((2.5, 2.5))


def test_export_of_a_folder_that_is_no_release_exits_2(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", str(tmp_path), "--out", str(tmp_path / "tiff")])
    assert stop.value.code == 2
