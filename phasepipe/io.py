"""The Zarr stores that join the stages.

Every stage reads and writes one xarray Dataset per series in a Zarr (v3) store. A store whose
series failed carries ``attrs["status"] == "failed"`` and the message, so that one bad series
travels through the workflow to the release summary instead of stopping the campaign.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import xarray as xr


def failed_dataset(series: str, message: str, stage: str) -> xr.Dataset:
    """A store that records a series' failure; later stages pass it on untouched."""
    return xr.Dataset(attrs={"series": series, "status": "failed", "error": message, "failed_stage": stage})


def write_store(ds: xr.Dataset, path: str | Path, chunk_px: int = 512, compute: bool = True) -> None:
    """Write a Dataset as a Zarr v3 store, chunked in tiles of ``chunk_px`` over (y, x).

    ``compute=False`` writes the NumPy-backed variables and only the layout of Dask-backed ones,
    whose chunks are then written region by region (the tiled reconstruction does).
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    encoding = {}
    for name, var in ds.data_vars.items():
        chunks = tuple(min(chunk_px, s) if d in ("y", "x") else s for d, s in zip(var.dims, var.shape, strict=True))
        if chunks:
            encoding[name] = {"chunks": chunks}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding, compute=compute)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a stage's store (lazily).

    Snakemake marks a directory output with a ``.snakemake_timestamp`` file, which Zarr warns is
    no part of the store: expected in every stage's output, so not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp is not recognized")
        return xr.open_zarr(path, zarr_format=3, consolidated=False)


def is_failed(ds: xr.Dataset) -> bool:
    return ds.attrs.get("status") == "failed"
