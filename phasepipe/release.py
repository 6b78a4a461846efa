"""Immutable, versioned releases: provenance, manifests, atomic publication.

A release is built under a temporary name beside its final place and renamed when complete, so
it exists whole or not at all. Once published it is never modified. Large arrays (the series
stores) are hard-linked from the work area rather than copied; every file's sha256 is in the
manifest, so a reference stays verifiable.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from io import StringIO
from pathlib import Path

import numpy as np

from phasepipe import __version__, imagefiles, io, sheet

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("snakemake", "torch", "dask", "distributed", "zarr", "xarray", "numpy", "scipy", "scikit-image")
INDEX_COLUMNS = ("release", "created", "phasepipe", "config_sha256", "inputs_sha256", "n_series", "n_failed")


class ReleaseError(RuntimeError):
    """A release cannot be published as asked; nothing was changed."""


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "phasepipe": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the phasepipe source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def input_checksums(stores: list[Path]) -> dict[str, dict]:
    """Per series: the sha256 of every source file, as recorded at ingestion, and the sheet's
    values for it (nominal defocus, pixel size, microscope), so an edited sheet is other input."""
    sums = {}
    for path in stores:
        ds = io.open_store(path)
        sheet = {"microscope": ds.attrs.get("microscope"), "pixel_size_nm": ds.attrs.get("pixel_size_nm")}
        if "defocus_nominal_nm" in ds:
            sheet["defocus_nominal_nm"] = [float(v) for v in ds["defocus_nominal_nm"].values]
        sums[ds.attrs["series"]] = {"files": json.loads(ds.attrs.get("source_files", "{}")), "sheet": sheet}
    return dict(sorted(sums.items()))


def fingerprint(config: dict, inputs: dict) -> dict[str, str | None]:
    """What makes a release what it is: software version (and git commit when known), effective
    config and inputs."""
    return {
        "phasepipe": __version__,
        "git_commit": git_commit(),
        "config_sha256": sha256_text(canonical_json(config)),
        "inputs_sha256": sha256_text(canonical_json(inputs)),
    }


def release_id(fp: dict[str, str]) -> str:
    return f"v{fp['phasepipe']}-{sha256_text(canonical_json(fp))[:12]}"


def release_files(aggregate_dir: Path, stores: list[Path]) -> dict[str, Path]:
    """Every file of a release but its manifest: path in the release -> source file."""
    files = {item: aggregate_dir / item for item in ("parameters.csv", "series_summary.csv", "campaign_summary.json")}
    sources = [(aggregate_dir / "figures", "figures")]
    sources += [(store, f"series/{io.open_store(store).attrs['series']}.zarr") for store in stores]
    for top, prefix in sources:
        for path in sorted(top.rglob("*")):
            if path.is_file() and path.name != ".snakemake_timestamp":  # Snakemake's bookkeeping
                files[f"{prefix}/{path.relative_to(top)}"] = path
    return files


def _file_checksums(files: dict[str, Path]) -> dict[str, str]:
    return {name: imagefiles.sha256_file(path) for name, path in sorted(files.items())}


def _place(source: Path, target: Path, link: bool) -> None:
    """Put one file into a release, read-only.

    Series stores (the large arrays) are hard-linked, never copied: the work area only ever
    replaces stores whole, so a published link keeps its content, and the read-only mode guards
    it against writes in place. Tables and figures are small and copied.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not link:
            raise OSError("copy")
        os.link(source, target)
    except OSError:  # a copy where asked for, or where the file system cannot link
        shutil.copy2(source, target)
    os.chmod(target, 0o444)


def _atomic_write(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all: written beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def list_releases(releases_dir: Path) -> list[dict[str, str]]:
    index = releases_dir / "index.csv"
    if not index.exists():
        return []
    with open(index, newline="") as fh:
        return list(csv.DictReader(fh))


def publish(aggregate_dir: Path, stores: list[Path], releases_dir: Path, name: str, config: dict) -> str:
    """Publish the aggregate outputs and series stores as one release; returns its id.

    Publishing the same fingerprint again is a no-op. An explicit ``name`` that already exists
    with a different fingerprint is refused with :class:`ReleaseError`, and nothing is written.
    """
    inputs = input_checksums(stores)
    fp = fingerprint(config, inputs)
    rid = release_id(fp) if name == "auto" else name
    if not sheet.SERIES_ID.match(rid):
        raise ReleaseError(f"release name {rid!r} is not allowed (letters, digits, '_', '.', '-')")
    files = release_files(aggregate_dir, stores)
    outputs = _file_checksums(files)
    final = releases_dir / rid
    if final.exists():
        manifest = json.loads((final / "manifest.json").read_text())
        if manifest.get("fingerprint") != fp:
            raise ReleaseError(
                f"release {rid} already exists with a different config or inputs "
                f"(config sha256 {manifest.get('fingerprint', {}).get('config_sha256', '?')[:12]} vs "
                f"{fp['config_sha256'][:12]}); published releases are never modified: choose another name or 'auto'"
            )
        if manifest.get("outputs") != outputs:
            raise ReleaseError(
                f"release {rid} already exists with the same config and inputs but other results (was the "
                "software changed without a new version or commit?); published releases are never modified: "
                "choose another name"
            )
        log.info("release %s already published with the same config, inputs and results; nothing to do", rid)
        _update_catalog(releases_dir, rid, manifest)
        return rid
    releases_dir.mkdir(parents=True, exist_ok=True)
    for stale in releases_dir.glob(f".tmp-{rid}-*"):  # left by a publish that was killed
        shutil.rmtree(stale)
    tmp = releases_dir / f".tmp-{rid}-{os.getpid()}"
    try:
        for relative, source in files.items():
            _place(source, tmp / relative, link=relative.startswith("series/"))
        manifest = {
            "release": rid,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "fingerprint": fp,
            "versions": package_versions(),
            "config": config,
            "inputs": inputs,
            "outputs": outputs,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp / "manifest.json", 0o444)
        os.rename(tmp, final)  # atomic: the release appears whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _update_catalog(releases_dir, rid, manifest)
    log.info("published release %s (%d series)", rid, len(stores))
    return rid


def _update_catalog(releases_dir: Path, rid: str, manifest: dict) -> None:
    """Add the release to index.csv (once, in order of creation) and point LATEST at it.

    LATEST names the release of the latest successful run, also when that run found its release
    already published (re-running an earlier config makes that release current again).
    """
    rows = list_releases(releases_dir)
    if any(r["release"] == rid for r in rows):
        _atomic_write(releases_dir / "LATEST", rid + "\n")
        return
    with open(releases_dir / rid / "series_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    rows.append(
        {
            "release": rid,
            "created": manifest["created"],
            "phasepipe": manifest["fingerprint"]["phasepipe"],
            "config_sha256": manifest["fingerprint"]["config_sha256"],
            "inputs_sha256": manifest["fingerprint"]["inputs_sha256"],
            "n_series": str(len(summary)),
            "n_failed": str(sum(r["status"] != "ok" for r in summary)),
        }
    )
    table = StringIO()
    writer = csv.DictWriter(table, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(releases_dir / "index.csv", table.getvalue())
    _atomic_write(releases_dir / "LATEST", rid + "\n")


def diff_releases(releases_dir: Path, a: str, b: str, sigmas: float = 2.0) -> dict:
    """What changed from release ``a`` to ``b``: series added, removed and newly failed, and the
    per-image defocus values that moved by more than ``sigmas`` combined standard deviations."""
    import pandas as pd

    def load(rid: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        folder = releases_dir / rid
        if not (folder / "manifest.json").is_file():
            raise ReleaseError(f"no published release {rid!r} in {releases_dir}")
        return pd.read_csv(folder / "series_summary.csv"), pd.read_csv(folder / "parameters.csv")

    (sum_a, par_a), (sum_b, par_b) = load(a), load(b)
    status_a = dict(zip(sum_a["series"], sum_a["status"], strict=True))
    status_b = dict(zip(sum_b["series"], sum_b["status"], strict=True))
    both = par_a.merge(par_b, on=["series", "image"], suffixes=("_a", "_b"))
    sigma = np.hypot(both["defocus_std_nm_a"], both["defocus_std_nm_b"])
    change = (both["defocus_nm_b"] - both["defocus_nm_a"]).abs()
    moved = both[change > sigmas * sigma]
    return {
        "from": a,
        "to": b,
        "added": sorted(set(status_b) - set(status_a)),
        "removed": sorted(set(status_a) - set(status_b)),
        "newly_failed": sorted(k for k, v in status_b.items() if v != "ok" and status_a.get(k, "ok") == "ok"),
        "moved": [
            {
                "series": row.series,
                "image": int(row.image),
                "parameter": "defocus_nm",
                "from": float(row.defocus_nm_a),
                "to": float(row.defocus_nm_b),
                "sigma": float(np.hypot(row.defocus_std_nm_a, row.defocus_std_nm_b)),
            }
            for row in moved.itertuples()
        ],
    }
