"""The registry of refinable parameters: the schema agrees with it, and a parameter added by one
entry plus its forward term is refined, reported, written and tabulated with no other change."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from phasepipe import aggregate, configuration, fused, optimise, parameters, reconstruct, simulate, tiling
from phasepipe.model import ForwardModel

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
NOMINAL = np.array([-0.4e6, 0.0, 0.4e6])
TRUE_DRIFT = 0.1


def _dark_drift(params: parameters.Parameters, intensity: torch.Tensor) -> torch.Tensor:
    """A toy forward term: a detector dark level that drifts through the series, b z / max|z| of
    the mean intensity in the image at defocus z. It changes the contrast of the images before and
    after focus in opposite senses, which no object (whose first-order contrast is odd in z) mimics."""
    z = (params.defocus_start_nm / params.defocus_start_nm.abs().max()).to(intensity.dtype)
    return intensity + params.dark_drift.to(intensity.dtype) * z[:, None, None]


TOY = parameters.Refinable(
    "dark_drift",
    lambda microscope, nominal: torch.zeros((), dtype=torch.float64),
    parameters.ParameterOptions(lr=2e-3),
    parameters.Output("dark_drift", "dark_drift_std", lambda p: p.dark_drift.double()),
    term=_dark_drift,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(parameters.REGISTRY, "dark_drift", TOY)


def test_the_schema_offers_exactly_the_registered_parameters():
    schema = yaml.safe_load(SCHEMA.read_text())
    offered = schema["properties"]["reconstruction"]["properties"]["refine"]["items"]["enum"]
    assert offered == list(parameters.REGISTRY)


def test_every_registered_tensor_has_default_options_and_one_output_name():
    options = parameters.default_options()
    assert all(entry.tensor in options for entry in parameters.REGISTRY.values())
    names = [name for output in parameters.outputs() for name in (output.name, output.std)]
    assert len(names) == len(set(names))


def _series(drift: float, n: int = 64) -> np.ndarray:
    """Three images of a smooth phase object with the toy's dark drift, 2 % noise."""
    rng = np.random.default_rng(3)
    microscope = parameters.Microscope()
    phase = 0.5 * simulate.smooth_noise(n, 4.0, rng)
    truth = parameters.Parameters(phase, np.ones((n, n)), NOMINAL, microscope, 1)
    with torch.no_grad():
        truth.dark_drift.fill_(drift)
        images = ForwardModel((n, n), 5.0, microscope, "cpu")(truth, False)
    return images.numpy() * (1 + 0.02 * rng.standard_normal(images.shape))


def test_a_parameter_added_by_one_entry_is_recovered_written_and_tabulated(toy):
    images = _series(TRUE_DRIFT)
    settings = optimise.Settings(refine=("dark_drift",), coarse_factor=1, max_iterations=1500)
    result = reconstruct.reconstruct(images, NOMINAL, 5.0, parameters.Microscope(), settings, margin_px=0)
    assert result.values["dark_drift"] == pytest.approx(TRUE_DRIFT, abs=0.005)  # measured 0.1018
    assert 0 < result.stds["dark_drift"] < 0.005  # measured 5e-4

    n = len(NOMINAL)
    aligned = xr.Dataset(
        {
            "defocus_nominal_nm": (("image",), NOMINAL),
            **{name: (("image",), np.zeros(n)) for name in ("shift_y_px", "shift_x_px", "rotation_deg")},
            "scale": (("image",), np.ones(n)),
            "registration_confidence": (("image",), np.ones(n)),
        },
        coords={"image": np.arange(n), "y": np.arange(64) * 5.0, "x": np.arange(64) * 5.0},
        attrs={"series": "toy"},
    )
    store = reconstruct.result_dataset(aligned, result, settings)
    assert store.attrs["dark_drift"] == result.values["dark_drift"]
    assert store.attrs["dark_drift_std"] == result.stds["dark_drift"]
    table = aggregate.image_table(store)
    assert np.allclose(table["dark_drift"], result.values["dark_drift"])
    assert np.allclose(table["dark_drift_std"], result.stds["dark_drift"])

    # Tiles: each tile's record carries it, and the series' value is their mean.
    summary = {key: np.asarray(value).tolist() for key, value in result.values.items()}
    summary.update({output.std: np.asarray(result.stds[output.name]).tolist() for output in parameters.outputs()})
    summary.update(loss=0.0, noise=0.0, tv_weight=0.0, iterations=1, seconds=1.0)
    other = {**summary, "dark_drift": summary["dark_drift"] + 0.01}
    combined = tiling.combine_parameters([summary, other])
    assert combined["dark_drift"] == pytest.approx(result.values["dark_drift"] + 0.005)
    assert combined["dark_drift_std"] == pytest.approx(0.005)
    json.dumps(summary)  # a tile's record is JSON


def test_the_fast_path_hands_a_parameter_it_does_not_model_to_autograd(toy):
    """Registered but not covered by the fast path: its term is in the images and, refined, it gets
    a gradient, because the objective takes autograd rather than leave it out."""
    images = torch.as_tensor(_series(TRUE_DRIFT, n=32), dtype=torch.float32)
    model = ForwardModel((32, 32), 5.0, parameters.Microscope(), "cpu")
    params = parameters.Parameters(np.zeros((32, 32)), np.ones((32, 32)), NOMINAL, parameters.Microscope(), 1)
    assert "dark_drift" not in fused.COVERS
    for name, value in params.named_parameters():
        value.requires_grad_(name in ("phase", "log_amplitude", "dark_drift"))
    loss, _ = model.objective(params, images, torch.ones(3), False, 0.01)
    assert type(loss.grad_fn).__name__ != "_SeriesMisfitFunctionBackward"
    loss.backward()
    assert params.dark_drift.grad.abs() > 0


def test_one_set_of_microscope_defaults():
    """The shipped config's microscope is the library's default one, which the simulator uses too."""
    assert configuration.shipped_defaults()["microscope"] == dataclasses.asdict(parameters.Microscope())
    acquisition = simulate.Acquisition(defocus_nominal_nm=(0.0,))
    assert all(getattr(acquisition, key) == value for key, value in dataclasses.asdict(parameters.Microscope()).items())
