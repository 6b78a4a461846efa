"""Shared test set-up."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from phasepipe import io, simulate

MICROSCOPE = {"voltage_kv": 200.0, "cs_mm": 1.0, "beam_divergence_mrad": 0.01, "defocus_spread_nm": 500.0}


@pytest.fixture(autouse=True)
def _single_thread():
    """One torch thread per test: predictable run times on the shared 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_aligned_store(path: Path, spec: simulate.SeriesSpec) -> tuple[Path, xr.Dataset]:
    """A simulated series written as the align stage writes its store (no drift: nothing to undo);
    returns the store's path and the simulator's truth."""
    images, truth = simulate.simulate_series(spec)
    n = len(spec.defocus_nominal_nm)
    zeros = np.zeros(n)
    coords = np.arange(spec.size_px) * spec.pixel_size_nm
    ds = xr.Dataset(
        {
            "intensity": (("image", "y", "x"), images),
            "defocus_nominal_nm": (("image",), np.array(spec.defocus_nominal_nm)),
            "shift_y_px": (("image",), zeros),
            "shift_x_px": (("image",), zeros),
            "rotation_deg": (("image",), zeros),
            "scale": (("image",), np.ones(n)),
            "registration_confidence": (("image",), np.ones(n)),
        },
        coords={"image": np.arange(n), "y": coords, "x": coords},
        attrs={
            "series": spec.series,
            "status": "ok",
            "pixel_size_nm": spec.pixel_size_nm,
            "microscope": json.dumps(MICROSCOPE),
        },
    )
    io.write_store(ds, path)
    return path, truth


@pytest.fixture
def aligned_store():
    """``aligned_store(path, spec)``: write a simulated series as an aligned store."""
    return write_aligned_store
