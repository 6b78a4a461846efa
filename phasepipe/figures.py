"""Publication-quality PNG figures of reconstructions, defocus calibrations and parameter trends.

Every function is pure: it takes data and an output path, writes one PNG and returns the path.
Figures are built on :class:`matplotlib.figure.Figure` directly (not ``pyplot``), so nothing is
registered in pyplot's global figure manager, no backend has to be selected and nothing leaks
between calls, whether from a Snakemake rule, a notebook or a test.

Colour convention of induction maps (physics in :mod:`phasepipe.physics`): the direction of the in-plane
integrated induction (B_x t, B_y t) is the hue, measured from +x towards +y (y = row index, down on
screen as in the image panels), and its magnitude, normalised by a robust maximum, is the value.
The colour wheel uses the same mapping and the same orientation, so it can be read off directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import dates as mdates
from matplotlib.figure import Figure

from phasepipe import physics

DPI = 120
PHASE_CMAP = "viridis"  # perceptually uniform, so equal phase steps look equal in AD and TIE panels
SESSION_COLOURS = [mcolors.to_hex(c) for c in mcolors.TABLEAU_COLORS.values()]
# Unit suffixes of summary columns, shown as "(unit)" in axis labels.
_UNITS = {"mrad": "mrad", "rad": "rad", "nm": "nm", "um": "µm", "mm": "mm", "px": "px", "pct": "%", "kv": "kV"}


# --------------------------------------------------------------------------------------------
# Colour maps
# --------------------------------------------------------------------------------------------


def _hsv_rgb(angle: np.ndarray, value: np.ndarray) -> np.ndarray:
    """RGB image with hue from ``angle`` (rad, any range) and brightness ``value`` in [0, 1].

    Shared by :func:`induction_rgb` and :func:`colour_wheel` so the legend can never disagree
    with the map it explains.
    """
    hsv = np.empty((*angle.shape, 3))
    hsv[..., 0] = np.mod(angle, 2 * np.pi) / (2 * np.pi)
    hsv[..., 1] = 1.0
    hsv[..., 2] = np.clip(value, 0.0, 1.0)
    return mcolors.hsv_to_rgb(hsv)


def _induction(bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, float]:
    """Induction colour image of (B_x t, B_y t) and the magnitude (T nm) that maps to full
    brightness."""
    magnitude = np.hypot(bx, by)
    # NaN phase (masked pixels) has no defined induction: show it black, like zero induction.
    finite = np.isfinite(magnitude)
    magnitude = np.where(finite, magnitude, 0.0)
    # A robust maximum, so that a few hot pixels (domain walls, edge artefacts) do not darken
    # the whole map.
    norm = float(np.percentile(magnitude[finite], 99)) if finite.any() else 0.0
    value = magnitude / norm if norm > 0 else np.zeros_like(magnitude)
    angle = np.arctan2(np.where(finite, by, 0.0), np.where(finite, bx, 0.0))
    return _hsv_rgb(angle, value), norm


def induction_rgb(phase: np.ndarray, pixel_size_nm: float) -> np.ndarray:
    """Induction colour map of a magnetic phase image.

    Parameters
    ----------
    phase : (y, x) array
        Magnetic phase in rad.
    pixel_size_nm : float
        Pixel size in nm.

    Returns
    -------
    (y, x, 3) float array in [0, 1]
        Hue = direction of (B_x t, B_y t) from :func:`physics.induction_from_phase`, angle from
        +x towards +y (row index); value = magnitude over its 99th percentile, clipped to 1;
        saturation 1. Zero induction (constant phase) is black.
    """
    return _induction(*physics.induction_from_phase(np.asarray(phase, dtype=float), pixel_size_nm))[0]


def colour_wheel(n: int = 128) -> np.ndarray:
    """Colour-wheel legend for :func:`induction_rgb`.

    Parameters
    ----------
    n : int
        Image size in pixels.

    Returns
    -------
    (n, n, 3) float array in [0, 1]
        Hue by angle (from +x = column direction towards +y = row direction, as in the maps),
        brightness by radius (0 at the centre, 1 at the rim), white outside the disc.
    """
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    y, x = c[:, None], c[None, :]
    radius = np.broadcast_to(np.hypot(x, y), (n, n))
    rgb = _hsv_rgb(np.arctan2(y, x) * np.ones((n, n)), radius)
    # Blend into white over about one pixel at the rim: a hard cut looks jagged at legend size.
    inside = np.clip((1 - radius) * n / 2 + 0.5, 0.0, 1.0)[..., None]
    return inside * rgb + (1 - inside)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _robust_limits(a: np.ndarray) -> tuple[float, float]:
    """1st/99th percentile of the finite values, widened if degenerate (constant image)."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _session_colours(sessions: Sequence[str]) -> dict[str, str]:
    return {s: SESSION_COLOURS[i % len(SESSION_COLOURS)] for i, s in enumerate(sessions)}


def _ordered_unique(values: Sequence) -> list[str]:
    """Unique values as strings, in order of first appearance (the order they were acquired)."""
    return list(dict.fromkeys(str(v) for v in values))


def _pretty_label(column: str) -> str:
    """``beam_divergence_mrad`` -> ``beam divergence (mrad)``."""
    words = column.split("_")
    if len(words) > 1 and words[-1].lower() in _UNITS:
        return f"{' '.join(words[:-1])} ({_UNITS[words[-1].lower()]})"
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def series_figure(
    phase: np.ndarray,
    tie_phase: np.ndarray,
    pixel_size_nm: float,
    title: str,
    path: str | Path,
    phase_electrostatic: np.ndarray | None = None,
    induction: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """AD phase, TIE phase and induction colour map of one through-focus series; for a separated
    series also its electrostatic phase, and the induction its store holds.

    Parameters
    ----------
    phase, tie_phase : (y, x) arrays
        AD and TIE phase in rad. Both are shown with their mean removed (a global phase constant
        is not measurable) and with the same colour limits, the 1st/99th percentile of the AD phase.
    pixel_size_nm : float
        Pixel size in nm; axes are labelled in nm.
    title : str
        Figure title.
    path : str or Path
        Output PNG.
    phase_electrostatic : (y, x) array, optional
        A separated series' electrostatic phase (rad), shown beside the total.
    induction : ((y, x), (y, x)) arrays, optional
        A separated series' (B_x t, B_y t) in T nm, from its magnetic phase as its store holds
        them (a rim's electrostatic step would otherwise dominate the induction map); without
        it, the induction of ``phase``.

    Returns
    -------
    Path
        ``path``.
    """
    phase = np.asarray(phase, dtype=float)
    tie_phase = np.asarray(tie_phase, dtype=float)
    ad = phase - np.nanmean(phase)
    tie = tie_phase - np.nanmean(tie_phase)
    vmin, vmax = _robust_limits(ad)
    rgb, norm = _induction(*(physics.induction_from_phase(phase, pixel_size_nm) if induction is None else induction))
    panels = [(ad, "AD phase"), (tie, "TIE phase")]
    if phase_electrostatic is not None:
        electrostatic = np.asarray(phase_electrostatic, dtype=float)
        panels.insert(1, (electrostatic - np.nanmean(electrostatic), "Electrostatic phase"))

    ny, nx = phase.shape
    # extent is in pixel-edge coordinates; y runs downwards like the array rows, which keeps the
    # image orientation of the detector and matches the colour wheel's +y direction.
    extent = (0.0, nx * pixel_size_nm, ny * pixel_size_nm, 0.0)
    # Size the figure to the image aspect ratio, so panels are neither squashed nor padded.
    panel_w = 4.2
    n = len(panels) + 1
    fig = Figure(figsize=(n * panel_w + 3.0, panel_w * ny / nx + 0.9), layout="constrained")
    axes = fig.subplots(1, n, sharex=True, sharey=True)

    for ax, (img, name) in zip(axes, panels, strict=False):
        im = ax.imshow(img, cmap=PHASE_CMAP, vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        ax.set_title(name)
        # An inset in axes coordinates follows the image's true (aspect-corrected) height, so the
        # colour bar is exactly as tall as the image; constrained layout still makes room for it.
        cax = ax.inset_axes((1.03, 0.0, 0.05, 1.0))
        cbar = fig.colorbar(im, cax=cax, extend="both")
        cbar.set_label("phase (rad)")

    ax = axes[-1]
    ax.imshow(rgb, extent=extent, interpolation="nearest")
    ax.set_title("Induction (AD phase)" if induction is None else "Induction (magnetic phase)")
    # The wheel sits where the other panels have their colour bars, so no data is hidden.
    wax = ax.inset_axes((1.04, 0.55, 0.4, 0.4))
    wax.imshow(colour_wheel(), interpolation="antialiased")
    wax.set_axis_off()
    wax.set_title(r"$B_\perp t$ direction", fontsize=9)
    wax.annotate(
        f"brightness:\n|B t| / {norm:.3g} T nm",
        xy=(0.5, -0.08),
        xycoords="axes fraction",
        ha="center",
        va="top",
        fontsize=8,
    )

    for ax in axes:
        ax.set_xlabel("x (nm)")
    axes[0].set_ylabel("y (nm)")
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def calibration_figure(table: pd.DataFrame, fits: Mapping[str, Mapping], path: str | Path) -> Path:
    """Recovered against nominal defocus, per session, with the fitted calibration lines.

    Parameters
    ----------
    table : DataFrame
        One row per image with columns series, session, defocus_nominal_nm, defocus_nm and
        defocus_std_nm (the last may be absent or NaN: no error bar).
    fits : mapping
        session -> {"scale": float, "offset_nm": float, "scale_ci": [lo, hi]}, the fit
        recovered = scale * nominal + offset. ``scale_ci`` is optional.
    path : str or Path
        Output PNG.

    Returns
    -------
    Path
        ``path``.
    """
    fits = {str(k): v for k, v in fits.items()}
    session_col = table["session"].astype(str)
    sessions = _ordered_unique([*session_col, *fits])
    colour = _session_colours(sessions)

    nominal = pd.to_numeric(table["defocus_nominal_nm"], errors="coerce").to_numpy(float)
    recovered = pd.to_numeric(table["defocus_nm"], errors="coerce").to_numpy(float)
    if "defocus_std_nm" in table:
        std = pd.to_numeric(table["defocus_std_nm"], errors="coerce").to_numpy(float)
    else:
        std = np.full_like(nominal, np.nan)

    fig = Figure(figsize=(7.5, 7.5), layout="constrained")
    ax, rax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))

    finite = np.isfinite(nominal)
    lo, hi = (nominal[finite].min(), nominal[finite].max()) if finite.any() else (-1e6, 1e6)
    pad = 0.06 * max(hi - lo, 1.0)
    x_nm = np.linspace(lo - pad, hi + pad, 2)
    ax.plot(x_nm / 1e6, x_nm / 1e6, ls="--", color="0.55", lw=1.2, label="nominal", zorder=1)
    rax.axhline(0.0, ls="--", color="0.55", lw=1.2, zorder=1)

    for session in sessions:
        rows = (session_col == session).to_numpy()
        c = colour[session]
        if rows.any():
            # Error bars are kept although they are tiny on the mm scale: they are what the residual
            # panel below is for, and they show up there.
            yerr = np.where(np.isfinite(std[rows]), std[rows], 0.0)
            kw = {"fmt": "o", "color": c, "ms": 5, "capsize": 2, "elinewidth": 1, "zorder": 3}
            ax.errorbar(nominal[rows] / 1e6, recovered[rows] / 1e6, yerr=yerr / 1e6, label=None, **kw)
            rax.errorbar(nominal[rows] / 1e6, (recovered[rows] - nominal[rows]) / 1e3, yerr=yerr / 1e3, **kw)
        if session in fits:
            fit = fits[session]
            scale, offset = float(fit["scale"]), float(fit.get("offset_nm", 0.0))
            label = f"{session}: scale {scale:.3f}"
            if fit.get("scale_ci") is not None:
                ci_lo, ci_hi = fit["scale_ci"]
                label += f" [{float(ci_lo):.3f}, {float(ci_hi):.3f}]"
            fitted = scale * x_nm + offset
            ax.plot(x_nm / 1e6, fitted / 1e6, color=c, lw=1.6, label=label, zorder=2)
            rax.plot(x_nm / 1e6, (fitted - x_nm) / 1e3, color=c, lw=1.6, zorder=2)
        elif rows.any():
            # A session without a fit still needs a legend entry to say which colour it is.
            ax.plot([], [], "o", color=c, label=f"{session}: no fit")

    ax.set_xlim(x_nm[0] / 1e6, x_nm[1] / 1e6)
    ax.set_ylabel("recovered defocus (mm)")
    ax.set_title("Defocus calibration", fontsize=13)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    ax.grid(alpha=0.3)
    rax.set_xlabel("nominal defocus (mm)")
    rax.set_ylabel("recovered − nominal (µm)")
    rax.grid(alpha=0.3)
    return _save(fig, path)


def trends_figure(summary: pd.DataFrame, columns: list[str], path: str | Path) -> Path:
    """Microscope parameters against acquisition time, one stacked panel per parameter.

    Parameters
    ----------
    summary : DataFrame
        One row per series with columns series, session, acquired (ISO 8601, may be empty/NaN)
        and the numeric ``columns``.
    columns : list of str
        Parameters to plot; absent or all-NaN columns are skipped.
    path : str or Path
        Output PNG.

    Returns
    -------
    Path
        ``path``. With no plottable column the figure says "no parameter data".

    Notes
    -----
    The x axis is the acquisition time when every series has one; otherwise it is the series order
    with series names as tick labels, so that no series silently drops out of the plot.
    """
    values = {
        col: pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
        for col in columns
        if col in summary and pd.to_numeric(summary[col], errors="coerce").notna().any()
    }
    if not values:
        fig = Figure(figsize=(7, 2.5), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no parameter data", ha="center", va="center", fontsize=14, color="0.4")
        ax.set_axis_off()
        fig.suptitle("Parameter trends", fontsize=13)
        return _save(fig, path)

    n = len(summary)
    sessions = summary["session"].astype(str).to_numpy() if "session" in summary else np.full(n, "?")
    names = summary["series"].astype(str).to_numpy() if "series" in summary else np.arange(n).astype(str)
    if "acquired" in summary:
        # utc=True puts mixed UTC offsets on one clock (naive times are kept as they are).
        times = pd.to_datetime(summary["acquired"], errors="coerce", utc=True, format="ISO8601")
    else:
        times = pd.Series(pd.NaT, index=summary.index)
    use_time = n > 0 and bool(times.notna().all())
    if use_time:
        x = times.dt.tz_convert(None).to_numpy()
        order = np.argsort(x, kind="stable")
    else:
        x = np.arange(n)
        order = np.arange(n)

    colour = _session_colours(_ordered_unique(sessions))
    # Rotated series names need height of their own, or they squash the panels above them.
    label_h = 0.0 if use_time or n == 0 else 0.045 * max(len(s) for s in names)
    fig = Figure(figsize=(9, 1.0 + 2.1 * len(values) + label_h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(values), 1, sharex=True, squeeze=False)[:, 0])
    for ax, (col, y) in zip(axes, values.items(), strict=True):
        for session, c in colour.items():
            idx = order[sessions[order] == session]
            # A thin line joins a session's points in time order: trends within a session are the
            # thing to see, and a line across sessions would suggest a continuity there is not.
            ax.plot(x[idx], y[idx], "-", color=c, lw=0.8, alpha=0.5)
            ax.plot(x[idx], y[idx], "o", color=c, ms=6, mec="white", mew=0.6, label=session)
        ax.set_ylabel(_pretty_label(col))
        ax.grid(alpha=0.3)
    # Outside the panels: with many sessions an inner legend would hide data points.
    fig.legend(*axes[0].get_legend_handles_labels(), title="session", loc="outside right upper", fontsize=9)

    last = axes[-1]
    if use_time:
        locator = mdates.AutoDateLocator()
        last.xaxis.set_major_locator(locator)
        last.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        # Pad by at least an hour: a single series (or one burst) would otherwise get a range of
        # years from the locator's defaults.
        t0, t1 = x.min(), x.max()
        pad = max((t1 - t0) * 0.05, np.timedelta64(1, "h"))
        last.set_xlim(t0 - pad, t1 + pad)
        last.set_xlabel("acquisition time")
    else:
        # At most ~30 labels, else they overlap into an unreadable band.
        step = int(np.ceil(n / 30))
        last.set_xticks(x[::step], names[::step], rotation=30, ha="right")
        last.set_xlabel("series")
        last.set_xlim(-0.5, n - 0.5)
    fig.suptitle("Parameter trends", fontsize=13)
    return _save(fig, path)
