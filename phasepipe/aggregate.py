"""Campaign tables, statistics of the microscope's parameters, and figures.

Outputs (into one folder, later published by :mod:`phasepipe.release`):
parameters.csv (one row per series and image), series_summary.csv (one row per series),
campaign_summary.json (defocus calibration per session and campaign, parameter distributions,
counts, outliers) and figures/.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from phasepipe import configuration, io, metrics, parameters, quality

log = logging.getLogger(__name__)

OUTLIER_Z = 3.5  # robust z-score (median / MAD) beyond which a series is flagged


def image_table(ds) -> pd.DataFrame:
    """parameters.csv rows of one reconstructed series: every registered output
    (:func:`phasepipe.parameters.outputs`) and its std, per image or the series' own repeated,
    beside the nominal defocus and the alignment's figures."""
    outputs = parameters.outputs()
    columns = {
        "series": ds.attrs["series"],
        "image": ds["image"].values,
        "defocus_nominal_nm": ds["defocus_nominal_nm"].values,
    }
    for output in outputs:
        columns.update({name: ds[name].values for name in (*output.columns, *output.std_columns)})
    columns.update({name: ds[name].values for name in ("rotation_deg", "scale", "registration_confidence")})
    columns.update(series_outputs(ds))
    columns.update(separation_columns(ds))
    return pd.DataFrame(columns)


SEPARATION_COLUMNS = ("partner_rotation_deg", "partner_scale", "partner_shift_y_px", "partner_shift_x_px")


def separation_columns(ds) -> dict:
    """How a series' phase was separated: jointly with related series (its relation, role and
    frame in its group's anchor's) or by its absorption (the constant k); empty where it was not."""
    record = json.loads(ds.attrs.get("separation", "{}"))
    return {
        "separation": record.get("relation", ""),
        "separation_role": record.get("role", ""),
        "separation_group": "+".join(record.get("members", [])),
        "separation_scale_rad": record.get("scale_rad", np.nan),
        **{name: ds.attrs.get(name, np.nan) for name in SEPARATION_COLUMNS},
    }


def series_outputs(ds) -> dict[str, float]:
    """The registered outputs of the whole series (not per image) and their std, from the store's
    attributes."""
    return {
        name: ds.attrs[name]
        for output in parameters.outputs()
        if not output.per_image
        for name in (output.name, output.std)
    }


def calibration_fit(nominal_nm: np.ndarray, recovered_nm: np.ndarray, std_nm: np.ndarray | None = None) -> dict:
    """Fit recovered = scale * nominal + offset, with 95 % confidence intervals.

    ``std_nm``: the images' stated defocus std, when known. The scale's std is then the larger of
    the line's standard error and their median relative std: a series' calibration error is
    mostly a bias that all its images share, and series of one kind share it too, so it does not
    average down over images or series (docs/physics.md, "The calibration's bias"). A NaN std
    (unknown) leaves the scale's std and interval unknown (None).
    """
    nominal_nm = np.asarray(nominal_nm, float)
    recovered_nm = np.asarray(recovered_nm, float)
    n = nominal_nm.size
    if n < 2 or np.ptp(nominal_nm) == 0:
        return {
            "n_images": int(n),
            "scale": None,
            "scale_std": None,
            "offset_nm": None,
            "scale_ci": None,
            "offset_nm_ci": None,
        }
    fit = stats.linregress(nominal_nm, recovered_nm)
    t = stats.t.ppf(0.975, n - 2) if n > 2 else stats.norm.ppf(0.975)
    scale_std = float(fit.stderr) if n > 2 else None
    if std_nm is not None:
        stated = float(np.median(np.asarray(std_nm, float) / np.abs(nominal_nm)))
        if np.isnan(stated):
            scale_std = None
        elif scale_std is None or stated > scale_std:
            scale_std = stated
    return {
        "n_images": int(n),
        "scale": float(fit.slope),
        "scale_std": scale_std,
        "offset_nm": float(fit.intercept),
        "scale_ci": [float(fit.slope - t * scale_std), float(fit.slope + t * scale_std)]
        if scale_std is not None
        else None,
        "offset_nm_ci": [
            float(fit.intercept - t * fit.intercept_stderr),
            float(fit.intercept + t * fit.intercept_stderr),
        ]
        if n > 2
        else None,
    }


def robust_outliers(values: pd.Series, threshold: float = OUTLIER_Z) -> pd.Series:
    """True where the robust z-score |x - median| / (1.4826 MAD) exceeds ``threshold``."""
    med = values.median()
    mad = 1.4826 * (values - med).abs().median()
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(False, index=values.index)
    return (values - med).abs() / mad > threshold


def truth_figures(ds, truth_path: str) -> dict:
    """Accuracy against a simulator's ground truth, for demo and benchmark campaigns."""
    truth = io.open_store(truth_path).load()
    true_phase = truth["phase"].values
    errors = metrics.defocus_errors(ds["defocus_nm"].values, truth["defocus_nm"].values)
    focus = np.abs(truth["defocus_nm"].values) < 1.0
    separated = {
        f"acc_{part}_truth": metrics.phase_accuracy(ds[f"phase_{part}"].values, truth[f"phase_{part}"].values)
        if f"phase_{part}" in ds and f"phase_{part}" in truth
        else np.nan
        for part in ("magnetic", "electrostatic")
    }
    return {
        **separated,
        "acc_truth": metrics.phase_accuracy(ds["phase"].values, true_phase),
        "acc_tie_truth": metrics.phase_accuracy(ds["tie_phase"].values, true_phase),
        "phase_rmse_truth_rad": metrics.phase_rmse(ds["phase"].values, true_phase),
        "defocus_max_rel_error": float(errors[~focus].max()) if (~focus).any() else np.nan,
        "defocus_nominal_max_rel_error": float(
            metrics.defocus_errors(ds["defocus_nominal_nm"].values, truth["defocus_nm"].values)[~focus].max()
        )
        if (~focus).any()
        else np.nan,
    }


def series_row(ds, warning: str = "") -> dict:
    """series_summary.csv row of one reconstructed (or failed) series; ``warning``: one more
    quality reason from outside its store (the sheet's partner checks)."""
    row = {
        "series": ds.attrs["series"],
        "status": ds.attrs.get("status", "ok"),
        "quality": "failed",
        "quality_reasons": "",
        "error": ds.attrs.get("error", ""),
        "failed_stage": ds.attrs.get("failed_stage", ""),
        "session": ds.attrs.get("session", ""),
        "acquired": ds.attrs.get("acquired", ""),
    }
    if io.is_failed(ds):
        return row
    acc_ad_vs_tie = metrics.phase_accuracy(ds["phase"].values, ds["tie_phase"].values)
    reasons = quality.alignment_reasons(ds.attrs, ds["registration_confidence"].values)
    reasons += quality.fit_reasons(ds.attrs, acc_ad_vs_tie)
    nominal = ds["defocus_nominal_nm"].values
    recovered = ds["defocus_nm"].values
    defocused = np.abs(nominal) > 0
    stated = ds["defocus_std_nm"].values[defocused]
    fit = calibration_fit(nominal[defocused], recovered[defocused], stated) if defocused.sum() >= 2 else {}
    reasons += quality.calibration_reasons(fit.get("scale"), nominal, ds["defocus_std_nm"].values)
    reasons += [text for text in (warning, ds.attrs.get("separation_warning", "")) if text]
    drift = np.hypot(ds["shift_y_px"].values, ds["shift_x_px"].values)
    row.update(
        {
            "quality": quality.verdict(row["status"], reasons),
            "quality_reasons": "; ".join(reasons),
            "n_images": int(ds.sizes["image"]),
            "final_loss": ds.attrs["final_loss"],
            "noise": ds.attrs["noise"],
            "iterations": ds.attrs["iterations"],
            "seconds": ds.attrs["seconds"],
            "acc_ad_vs_tie": acc_ad_vs_tie,
            "defocus_scale": fit.get("scale", np.nan),
            # The larger of the scatter about the fitted line and the images' stated std
            # (calibration_fit); with one common factor refined the images lie on the line.
            "defocus_scale_std": np.nan if not fit or fit["scale_std"] is None else fit["scale_std"],
            **series_outputs(ds),
            **separation_columns(ds),
            "drift_rms_px": float(np.sqrt(np.mean(drift**2))),
            "alignment_residual_px": ds.attrs.get("alignment_residual_px", np.nan),
            "registration_confidence_min": float(ds["registration_confidence"].min()),
            "alignment_largest_pair_shift_px": ds.attrs.get("alignment_largest_pair_shift_px", np.nan),
        }
    )
    if ds.attrs.get("truth"):
        row.update(truth_figures(ds, ds.attrs["truth"]))
    return row


def campaign_summary(campaign: str, params: pd.DataFrame, summary: pd.DataFrame, threshold: float) -> dict:
    """Statistics per session and for the whole campaign (``summary`` carries the outlier flags)."""
    ok = summary[summary["status"] == "ok"]
    defocused = params[params["defocus_nominal_nm"] != 0].merge(summary[["series", "session"]], on="series")

    def describe(values: pd.Series) -> dict:
        values = values.dropna()
        if values.empty:
            return {}
        return {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=0)),
            "min": float(values.min()),
            "max": float(values.max()),
        }

    def block(images: pd.DataFrame, series: pd.DataFrame) -> dict:
        return {
            "n_series": int(len(series)),
            "defocus_calibration": calibration_fit(
                images["defocus_nominal_nm"], images["defocus_nm"], images["defocus_std_nm"]
            ),
            "beam_divergence_mrad": describe(series.get("beam_divergence_mrad", pd.Series(dtype=float))),
            "defocus_spread_nm": describe(series.get("defocus_spread_nm", pd.Series(dtype=float))),
            "drift_rms_px": describe(series.get("drift_rms_px", pd.Series(dtype=float))),
        }

    sessions = {
        str(name): block(defocused[defocused["session"] == name], ok[ok["session"] == name])
        for name in sorted(ok["session"].fillna("").unique())
    }
    outliers = ok.loc[ok["outlier"].astype(bool), "series"].tolist()
    return {
        "counts": {"series": int(len(summary)), "done": int(len(ok)), "failed": int((summary["status"] != "ok").sum())},
        "failed": summary.loc[summary["status"] != "ok", ["series", "error"]].to_dict("records"),
        "campaign": {"name": campaign, **block(defocused, ok)},
        "sessions": sessions,
        "outliers": {
            "criterion": f"robust z-score of defocus_scale within its session > {threshold}",
            "series": outliers,
        },
    }


def session_outliers(summary: pd.DataFrame, threshold: float) -> pd.Series:
    """True for an ok series whose defocus calibration is a robust outlier of its session's."""
    ok = summary[summary["status"] == "ok"]
    flags = pd.Series(False, index=summary.index)
    for _, group in ok.groupby(ok["session"].fillna("")):
        flags[group.index] = robust_outliers(group["defocus_scale"], threshold)
    return flags


def summary_table(rows: list[dict], threshold: float) -> pd.DataFrame:
    """series_summary.csv: one row per series, with the session outliers and their quality."""
    summary = pd.DataFrame(rows)
    summary["outlier"] = session_outliers(summary, threshold) if "defocus_scale" in summary else False
    for k in summary.index[summary["outlier"]]:
        reason = (
            f"calibration: defocus_scale {summary.at[k, 'defocus_scale']:.4f} is an outlier of session "
            f"{summary.at[k, 'session'] or '(none)'} (robust z-score above {threshold:g})"
        )
        summary.at[k, "quality_reasons"] = "; ".join(r for r in (summary.at[k, "quality_reasons"], reason) if r)
        summary.at[k, "quality"] = "warning"
    return summary


def figure_title(row: pd.Series) -> str:
    """A series figure's title: its id and quality, and the first reason for a warning."""
    title = f"{row['series']}    quality: {row['quality']}"
    if row["quality_reasons"]:
        title += "\n" + textwrap.shorten(row["quality_reasons"].split("; ")[0], 150)
    return title


def aggregate(
    stores: list[Path], out_dir: Path, campaign: str, settings: dict, warnings: dict[str, str] | None = None
) -> None:
    """Write parameters.csv, series_summary.csv, campaign_summary.json and figures/ into ``out_dir``;
    ``settings``: the config's ``aggregate`` section (checked against the schema, the shipped
    defaults filling in what it lacks); ``warnings``: quality reasons by series from outside the
    stores."""
    from phasepipe import figures

    threshold = configuration.section("aggregate", settings)["outlier_z"]
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    tables, rows, done = [], [], {}
    for path in sorted(stores):
        ds = io.open_store(path).load()
        rows.append(series_row(ds, (warnings or {}).get(ds.attrs["series"], "")))
        if io.is_failed(ds):
            log.warning("series %s failed: %s", ds.attrs["series"], ds.attrs.get("error"))
            continue
        tables.append(image_table(ds))
        done[ds.attrs["series"]] = path
    params = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["series", "defocus_nominal_nm", "defocus_nm"])
    )
    summary = summary_table(rows, threshold)
    ok = summary["status"] == "ok"
    # The figures once the quality is known (their titles carry it), one store in memory at a time.
    for _, row in summary[ok].iterrows():
        ds = io.open_store(done[row["series"]])
        figures.series_figure(
            ds["phase"].values,
            ds["tie_phase"].values,
            ds.attrs["pixel_size_nm"],
            figure_title(row),
            fig_dir / f"{row['series']}.png",
            ds["phase_electrostatic"].values if "phase_electrostatic" in ds else None,
            (ds["induction_x_tnm"].values, ds["induction_y_tnm"].values) if "induction_x_tnm" in ds else None,
        )
    params.to_csv(out_dir / "parameters.csv", index=False, float_format="%.6g")
    summary.to_csv(out_dir / "series_summary.csv", index=False, float_format="%.6g")
    result = campaign_summary(campaign, params, summary, threshold)
    (out_dir / "campaign_summary.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if ok.any():
        session_of = summary.set_index("series")["session"]
        images = params.assign(session=params["series"].map(session_of))
        fits = {
            name: block["defocus_calibration"]
            for name, block in result["sessions"].items()
            if block["defocus_calibration"].get("scale") is not None
        }
        figures.calibration_figure(images[images["defocus_nominal_nm"] != 0], fits, fig_dir / "defocus_calibration.png")
        figures.trends_figure(
            summary[ok],
            ["defocus_scale", "beam_divergence_mrad", "defocus_spread_nm", "drift_rms_px"],
            fig_dir / "parameter_trends.png",
        )
    log.info("aggregated %d series (%d failed) into %s", len(summary), int((~ok).sum()), out_dir)
