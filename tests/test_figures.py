"""Figures: each writes a sizeable, non-blank PNG, and the induction colour map is oriented right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from phasepipe import figures, physics

N = 64  # small images keep the whole module well under a second per figure
PIXEL_NM = 5.0


def _cone(n: int = N, radius_px: float | None = None) -> np.ndarray:
    """Vortex phase -0.05 |r| centred on a pixel; constant beyond ``radius_px`` if given."""
    y, x = np.mgrid[:n, :n] - n // 2
    r = np.hypot(x, y)
    if radius_px is not None:
        r = np.minimum(r, radius_px)
    return -0.05 * r


def _read_png(path: Path) -> np.ndarray:
    img = mimage.imread(path)
    return img[..., :3]  # drop alpha: the figures are opaque


def _check_png(path: Path, min_kb: float = 10.0, min_colours: int = 50) -> np.ndarray:
    """A written PNG that is big and varied enough to hold a real figure, not a blank canvas."""
    assert path.is_file()
    assert path.stat().st_size > min_kb * 1024
    rgb = _read_png(path)
    assert rgb.std() > 0.05
    # Pack each 8-bit RGB triple into one integer: a 1-d unique is ~20x faster than axis=0.
    q = np.round(rgb * 255).astype(np.int32)
    distinct = np.unique((q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2])
    assert distinct.size > min_colours
    return rgb


def _hsv(rgb: np.ndarray) -> np.ndarray:
    return mcolors.rgb_to_hsv(np.clip(rgb, 0, 1))


# --------------------------------------------------------------------------------------------
# Colour maps
# --------------------------------------------------------------------------------------------


def test_induction_rgb_shape_and_range() -> None:
    rgb = figures.induction_rgb(_cone(), PIXEL_NM)
    assert rgb.shape == (N, N, 3)
    assert rgb.dtype == float
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_induction_rgb_vortex_hues_wrap_the_full_circle() -> None:
    hsv = _hsv(figures.induction_rgb(_cone(), PIXEL_NM))
    bright = hsv[..., 2] > 0.5
    counts, _ = np.histogram(hsv[..., 0][bright], bins=6, range=(0, 1))
    # A vortex's induction circulates: every sextant of the wheel has a fair share of pixels.
    assert np.all(counts > 0.1 * bright.sum() / 6), counts
    assert np.allclose(hsv[..., 1][bright], 1.0)


def test_induction_rgb_dark_at_singularity_and_where_phase_is_constant() -> None:
    radius = 20
    hsv = _hsv(figures.induction_rgb(_cone(radius_px=radius), PIXEL_NM))
    value = hsv[..., 2]
    c = N // 2
    # Central differences across the apex of a symmetric cone cancel: zero induction there.
    assert value[c, c] < 0.05
    y, x = np.mgrid[:N, :N] - c
    outside = np.hypot(x, y) > radius + 2
    assert np.all(value[outside] < 1e-6)
    # The cone flank has uniform |grad phi|, so it sits at the robust maximum brightness.
    flank = (np.hypot(x, y) > 4) & (np.hypot(x, y) < radius - 2)
    assert np.median(value[flank]) > 0.95


def test_induction_rgb_constant_phase_is_black() -> None:
    rgb = figures.induction_rgb(np.full((16, 16), 1.3), PIXEL_NM)
    assert np.all(rgb == 0.0)


def test_induction_rgb_hue_follows_induction_direction() -> None:
    """A phase ramp along y gives B along +x (red); along -x gives B along +y (hue 1/4)."""
    y, x = np.mgrid[:N, :N].astype(float)
    hue_bx = _hsv(figures.induction_rgb(0.02 * y, PIXEL_NM))[..., 0]
    hue_by = _hsv(figures.induction_rgb(-0.02 * x, PIXEL_NM))[..., 0]
    bx, by = physics.induction_from_phase(0.02 * y, PIXEL_NM)
    assert bx.mean() > 0 and np.allclose(by, 0)  # the premise, from the one physics convention
    assert np.allclose(np.minimum(hue_bx, 1 - hue_bx), 0.0, atol=1e-6)
    assert np.allclose(hue_by, 0.25, atol=1e-6)


def test_colour_wheel_hue_varies_with_angle_and_outside_is_white() -> None:
    n = 101
    wheel = figures.colour_wheel(n)
    assert wheel.shape == (n, n, 3)
    assert wheel.min() >= 0.0 and wheel.max() <= 1.0
    hsv = _hsv(wheel)
    c = n // 2
    r = 40  # well inside the rim, bright enough for a well-defined hue
    # Same orientation as the maps: +x (right) red, +y (down, row index) hue 1/4, and so on.
    for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        row = c + round(r * np.sin(angle))
        col = c + round(r * np.cos(angle))
        expected = angle / (2 * np.pi)
        diff = abs(hsv[row, col, 0] - expected)
        assert min(diff, 1 - diff) < 0.03, (angle, hsv[row, col, 0])
    assert hsv[c, c, 2] < 0.05  # zero magnitude at the centre
    assert np.all(wheel[0, 0] == 1.0) and np.all(wheel[-1, -1] == 1.0)


def test_colour_wheel_matches_induction_map() -> None:
    """The legend reads the map correctly: B along +x is the wheel's right-hand rim colour."""
    n = 101
    wheel = figures.colour_wheel(n)
    y, _ = np.mgrid[:N, :N].astype(float)
    along_x = figures.induction_rgb(0.02 * y, PIXEL_NM)[N // 2, N // 2]
    rim_right = wheel[n // 2, n - 3]
    assert np.allclose(along_x, rim_right, atol=0.08)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def test_series_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    phase = _cone(radius_px=24)
    tie = 0.9 * phase + 0.05 * rng.standard_normal(phase.shape)
    out = figures.series_figure(phase, tie, PIXEL_NM, "vortex", tmp_path / "series.png")
    assert out == tmp_path / "series.png"
    rgb = _check_png(out, min_colours=500)
    h, w = rgb.shape[:2]
    assert w > 2 * h  # three panels side by side
    assert 1000 < w < 3000


def test_separated_series_figure_draws_the_stored_induction(tmp_path: Path) -> None:
    """A separated series' figure draws the induction its store holds, not the total phase's: a
    uniform B along +x (hue 0, red) fills the induction panel, where the cone's own induction
    turns through every hue; and the electrostatic phase adds a fourth panel."""
    phase = _cone(radius_px=24)
    bx, by = np.ones_like(phase), np.zeros_like(phase)

    def red_fraction(path: Path) -> float:
        hsv = _hsv(_check_png(path))
        hue = np.minimum(hsv[..., 0], 1 - hsv[..., 0])
        return float(np.mean((hue < 0.02) & (hsv[..., 1] > 0.9) & (hsv[..., 2] > 0.9)))

    total = figures.series_figure(phase, phase, PIXEL_NM, "total", tmp_path / "total.png")
    separated = figures.series_figure(
        phase, phase, PIXEL_NM, "separated", tmp_path / "sep.png", phase_electrostatic=phase, induction=(bx, by)
    )
    assert red_fraction(separated) > 0.1 > 3 * red_fraction(total)
    assert _read_png(separated).shape[1] > 1.2 * _read_png(total).shape[1]


def test_series_figure_non_square_and_creates_parent(tmp_path: Path) -> None:
    y, x = np.mgrid[:32, :96]
    phase = np.sin(2 * np.pi * x / 32) * np.exp(-((y - 16) ** 2) / 100)
    out = figures.series_figure(phase, phase, 2.0, "stripes", tmp_path / "sub" / "s.png")
    _check_png(out)


def _calibration_data() -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(1)
    rows, fits = [], {}
    for session, scale, offset in (("2026-03-02", 1.04, 1500.0), ("2026-03-09", 0.965, -800.0)):
        for k in range(2):
            for nominal in (-1.6e6, 0.0, 1.6e6):
                rows.append(
                    {
                        "series": f"{session}_{k}",
                        "session": session,
                        "defocus_nominal_nm": nominal,
                        "defocus_nm": scale * nominal + offset + rng.normal(0, 2000),
                        "defocus_std_nm": 3000.0,
                    }
                )
        fits[session] = {"scale": scale, "offset_nm": offset, "scale_ci": [scale - 0.002, scale + 0.002]}
    return pd.DataFrame(rows), fits


def test_calibration_figure(tmp_path: Path) -> None:
    table, fits = _calibration_data()
    out = figures.calibration_figure(table, fits, tmp_path / "cal.png")
    rgb = _check_png(out)
    h, w = rgb.shape[:2]
    assert 600 < h < 1500 and 600 < w < 1500


def test_calibration_figure_session_without_fit_or_std(tmp_path: Path) -> None:
    table, fits = _calibration_data()
    table = table.drop(columns="defocus_std_nm")
    fits.pop("2026-03-09")
    _check_png(figures.calibration_figure(table, fits, tmp_path / "cal.png"))


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series": ["s001", "s002", "s003", "s004"],
            "session": ["2026-03-02", "2026-03-02", "2026-03-09", "2026-03-09"],
            "acquired": ["2026-03-02T10:15:00", "2026-03-02T14:40:00", "2026-03-09T09:05:00", "2026-03-09T11:30:00"],
            "defocus_scale": [1.041, 1.039, 0.964, 0.966],
            "beam_divergence_mrad": [0.011, 0.012, 0.0095, 0.010],
            "drift_rms_px": [0.8, 1.3, 0.5, 2.1],
        }
    )


COLUMNS = ["defocus_scale", "beam_divergence_mrad", "drift_rms_px"]


def test_trends_figure_with_times(tmp_path: Path) -> None:
    rgb = _check_png(figures.trends_figure(_summary(), COLUMNS, tmp_path / "t.png"))
    one = _read_png(figures.trends_figure(_summary(), COLUMNS[:1], tmp_path / "one.png"))
    h, w = rgb.shape[:2]
    assert 600 < w < 1500
    assert h > 2 * one.shape[0] - 200  # panels stack vertically, each with its own height
    assert one.shape[1] == w


def test_trends_figure_skips_absent_and_empty_columns(tmp_path: Path) -> None:
    summary = _summary().assign(empty=np.nan)
    full = _read_png(figures.trends_figure(summary, COLUMNS, tmp_path / "a.png"))
    fewer = _read_png(figures.trends_figure(summary, [*COLUMNS, "empty", "absent"], tmp_path / "b.png"))
    assert full.shape == fewer.shape  # the two extra columns added no panel


@pytest.mark.parametrize("acquired", [np.nan, ""])
def test_trends_figure_without_times_uses_series_order(tmp_path: Path, acquired: object) -> None:
    summary = _summary().assign(acquired=acquired)
    _check_png(figures.trends_figure(summary, COLUMNS[:1], tmp_path / "t.png"))


def test_trends_figure_no_data(tmp_path: Path) -> None:
    out = figures.trends_figure(_summary(), ["absent"], tmp_path / "t.png")
    rgb = _read_png(out)
    assert out.is_file()
    assert rgb.std() > 0.01  # the "no parameter data" text, not a blank canvas
