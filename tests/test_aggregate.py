"""Campaign aggregation: defocus calibration fits, outliers, and the tables, summary and figures written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from phasepipe import aggregate, figures, io

NOMINAL = np.array([-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6])
N_PX = 32
# series -> (session, true/nominal defocus scale); s6 is far off the others of its session: the outlier.
SERIES = {
    "s1": ("day1", 1.038),
    "s2": ("day1", 1.040),
    "s3": ("day1", 1.042),
    "s4": ("day2", 1.019),
    "s5": ("day2", 1.021),
    "s6": ("day2", 1.5),
}
FAILED_ERROR = "series s0_bad (s0_bad.tif): 2 images but 5 defocus values"


# ---------------------------------------------------------------------------------------------
# calibration_fit, robust_outliers
# ---------------------------------------------------------------------------------------------


def test_calibration_fit_recovers_scale_and_offset():
    """recovered = 1.04 nominal + 300 nm + 200 nm noise: fit within 0.1 % / 150 nm, truth inside the 95 % CIs."""
    rng = np.random.default_rng(0)
    nominal = np.linspace(-2e6, 2e6, 21)
    recovered = 1.04 * nominal + 300.0 + rng.normal(0, 200.0, nominal.size)
    fit = aggregate.calibration_fit(nominal, recovered)
    assert fit["n_images"] == 21
    assert fit["scale"] == pytest.approx(1.04, abs=1e-3)
    assert fit["offset_nm"] == pytest.approx(300.0, abs=150.0)
    low, high = fit["scale_ci"]
    assert low < 1.04 < high
    assert high - low < 2e-4  # narrow: 21 points over 4 mm of defocus
    assert fit["scale_std"] == pytest.approx((high - low) / (2 * 2.093), rel=1e-3)  # t(0.975, 19) = 2.093
    low, high = fit["offset_nm_ci"]
    assert low < 300.0 < high
    assert high - low < 500.0


def test_calibration_fit_exact_line_with_two_points():
    """Two points determine the line exactly; no confidence interval can be given."""
    fit = aggregate.calibration_fit([-1e6, 1e6], [-0.96e6, 0.96e6])
    assert fit["scale"] == pytest.approx(0.96)
    assert fit["offset_nm"] == pytest.approx(0.0, abs=1e-6)
    assert fit["scale_ci"] is None
    assert fit["scale_std"] is None
    assert fit["offset_nm_ci"] is None


@pytest.mark.parametrize(
    ("nominal", "recovered"),
    [([1.6e6], [1.66e6]), ([], []), ([8e5, 8e5, 8e5], [8.1e5, 8.3e5, 8.2e5])],
    ids=["one-point", "empty", "constant-nominal"],
)
def test_calibration_fit_degenerate(nominal, recovered):
    """Without two distinct nominal defocus values there is no fit: every value is None."""
    fit = aggregate.calibration_fit(nominal, recovered)
    assert fit == {
        "n_images": len(nominal),
        "scale": None,
        "scale_std": None,
        "offset_nm": None,
        "scale_ci": None,
        "offset_nm_ci": None,
    }


def test_robust_outliers_flags_the_clear_outlier():
    """Among 1.00 +- 0.02 and one 1.30, only 1.30 is flagged (index kept)."""
    values = pd.Series([1.00, 1.01, 0.99, 1.30, 1.02, 0.98], index=list("abcdef"))
    flags = aggregate.robust_outliers(values)
    assert flags.index.tolist() == list("abcdef")
    assert flags.tolist() == [False, False, False, True, False, False]


def test_robust_outliers_threshold():
    """The threshold is on the robust z-score: 1.08 (z = 3.37) passes at 3.5 and is flagged at 3."""
    values = pd.Series([1.00, 1.01, 0.99, 1.08, 1.02, 0.98])
    assert not aggregate.robust_outliers(values).any()
    assert aggregate.robust_outliers(values, threshold=3.0).tolist() == [False, False, False, True, False, False]


def test_robust_outliers_none_among_equal_values():
    """Equal values (zero spread) have no outlier."""
    flags = aggregate.robust_outliers(pd.Series([1.04] * 6))
    assert flags.tolist() == [False] * 6


# ---------------------------------------------------------------------------------------------
# aggregate
# ---------------------------------------------------------------------------------------------


def _reconstructed(series: str, session: str, scale: float, seed: int) -> xr.Dataset:
    """A reconstructed-like store: fitted defocus = scale x nominal (+ 100 nm noise), smooth phase maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N_PX, :N_PX]
    phase = np.sin(2 * np.pi * (xx + seed) / N_PX) * np.cos(2 * np.pi * yy / N_PX)
    defocus = scale * NOMINAL + np.where(NOMINAL != 0, rng.normal(0, 100.0, NOMINAL.size), 0.0)
    return xr.Dataset(
        {
            "phase": (("y", "x"), phase),
            "amplitude": (("y", "x"), np.full((N_PX, N_PX), 0.9)),
            "tie_phase": (("y", "x"), 0.9 * phase + 0.01 * rng.standard_normal((N_PX, N_PX))),
            "defocus_nominal_nm": (("image",), NOMINAL),
            "defocus_nm": (("image",), defocus),
            "defocus_std_nm": (("image",), np.full(NOMINAL.size, 50.0)),
            "shift_y_px": (("image",), np.array([1.0, 0.5, 0.0, -0.5, -1.0])),
            "shift_x_px": (("image",), np.array([0.0, 0.25, 0.0, 0.25, 0.0])),
            "shift_y_std_px": (("image",), np.full(NOMINAL.size, 0.01)),
            "shift_x_std_px": (("image",), np.full(NOMINAL.size, 0.02)),
            "rotation_deg": (("image",), np.array([-0.2, -0.1, 0.0, 0.1, 0.2])),
            "scale": (("image",), np.array([0.996, 0.998, 1.0, 1.002, 1.004])),
            "registration_confidence": (("image",), np.array([0.9, 0.95, 1.0, 0.95, 0.9])),
        },
        coords={"image": np.arange(NOMINAL.size), "y": np.arange(N_PX) * 5.0, "x": np.arange(N_PX) * 5.0},
        attrs={
            "series": series,
            "status": "ok",
            "session": session,
            "acquired": f"2026-03-0{seed}T10:00:00",
            "pixel_size_nm": 5.0,
            "beam_divergence_mrad": 0.01 + 0.001 * seed,
            "defocus_spread_nm": 500.0 + 10 * seed,
            "beam_divergence_std_mrad": 0.0005,
            "defocus_spread_std_nm": 20.0,
            "final_loss": 1e-3 * seed,
            "noise": 0.05,
            "iterations": 100 + seed,
            "seconds": 1.5,
        },
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[list[Path], dict[str, xr.Dataset]]:
    """Six reconstructed stores in two sessions (s6 the outlier of day2) and one failed store."""
    work = tmp_path_factory.mktemp("work")
    datasets = {
        name: _reconstructed(name, session, scale, seed)
        for seed, (name, (session, scale)) in enumerate(SERIES.items(), start=1)
    }
    paths = []
    for name, ds in datasets.items():
        io.write_store(ds, work / f"{name}.zarr")
        paths.append(work / f"{name}.zarr")
    io.write_store(io.failed_dataset("s0_bad", FAILED_ERROR, "ingest"), work / "s0_bad.zarr")
    paths.append(work / "s0_bad.zarr")
    return paths[::-1], datasets  # aggregate does not depend on the order it is given


@pytest.fixture(scope="module")
def aggregated(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aggregate")
    aggregate.aggregate(stores[0], out, campaign="test", settings={})
    return out


def test_parameters_csv(aggregated, stores):
    """One row per (series, image) of the series done, none for the failed series, values as stored."""
    _, datasets = stores
    params = pd.read_csv(aggregated / "parameters.csv")
    assert len(params) == 6 * 5
    assert params["series"].tolist() == [s for s in sorted(SERIES) for _ in range(5)]
    for column in (
        "image",
        "defocus_nominal_nm",
        "defocus_nm",
        "defocus_std_nm",
        "shift_y_px",
        "shift_x_px",
        "shift_y_std_px",
        "shift_x_std_px",
        "rotation_deg",
        "scale",
        "beam_divergence_mrad",
        "beam_divergence_std_mrad",
        "defocus_spread_nm",
        "defocus_spread_std_nm",
    ):
        assert column in params.columns
    s2 = params[params["series"] == "s2"]
    assert s2["image"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(s2["defocus_nominal_nm"], NOMINAL)
    np.testing.assert_allclose(s2["defocus_nm"], datasets["s2"]["defocus_nm"].values, rtol=1e-5)
    np.testing.assert_allclose(s2["shift_y_px"], [1.0, 0.5, 0.0, -0.5, -1.0])
    np.testing.assert_allclose(s2["beam_divergence_mrad"], 0.012)
    np.testing.assert_allclose(s2["defocus_spread_nm"], 520.0)
    np.testing.assert_allclose(s2["shift_x_std_px"], 0.02)
    np.testing.assert_allclose(s2["defocus_spread_std_nm"], 20.0)


def test_series_summary_csv(aggregated):
    """One row per series: the failed one with status failed and its error, the others with their fitted scale."""
    summary = pd.read_csv(aggregated / "series_summary.csv", keep_default_na=False).set_index("series")
    assert sorted(summary.index) == sorted([*SERIES, "s0_bad"])
    assert summary.loc["s0_bad", "status"] == "failed"
    assert summary.loc["s0_bad", "error"] == FAILED_ERROR
    assert str(summary.loc["s0_bad", "outlier"]) == "False"
    for name, (session, scale) in SERIES.items():
        row = summary.loc[name]
        assert row["status"] == "ok"
        assert row["session"] == session
        assert float(row["defocus_scale"]) == pytest.approx(scale, abs=2e-4)
        assert int(row["n_images"]) == 5
        assert str(row["outlier"]) == str(name == "s6")
        assert row["quality"] == ("warning" if name == "s6" else "ok")
    assert "outlier of session day2" in summary.loc["s6", "quality_reasons"]
    assert summary.loc["s0_bad", "quality"] == "failed"
    # drift: rms of |(dy, dx)| over the images = sqrt((1 + 0.3125 + 0 + 0.3125 + 1) / 5)
    assert float(summary.loc["s1", "drift_rms_px"]) == pytest.approx(np.sqrt(2.625 / 5), rel=1e-5)
    assert float(summary.loc["s1", "acc_ad_vs_tie"]) > 0.99


def test_campaign_summary_json(aggregated):
    """Counts, the failed series, the calibration built into each session, and s6 flagged as the outlier."""
    result = json.loads((aggregated / "campaign_summary.json").read_text())
    assert result["counts"] == {"series": 7, "done": 6, "failed": 1}
    assert result["failed"] == [{"series": "s0_bad", "error": FAILED_ERROR}]
    assert result["outliers"]["series"] == ["s6"]
    assert sorted(result["sessions"]) == ["day1", "day2"]
    assert result["sessions"]["day2"]["n_series"] == 3
    for session, scale, n_series in (("day1", 1.04, 3),):
        block = result["sessions"][session]
        assert block["n_series"] == n_series
        fit = block["defocus_calibration"]
        assert fit["n_images"] == 4 * n_series  # in-focus images carry no calibration
        assert fit["scale"] == pytest.approx(scale, abs=2e-3)
        assert fit["scale_ci"][0] < fit["scale_ci"][1]
        if n_series > 1:
            assert fit["scale_ci"][0] < scale < fit["scale_ci"][1]
    day1 = result["sessions"]["day1"]
    assert day1["beam_divergence_mrad"]["min"] == pytest.approx(0.011)
    assert day1["beam_divergence_mrad"]["max"] == pytest.approx(0.013)
    assert result["campaign"]["name"] == "test"
    assert result["campaign"]["n_series"] == 6
    assert result["campaign"]["defocus_calibration"]["n_images"] == 24


def test_figures_written(aggregated):
    """A phase figure per series done (none for the failed one), the calibration plot and the parameter trends."""
    names = sorted(p.name for p in (aggregated / "figures").iterdir())
    expected = sorted([f"{s}.png" for s in SERIES] + ["defocus_calibration.png", "parameter_trends.png"])
    assert names == expected
    for name in names:
        data = (aggregated / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 5000


def test_aggregate_is_reproducible(aggregated, stores, tmp_path, monkeypatch):
    """A second run over the same stores gives byte-identical parameters.csv, series_summary.csv and summary JSON."""
    paths, _ = stores
    for name in ("series_figure", "calibration_figure", "trends_figure"):  # figures are checked above; skip (speed)
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)
    aggregate.aggregate(paths[::-1], tmp_path, campaign="test", settings={})
    for name in ("parameters.csv", "series_summary.csv", "campaign_summary.json"):
        assert (tmp_path / name).read_bytes() == (aggregated / name).read_bytes(), name


def test_calibration_fit_states_no_less_than_the_images_std():
    """Two series whose factors agree to 1e-5 but each within 0.2 %: the session's std is the
    images' stated 0.2 % (their shared bias does not average down), not the line's 1e-5 scatter;
    an unknown image std leaves it unknown."""
    nominal = np.array([-1.6e6, -0.8e6, 0.8e6, 1.6e6] * 2)
    recovered = nominal * np.repeat([1.03934, 1.03935], 4)
    std = 0.002 * np.abs(recovered)
    bare = aggregate.calibration_fit(nominal, recovered)
    fit = aggregate.calibration_fit(nominal, recovered, std)
    assert bare["scale_std"] < 1e-5
    assert fit["scale_std"] == pytest.approx(0.002 * 1.0393, rel=1e-3)
    low, high = fit["scale_ci"]
    assert low < 1.04 < high  # the truth the line alone would exclude
    assert not bare["scale_ci"][0] < 1.04 < bare["scale_ci"][1]
    unknown = aggregate.calibration_fit(nominal, recovered, np.where(np.arange(8) == 0, np.nan, std))
    assert unknown["scale_std"] is None and unknown["scale_ci"] is None
    pair = aggregate.calibration_fit(nominal[[0, 3]], recovered[[0, 3]], std[[0, 3]])
    assert pair["scale_std"] == pytest.approx(0.002 * 1.0393, rel=1e-3) and pair["scale_ci"] is not None
