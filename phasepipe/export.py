"""A release's maps as calibrated TIFF files, for Fiji, DigitalMicrograph and other image tools.

Every (y, x) variable of every series' store (phase, amplitude, tie_phase, ...) becomes one
float32 ImageJ TIFF ``<series>_<variable>.tif`` whose resolution tags and ``unit`` say the pixel
size in nm, so that Fiji's scale bar and measurements are in nm at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from phasepipe import imagefiles, io

log = logging.getLogger(__name__)


def export_release(release_dir: Path, out_dir: Path) -> list[Path]:
    """Write every (y, x) map of every series' store in ``release_dir`` into ``out_dir``; returns
    the files written. Failed series have no maps and are skipped with a log line."""
    stores = sorted((release_dir / "series").glob("*.zarr"))
    if not stores:
        raise FileNotFoundError(f"{release_dir} holds no series stores (series/*.zarr): is it a release folder?")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for store in stores:
        ds = io.open_store(store)
        series = ds.attrs["series"]
        if io.is_failed(ds):
            log.info("%s failed (%s): no maps to export", series, ds.attrs.get("error", ""))
            continue
        for name, var in ds.data_vars.items():
            if var.dims != ("y", "x"):
                continue
            path = out_dir / f"{series}_{name}.tif"
            imagefiles.write_tiff(path, var.values, float(ds.attrs["pixel_size_nm"]))
            written.append(path)
    return written
