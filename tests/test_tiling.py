"""Tiled reconstruction: geometry, halo, blending, reconciliation, fidelity, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from doc_text import documented

from phasepipe import (
    cli,
    cluster,
    configuration,
    io,
    metrics,
    optimise,
    parameters,
    reconstruct,
    simulate,
    tilegrid,
    tiling,
)

FIVE = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)


def test_tiles_cover_the_field_once_and_windows_add_the_halo():
    """Cores tile the field exactly once (the last row and column shorter); windows are the cores
    widened by the halo and clipped to the field."""
    tiles = tilegrid.tile_grid((100, 130), 48, 8)
    covered = np.zeros((100, 130), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        covered[y0:y1, x0:x1] += 1
        assert t.window == (max(y0 - 8, 0), min(y1 + 8, 100), max(x0 - 8, 0), min(x1 + 8, 130))
    assert (covered == 1).all()
    assert len(tiles) == 3 * 3


def test_blend_weights_sum_to_one_and_vanish_in_the_outer_half_of_the_halo():
    shape, halo = (100, 130), 12
    tiles = tilegrid.tile_grid(shape, 40, halo)
    total = np.zeros(shape)
    for t in tiles:
        ys, xs = t.window_slices()
        weights = tilegrid.blend_weights(t, shape, halo)
        total[ys, xs] += weights
        assert weights.min() >= 0
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    middle = tiles[4]  # the centre tile: neighbours on every side
    weights = tilegrid.blend_weights(middle, shape, halo)
    assert weights[: halo // 2].max() == 0 and weights[:, -(halo // 2) :].max() == 0
    assert weights[halo + halo // 2 : -(halo + halo // 2), halo + halo // 2 : -(halo + halo // 2)].min() == 1


@pytest.mark.parametrize(
    ("beam_divergence_mrad", "defocus_nm", "expected"),
    [
        # Envelope-limited: R = lambda sqrt(ln 20) / (pi theta_c) = 138 nm = 27.6 px, whatever the defocus.
        (0.01, 1.6e6, 32),
        # A nearly coherent beam: Nyquist-limited, R = lambda |df| / (2 p) = 80.3 px.
        (0.0001, 1.6e6, 88),
        # In focus nothing spreads.
        (0.01, 0.0, 0),
    ],
)
def test_auto_halo_covers_the_fresnel_spread(beam_divergence_mrad, defocus_nm, expected):
    microscope = parameters.Microscope(beam_divergence_mrad=beam_divergence_mrad)
    assert tilegrid.auto_halo_px(microscope, defocus_nm, 5.0) == expected


def test_tile_smaller_than_twice_the_halo_is_refused_naming_the_key():
    with pytest.raises(tilegrid.TilingError, match="tile_px 64 is smaller than twice the halo"):
        tilegrid.tile_grid((256, 256), 64, 40)


@pytest.mark.parametrize(
    ("section", "lifetime_s", "stagger_s"),
    [
        ({}, 3240, 180),  # the defaults: walltime 1 h, workers retire at 51-57 min
        ({"walltime": "00:10:00"}, 540, 30),
        ({"walltime": "1-00:00:00"}, 85800, 300),  # the stagger is at most 5 min
        ({"walltime": "02:00:00", "lifetime": "01:30:00"}, 5400, 300),
    ],
)
def test_slurm_worker_lifetime_ends_before_the_walltime(section, lifetime_s, stagger_s):
    """Workers retire (lifetime +- stagger) at least a stagger before their job's walltime."""
    tiles = tiling.tiling_from_config({}, {"scheduler": "slurm", "slurm": section}, 1, None)
    assert (tiles.scheduler, tiles.slurm.lifetime, tiles.slurm.stagger_s) == ("slurm", lifetime_s, stagger_s)
    assert tiles.slurm.lifetime + tiles.slurm.stagger_s < tiles.slurm.walltime_s


@pytest.mark.parametrize(
    ("dask", "message"),
    [
        ({"scheduler": "mpi"}, r"'dask\.scheduler' is 'mpi', which does not have the form"),
        ({"scheduler": "slurm", "slurm": {"walltime": "1h"}}, r"'dask\.slurm\.walltime' is '1h', which does not"),
        ({"scheduler": "slurm", "slurm": {"cores": 0}}, r"'dask\.slurm\.cores' is 0, outside the range >= 1"),
        ({"scheduler": "slurm", "slurm": {"jobs": 0}}, r"'dask\.slurm\.jobs' is 0, outside the range >= 1"),
        ({"scheduler": "slurm", "slurm": {"queue": "short"}}, r"unknown key 'dask\.slurm\.queue'"),
    ],
)
def test_bad_dask_settings_are_refused_by_the_schema_naming_the_key(dask, message):
    """A stage command given its section alone checks it against the workflow's schema."""
    with pytest.raises(configuration.ConfigError, match=message):
        tiling.tiling_from_config({}, dask, 1, None)


def test_a_lifetime_past_the_walltime_is_refused():
    """What the schema cannot judge, the cluster settings do: workers must retire in time."""
    dask = {"scheduler": "slurm", "slurm": {"lifetime": "00:58:00"}}
    with pytest.raises(cluster.ClusterError, match=r"dask\.slurm\.lifetime of 3480 s \(\+- 180 s"):
        tiling.tiling_from_config({}, dask, 1, None)


def test_reconcile_recovers_each_tiles_constant_and_gradient():
    """Tiles of a smooth field, each off by its own constant and gradient, stitch back to the field
    up to one plane common to all (which no overlap can see)."""
    rng = np.random.default_rng(0)
    shape, halo = (160, 160), 16
    y, x = np.mgrid[: shape[0], : shape[1]]
    field = np.sin(2 * np.pi * x / 57) + np.cos(2 * np.pi * y / 41) + 1e-4 * (x - 80) ** 2
    tiles = tilegrid.tile_grid(shape, 48, halo)
    maps = [field[t.window_slices()] - tilegrid.correction(t, shape, rng.normal(size=3) * [2, 4, 4]) for t in tiles]
    pairs = []
    for i, j in tilegrid.neighbours(tiles):
        moments = tilegrid.overlap_moments(tiles[i], tiles[j], maps[i], maps[j], shape, halo, 3)
        if moments is not None:
            pairs.append((i, j, *moments))
    theta = tilegrid.reconcile(len(tiles), 3, pairs)
    assert np.allclose(theta.sum(axis=0), 0)  # minimum norm: the field keeps the tiles' mean
    stitched = np.zeros(shape)
    for t, m, th in zip(tiles, maps, theta, strict=True):
        stitched[t.window_slices()] += tilegrid.blend_weights(t, shape, halo) * (m + tilegrid.correction(t, shape, th))
    residual = (stitched - field).ravel()
    basis = np.stack([np.ones(residual.size), y.ravel(), x.ravel()], axis=1)
    plane = basis @ np.linalg.lstsq(basis, residual, rcond=None)[0]
    assert np.abs(residual - plane).max() < 1e-9


def test_parameters_of_the_tiles_combine_into_mean_and_standard_error():
    summaries = [
        {
            "defocus_nm": [-1.6e6 + d, 0.0, 1.6e6 - d],
            "defocus_std_nm": [1.0, 0.0, 1.0],
            "shifts_px": [[0.0, d / 100]] * 3,
            "shifts_std_px": [[0.01, 0.01]] * 3,
            "beam_divergence_mrad": 0.01,
            "beam_divergence_std_mrad": 0.001,
            "defocus_spread_nm": 500.0 + d,
            "defocus_spread_std_nm": 20.0,
            "loss": 1.0,
            "noise": 0.05,
            "tv_weight": 1e-3,
            "iterations": 100 + int(d),
            "seconds": 2.0,
        }
        for d in (-100.0, 0.0, 100.0, 200.0)
    ]
    combined = tiling.combine_parameters(summaries)
    np.testing.assert_allclose(combined["defocus_nm"], [-1.6e6 + 50, 0.0, 1.6e6 - 50])
    sem = np.std([-100.0, 0.0, 100.0, 200.0], ddof=1) / 2
    np.testing.assert_allclose(combined["defocus_std_nm"], [sem, 0.0, sem])
    assert combined["defocus_spread_std_nm"] == pytest.approx(sem)
    np.testing.assert_allclose(combined["shifts_std_px"], [[0.0, sem / 100]] * 3)
    assert combined["iterations"] == 300 and combined["seconds"] == 8.0
    alone = tiling.combine_parameters(summaries[:1])  # one tile: its own curvature-based std
    assert alone["defocus_spread_std_nm"] == 20.0 and alone["beam_divergence_std_mrad"] == 0.001


def run_cli(store: Path, out: Path, records: Path, settings: dict, *, wait: bool = True):
    """``phasepipe reconstruct`` on the threads scheduler with one thread: tiles one after another."""
    command = [
        sys.executable,
        "-m",
        "phasepipe",
        "reconstruct",
        "--in",
        str(store),
        "--out",
        str(out),
        "--records",
        str(records),
        "--settings",
        json.dumps(settings),
        "--dask",
        json.dumps({"scheduler": "threads"}),
        "--threads",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def test_a_field_of_one_tile_is_the_whole_field_fit(tmp_path, aligned_store):
    """No larger than one tile: the same numbers as the whole-field path, no stitching."""
    spec = simulate.SeriesSpec("one", "vortex", size_px=48, defocus_nominal_nm=FIVE, drift_px=0.0, n_particles=2)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    settings = {"iterations": 20, "tile_px": 64, "halo_px": "auto", "refine": ["defocus"]}
    run_cli(store, tmp_path / "out.zarr", tmp_path / "records", settings)
    whole = reconstruct.reconstruct_dataset(io.open_store(store).load(), reconstruct.settings_from_config(settings))
    tiled = io.open_store(tmp_path / "out.zarr").load()
    for name in ("phase", "amplitude", "tie_phase", "defocus_nm"):
        np.testing.assert_array_equal(tiled[name].values, whole[name].values)
    assert not (tmp_path / "records").exists()


def seam_steps(tiled: np.ndarray, untiled: np.ndarray, tile_px: int, offset: int = 0) -> np.ndarray:
    """How much the tiled map's pixel-to-pixel steps across the lines ``offset`` px after each seam
    differ from the untiled map's there (``offset`` half a tile: lines inside the tiles)."""
    dt = [np.diff(tiled, axis=a) for a in (0, 1)]
    du = [np.diff(untiled, axis=a) for a in (0, 1)]
    lines = range(tile_px + offset, tiled.shape[0], tile_px)
    steps = [np.abs(dt[0][b - 1] - du[0][b - 1]) for b in lines]
    steps += [np.abs(dt[1][:, b - 1] - du[1][:, b - 1]) for b in lines]
    return np.concatenate(steps)


@pytest.mark.integration
def test_tiled_reconstruction_matches_the_untiled_one(tmp_path, aligned_store):
    """A skyrmion lattice of 192 x 192 px at -1.6 ... +1.6 mm in 96 px tiles (auto halo, 32 px):
    acc against the untiled fit of the same settings, and no seam steeper than the field's own
    steps."""
    spec = simulate.SeriesSpec("fid", "skyrmions", size_px=192, defocus_nominal_nm=FIVE, drift_px=0.0, seed=1)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    section = {"iterations": 150, "refine": ["defocus"]}
    settings = reconstruct.settings_from_config(section)
    untiled = reconstruct.reconstruct_dataset(io.open_store(store).load(), settings)
    tiled = tiling.reconstruct_tiled(
        store, tmp_path / "out.zarr", tmp_path / "records", settings, tiling.TilingSettings(96, None, "threads", 1)
    ).load()
    assert tiled.attrs["tiles"] == 4 and tiled.attrs["halo_px"] == 32
    assert metrics.phase_accuracy(tiled["phase"].values, untiled["phase"].values) >= 0.99
    # No seam: steps across the seams depart from the untiled map's no more than inside the tiles.
    across = seam_steps(tiled["phase"].values, untiled["phase"].values, 96)
    inside = seam_steps(tiled["phase"].values, untiled["phase"].values, 96, offset=-48)
    assert across.max() <= 1.5 * inside.max() and across.mean() <= 1.5 * inside.mean()
    assert np.all(tiled["defocus_std_nm"].values[[0, 4]] > 0)
    for name in ("rotation_deg", "scale", "registration_confidence", "defocus_nominal_nm"):
        np.testing.assert_array_equal(tiled[name].values, untiled[name].values)
    # What a tiled store holds beyond an untiled one is what docs/outputs.md marks "tiled fields only".
    extra = {
        "Variables": set(tiled.data_vars) - set(untiled.data_vars),
        "Coordinates": set(tiled.coords) - set(untiled.coords),
        "Attributes": set(tiled.attrs) - set(untiled.attrs),
    }
    for title, names in extra.items():
        assert documented(title)[1] == names, title


def test_one_entry_point_fits_a_field_within_a_tile_whole_and_a_larger_one_tiled(tmp_path, aligned_store):
    spec = simulate.SeriesSpec("one", "skyrmions", size_px=96, defocus_nominal_nm=FIVE, drift_px=0.0, seed=2)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    settings = optimise.Settings(refine=("defocus",), max_iterations=20, converge=False)
    results = {}
    for tile_px in (96, 48):
        tiles = tiling.tiling_from_config({"tile_px": tile_px, "halo_px": 16}, {"scheduler": "threads"}, 1, None)
        out = tmp_path / f"{tile_px}.zarr"
        results[tile_px] = tiling.reconstruct_store(store, out, tmp_path / f"records-{tile_px}", settings, tiles)
        assert io.open_store(out)["phase"].shape == (96, 96)
    whole = reconstruct.reconstruct_dataset(io.open_store(store).load(), settings)
    np.testing.assert_array_equal(results[96]["phase"].values, whole["phase"].values)
    assert "tiles" not in results[96].attrs
    assert results[48].attrs["tiles"] == 4


def test_a_diverged_tile_fails_its_series_naming_the_tile(tmp_path, aligned_store, monkeypatch):
    """A tiled fit that diverges (an amplitude learning rate far too large) fails the series as
    bad input does: a failed store whose error names where (here the binned overview, which is
    fitted first; otherwise the tile)."""
    spec = simulate.SeriesSpec("s8", "skyrmions", size_px=96, defocus_nominal_nm=FIVE, drift_px=0.0, seed=2)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    monkeypatch.setitem(parameters.OBJECT_OPTIONS, "log_amplitude", parameters.ParameterOptions(lr=1e3))
    settings = {"iterations": 20, "tile_px": 48, "halo_px": 16}
    out = tmp_path / "out.zarr"
    cli.main(
        ["reconstruct", "--in", str(store), "--out", str(out), "--settings", json.dumps(settings)]
        + ["--dask", json.dumps({"scheduler": "threads"}), "--records", str(tmp_path / "records"), "--record-failure"]
    )
    ds = io.open_store(out)
    assert io.is_failed(ds) and ds.attrs["failed_stage"] == "reconstruct"
    where = r"(tile r\d{3}c\d{3}|the overview)"
    assert re.match(rf"series s8: {where}: the fit diverged: misfit nan at iteration ", ds.attrs["error"])


@pytest.mark.integration
def test_a_killed_run_resumes_from_its_finished_tiles(tmp_path, aligned_store):
    """SIGKILL once the first tiles are recorded; the re-run takes those from their records,
    computes the rest, and writes exactly the maps of an uninterrupted run."""
    spec = simulate.SeriesSpec("kill", "skyrmions", size_px=96, defocus_nominal_nm=FIVE, drift_px=0.0, seed=2)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    settings = {"iterations": 30, "tile_px": 48, "halo_px": 16, "refine": ["defocus"]}
    records = tmp_path / "records"

    process = run_cli(store, tmp_path / "killed.zarr", records, settings, wait=False)
    finished: set[str] = set()
    deadline = time.monotonic() + 300
    while not finished and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        finished = {p.parent.name for p in records.glob("*/*/result.json")}
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.parent.name for p in records.glob("*/*/result.json")}  # what the kill left
    assert finished and len(finished) < 5, "the kill must come after some tiles and before the last"

    resumed_log = run_cli(store, tmp_path / "killed.zarr", records, settings)
    reused = set(re.findall(r"tile (\w+) from its record", resumed_log))
    computed = set(re.findall(r"tile (\w+) computed", resumed_log))
    assert reused == finished
    assert computed | reused == {"overview", "r000c000", "r000c001", "r001c000", "r001c001"}
    assert not computed & reused

    run_cli(store, tmp_path / "whole.zarr", tmp_path / "records-2", settings)
    resumed, whole = (io.open_store(tmp_path / name).load() for name in ("killed.zarr", "whole.zarr"))
    for name in ("phase", "amplitude", "tie_phase", "defocus_nm", "defocus_std_nm", "tile_defocus_nm"):
        np.testing.assert_array_equal(resumed[name].values, whole[name].values)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_tile_task_reuses_freed_memory_under_dasks_worker_setting():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, under which every large
    allocation is a fresh mmap whose pages fault in when touched (a fit's FFT outputs: twice the
    time per iteration); after reuse_freed_memory, what the tile task calls, freed memory is served
    again: allocating and filling 8 MB twenty times faults a few pages instead of every one."""
    code = """
import resource, torch
from phasepipe import tiling

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(2**21).fill_(1.0)  # 8 MB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

faults()
before = faults()
tiling.reuse_freed_memory()
faults()
print(before, faults())
"""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    pages = 20 * 2**23 // 4096  # the pages of twenty fresh 8 MB buffers
    assert before > 0.9 * pages
    assert after < 0.05 * pages
