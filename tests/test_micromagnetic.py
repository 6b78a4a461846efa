"""Micromagnetic states from OVF files as specimens: reading (formats, orientation, units), the
phase against the analytic phase of a vortex and of a long bar, and ``phasepipe simulate --ovf``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from phasepipe import cli, io, micromagnetic, physics, sheet, simulate
from phasepipe.imagefiles import InputError

MS = 8.0e5  # A/m
CHECK = {"bin4": (4, 1234567.0), "bin8": (8, 123456789012345.0)}


def write_ovf(path, vectors, cell_m, representation="txt", version=2, units="1", multiplier=1.0):
    """A minimal OVF writer, independent of any library: ``vectors`` (nz, ny, nx, k); OVF 2.0 as
    mumax3 writes it (little-endian binary), OVF 1.0 as OOMMF does (big-endian, valuemultiplier)."""
    nz, ny, nx, k = vectors.shape
    dx, dy, dz = cell_m
    mode = "Text" if representation == "txt" else f"Binary {CHECK[representation][0]}"
    lines = ["# OOMMF OVF 2.0" if version == 2 else "# OOMMF: rectangular mesh v1.0", "# Segment count: 1"]
    lines += ["# Begin: Segment", "# Begin: Header", "# Title: m", "# meshtype: rectangular", "# meshunit: m"]
    for axis, n, d in (("x", nx, dx), ("y", ny, dy), ("z", nz, dz)):
        lines += [f"# {axis}min: 0", f"# {axis}max: {n * d!r}", f"# {axis}base: {d / 2!r}"]
        lines += [f"# {axis}nodes: {n}", f"# {axis}stepsize: {d!r}"]
    if version == 2:
        lines += [f"# valuedim: {k}", f"# valueunits: {' '.join([units] * k)}", "# Desc: Total simulation time:  0  s"]
    else:
        lines += [f"# valueunit: {units}", f"# valuemultiplier: {multiplier!r}"]
    lines += ["# End: Header", f"# Begin: Data {mode}"]
    flat = (vectors / multiplier).reshape(-1, k)  # x fastest, then y, then z
    with open(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode())
        if representation == "txt":
            fh.write("".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in flat).encode())
        else:
            size, check = CHECK[representation]
            dtype = np.dtype(f"{'<' if version == 2 else '>'}f{size}")
            fh.write(np.array([check, *flat.ravel()], dtype=dtype).tobytes() + b"\n")
        fh.write(f"# End: Data {mode}\n# End: Segment\n".encode())
    return path


def vortex(n=48, radius=18.0, core=3.0, nz=2):
    """A vortex in a disk (unit m, counter-clockwise, core along +z): (nz, n, n, 3), 0 outside."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(x, y)
    inplane = np.sqrt(1 - np.exp(-((r / core) ** 2)))
    m = np.stack(
        [-y / np.maximum(r, 1e-9) * inplane, x / np.maximum(r, 1e-9) * inplane, np.exp(-((r / core) ** 2) / 2)]
    )
    m = np.where(r < radius, m, 0.0).transpose(1, 2, 0)
    return np.broadcast_to(m, (nz, n, n, 3)).copy(), r < radius


@pytest.mark.parametrize(
    ("representation", "version", "tolerance"),
    [("txt", 2, 1e-6), ("bin4", 2, 1e-6), ("bin8", 2, 1e-12), ("txt", 1, 1e-6), ("bin8", 1, 1e-12)],
)
def test_read_gives_back_what_was_written(tmp_path, representation, version, tolerance):
    m, disk = vortex()
    units, multiplier = ("1", 1.0) if version == 2 else ("A/m", 1e3)
    path = write_ovf(
        tmp_path / "v.ovf",
        m * (MS if units == "A/m" else 1),
        (4e-9, 4e-9, 5e-9),
        representation,
        version,
        units,
        multiplier,
    )
    state = micromagnetic.read_ovf(path)
    assert np.abs(state.mx - m[0, ..., 0]).max() < tolerance
    assert np.abs(state.my - m[0, ..., 1]).max() < tolerance
    np.testing.assert_array_equal(state.support, disk.astype(float))
    assert state.cell_nm == pytest.approx((4.0, 4.0, 5.0)) and state.nz == 2
    assert state.ms_a_per_m == (pytest.approx(MS, rel=1e-6) if units == "A/m" else None)


def test_orientation_rows_are_y_columns_x_and_vacuum_layers_count_in_support(tmp_path):
    """In-plane angle 0.1 ix + 0.5 iy on a 6 x 4 mesh; the top layer is vacuum in the first column."""
    iy, ix = np.mgrid[:4, :6]
    angle = 0.1 * ix + 0.5 * iy
    layer = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], axis=-1)
    m = np.stack([layer, layer])
    m[1, :, 0] = 0.0
    state = micromagnetic.read_ovf(write_ovf(tmp_path / "o.ovf", 3 * m, (2e-9, 2e-9, 3e-9), "bin8"))
    assert state.mx.shape == (4, 6)
    np.testing.assert_allclose(state.mx, np.cos(angle), atol=1e-12)  # normalised, z-averaged over magnetic cells
    np.testing.assert_allclose(state.my, np.sin(angle), atol=1e-12)
    assert state.support[:, 0] == pytest.approx(0.5) and state.support[:, 1:] == pytest.approx(1.0)


def test_vortex_phase_is_a_cone_and_its_induction_is_b0_t_m(tmp_path):
    """A vortex has no magnetic charge: its projected induction is B0 t m, and at x = 0, where
    m = -/+ x, the phase slope is -/+ pi B0 t / Phi0 (B_x t = (Phi0 / pi) dphi/dy)."""
    m, disk = vortex(n=96, radius=40.0)
    state = micromagnetic.read_ovf(write_ovf(tmp_path / "v.ovf", m, (4e-9, 4e-9, 5e-9), "bin4"))
    wave = micromagnetic.exit_wave(state, margin_px=48, ms_a_per_m=MS)
    assert wave.thickness_nm == pytest.approx(10.0) and wave.b0_t == pytest.approx(4e-7 * np.pi * MS)
    b0t = wave.b0_t * wave.thickness_nm
    window = np.s_[48:144, 48:144]
    bx, by = (b[window] for b in physics.induction_from_phase(wave.phase_magnetic, 4.0))
    y, x = np.mgrid[:96, :96] - 47.5
    ring = disk & (np.hypot(x, y) > 8) & (np.hypot(x, y) < 35)
    assert np.abs(bx - b0t * state.mx)[ring].max() < 0.03 * b0t
    assert np.abs(by - b0t * state.my)[ring].max() < 0.03 * b0t
    column = wave.phase_magnetic[window][:, 47:49].mean(axis=1)
    upper, lower = slice(60, 80), slice(16, 36)
    expected = np.pi * b0t / physics.PHI0_T_NM2
    assert np.polyfit(4.0 * np.arange(96)[upper], column[upper], 1)[0] == pytest.approx(-expected, rel=0.02)
    assert np.polyfit(4.0 * np.arange(96)[lower], column[lower], 1)[0] == pytest.approx(expected, rel=0.02)


def test_long_bar_along_x_has_the_analytic_phase_slope(tmp_path):
    """Bar w x L (px) magnetised along +x: dphi/dy = pi B_x t / Phi0 inside, B_x t = B0 t less the
    field of its end charges at the centre, (2 / pi) atan(w / L) B0 t, as for the bar alone in
    vacuum: its return flux spreads beyond the field (the periodic relation alone would take a
    further w L / n^2 B0 t off, the mean projected magnetisation over the field)."""
    w, length, margin = 16, 256, 128
    m = np.zeros((2, w, length, 3))
    m[..., 0] = 1.0
    state = micromagnetic.read_ovf(write_ovf(tmp_path / "bar.ovf", m, (5e-9, 5e-9, 10e-9), "txt"))
    wave = micromagnetic.exit_wave(state, margin, ms_a_per_m=MS)
    n = wave.phase.shape[0]
    assert n == length + 2 * margin
    rows = np.arange(n // 2 - w // 2 + 2, n // 2 + w // 2 - 2)
    slope = np.polyfit(5.0 * rows, wave.phase_magnetic[rows, n // 2], 1)[0]
    b_x_t = wave.b0_t * 20.0 * (1 - 2 / np.pi * np.arctan(w / length))
    assert slope == pytest.approx(np.pi * b_x_t / physics.PHI0_T_NM2, rel=0.003)  # periodic: 0.65 % low
    # Beside the bar the vacuum's slope is the bar's own stray field (1.1 % of the slope inside),
    # with no ramp of returning flux across the field (periodic: 2.3 %).
    side = wave.phase_magnetic[: margin // 2, n // 2 - 8 : n // 2 + 8].mean(axis=1)
    assert abs(np.polyfit(5.0 * np.arange(side.size), side, 1)[0]) < 0.015 * slope
    # The electrostatic phase and the absorption of the film, as the built-in textures have them.
    sigma = physics.interaction_constant(200e3)
    electrostatic = wave.phase - wave.phase_magnetic
    assert electrostatic[n // 2, n // 2] == pytest.approx(sigma * 20.0 * 20.0) and electrostatic[0, 0] == 0.0
    assert wave.amplitude[n // 2, n // 2] == pytest.approx(np.exp(-20.0 / 240.0))


def test_simulate_ovf_writes_a_campaign_that_reads_back(tmp_path):
    m, disk = vortex(n=64, radius=26.0)
    path = write_ovf(tmp_path / "vortex state.ovf", m, (5e-9, 5e-9, 10e-9), "bin4")
    out = tmp_path / "campaign"
    cli.main(["simulate", str(out), "--ovf", str(path), "--ms", str(MS), "--thickness-nm", "30", "--seed", "3"])
    rows = sheet.read_sheet(out / "series.tsv")
    assert [(r.series, r.problem, r.truth) for r in rows] == [("vortex_state", "", "vortex_state.truth.zarr")]
    assert tifffile.imread(out / "vortex_state.tif").shape == (3, 64, 64)
    truth = io.open_store(out / "vortex_state.truth.zarr").load()
    b0t = 4e-7 * np.pi * MS * 30.0
    y, x = np.mgrid[:64, :64] - 31.5
    ring = disk & (np.hypot(x, y) > 8) & (np.hypot(x, y) < 21)
    assert np.abs(truth["induction_x_tnm"].values - b0t * m[0, ..., 0])[ring].max() < 0.03 * b0t
    assert np.abs(truth["induction_y_tnm"].values - b0t * m[0, ..., 1])[ring].max() < 0.03 * b0t
    assert truth.attrs["spec"]["thickness_nm"] == 30.0 and truth.attrs["spec"]["pixel_size_nm"] == 5.0

    # Resampled to 10 nm pixels: half the window.
    cli.main(["simulate", str(tmp_path / "coarse"), "--ovf", str(path), "--ms", str(MS), "--pixel-size-nm", "10"])
    assert tifffile.imread(tmp_path / "coarse" / "vortex_state.tif").shape == (3, 32, 32)


def test_a_non_square_state_is_padded_to_a_square_window(tmp_path):
    m = np.zeros((1, 8, 20, 3))
    m[..., 1] = 1.0
    state = micromagnetic.read_ovf(write_ovf(tmp_path / "r.ovf", MS * m, (5e-9, 5e-9, 20e-9), "txt", units="A/m"))
    images, truth = micromagnetic.simulate_state(
        state, simulate.Acquisition((-1e6, 0.0, 1e6)), np.random.default_rng(0)
    )
    assert images.shape == (3, 20, 20) and truth["amplitude"].values[:6].min() == 1.0  # vacuum rows above the state


def _bad_files(tmp_path):
    scalar = write_ovf(tmp_path / "scalar.ovf", np.ones((1, 4, 4, 1)), (5e-9, 5e-9, 5e-9), "txt")
    oblong = write_ovf(tmp_path / "oblong.ovf", np.ones((1, 4, 4, 3)), (5e-9, 4e-9, 5e-9), "bin8")
    garbage = tmp_path / "notes.ovf"
    garbage.write_text("just some text\n")
    truncated = write_ovf(tmp_path / "truncated.ovf", np.ones((1, 4, 4, 3)), (5e-9, 5e-9, 5e-9), "bin4")
    truncated.write_bytes(truncated.read_bytes().replace(np.ones(6, "<f4").tobytes(), b"", 1))
    return [
        (tmp_path / "missing.ovf", "does not exist"),
        (scalar, "holds a 1-component field"),
        (oblong, "square pixels"),
        (garbage, "not an OVF file"),
        (truncated, "truncated"),
    ]


def test_bad_files_are_refused_naming_the_file(tmp_path):
    for path, message in _bad_files(tmp_path):
        with pytest.raises(InputError, match=message) as refused:
            micromagnetic.read_ovf(path)
        assert str(path) in str(refused.value)


def test_the_cli_exits_1_with_one_line_naming_the_file(tmp_path, caplog):
    unit_m = write_ovf(tmp_path / "unit.ovf", vortex(n=16, radius=6.0)[0], (5e-9, 5e-9, 5e-9), "txt")
    cases = [*_bad_files(tmp_path), (unit_m, "give its Ms in A/m")]
    for path, message in cases:
        caplog.clear()
        with pytest.raises(SystemExit) as stop:
            cli.main(["simulate", str(tmp_path / "out"), "--ovf", str(path)])
        assert stop.value.code == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and message in errors[0] and str(path) in errors[0] and "\n" not in errors[0]
    with pytest.raises(SystemExit) as stop:
        cli.main(["simulate", str(tmp_path / "out"), "--ms", "8e5"])
    assert stop.value.code == 2
