"""Synthetic Lorentz TEM campaigns with known ground truth.

Magnetic textures become magnetic phase through the Fourier relation of the physics module,
thickness maps give electrostatic phase and amplitude, and a through-focus series is formed with
the same image-formation code the reconstruction fits, then degraded the way a real acquisition
is: a defocus calibration that is off by a few percent, drift between images, and noise. As in a
microscope, the detector records a window of a larger field: the images are formed on the field
and cropped, so that features cut by the window's edge and fringes from outside it are there
(:func:`record`). Images are written as calibrated multi-page TIFF files with a series sheet, as a
microscope would leave them, and the ground truth is kept beside them for tests and benchmarks.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from phasepipe import frames, imagefiles, physics, sheet
from phasepipe.parameters import Microscope

TEXTURES = ("vortex", "skyrmions", "stripes")
PARTICLE_INNER_POTENTIAL_V = 10.0
PARTICLE_ABSORPTION_MFP_NM = 60.0  # effective, objective-aperture scattering included


@dataclass(frozen=True)
class PartnerSpec:
    """A second series of a :class:`SeriesSpec`'s field: the specimen turned over (``flip``:
    phi_m reversed, the image mirrored) or without its magnetic contrast (``reference``), seen
    rotated by ``angle_deg`` and shifted by ``shift_px`` (:mod:`phasepipe.frames`), with its own
    drift and noise (``seed``) and its own calibration (None: the series')."""

    series: str
    relation: str = "flip"
    angle_deg: float = 3.0
    shift_px: tuple[float, float] = (4.0, -3.0)
    calibration: float | None = None
    seed: int = 0
    acquired: str = ""

    def similarity(self) -> frames.Similarity:
        """Its frame in the series' (mirrored for a flip)."""
        return frames.Similarity(self.relation == "flip", self.angle_deg, 1.0, tuple(self.shift_px))


@dataclass(frozen=True)
class SeriesSpec:
    """Everything that defines one simulated through-focus series."""

    series: str
    texture: str
    size_px: int = 256
    pixel_size_nm: float = 5.0
    defocus_nominal_nm: tuple[float, ...] = (-1.6e6, 0.0, 1.6e6)
    calibration: float = 1.0  # true defocus / nominal defocus, as a miscalibrated lens gives
    defocus_jitter: float = 0.002  # relative per-image scatter of the true defocus
    noise_fraction: float = 0.05  # Gaussian intensity noise, sigma = fraction * I
    counts_per_px: float = 1000.0  # mean detector counts per pixel
    drift_px: float = 3.0  # rms drift step between consecutive images
    voltage_kv: float = Microscope.voltage_kv
    cs_mm: float = Microscope.cs_mm
    beam_divergence_mrad: float = Microscope.beam_divergence_mrad
    defocus_spread_nm: float = Microscope.defocus_spread_nm
    b0_t: float = 1.0  # saturation induction
    thickness_nm: float = 40.0
    mean_inner_potential_v: float = 20.0
    inelastic_mfp_nm: float = 120.0
    n_particles: int = 8  # non-magnetic particles per window area
    island_frac: float = 0.0  # > 0: the film is a patterned disk of this radius (fraction of the window)
    margin_px: int | None = None  # field beyond the recorded window; None: auto, 0: a periodic window
    seed: int = 0
    session: str = ""
    acquired: str = ""
    extra: dict = field(default_factory=dict)  # texture-specific settings
    partner: PartnerSpec | None = None  # a second series of the same field


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on the field, (y, x)."""
    c = (np.arange(n) - n / 2 + 0.5)[:, None]
    return c, c.T


def smooth_noise(n: int, corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic Gaussian-correlated noise with unit standard deviation."""
    qy, qx = physics.frequency_grid((n, n), 1.0)
    spectrum = np.fft.fft2(rng.standard_normal((n, n))) * np.exp(-2 * (np.pi * corr_px) ** 2 * (qx**2 + qy**2))
    noise = np.fft.ifft2(spectrum).real
    return (noise - noise.mean()) / noise.std()


def _disk(n: int, radius_px: float) -> np.ndarray:
    """A patterned island centred on an n x n field: 1 inside, 0 outside, with a sloped edge.

    Real patterned edges are sloped; a cliff steeper than about 1 rad/px would make the phase step
    ambiguous by 2 pi.
    """
    y, x = _grid(n)
    return 0.5 * (1 - np.tanh((np.hypot(y, x) - radius_px) / 4.0))


# Texture makers: magnetisation (mx, my) and the film's support on an n x n field, whose recorded
# window is ``window`` px wide in its centre; sizes are fractions of the window.


def vortex(n: int, window: int, rng: np.random.Generator, radius_frac: float = 0.36, core_px: float = 4.0):
    """A magnetic vortex in a disk: in-plane curl, vanishing at the core; support = the disk."""
    y, x = _grid(n)
    y = y + rng.uniform(-2, 2)
    x = x + rng.uniform(-2, 2)
    r = np.hypot(y, x)
    chirality = rng.choice([-1.0, 1.0])
    inplane = 1 - np.exp(-((r / core_px) ** 2))
    mx = -chirality * inplane * y / np.maximum(r, 1e-9)
    my = chirality * inplane * x / np.maximum(r, 1e-9)
    return mx, my, _disk(n, radius_frac * window)


def skyrmions(n: int, window: int, rng: np.random.Generator, cells: int = 6):
    """A Bloch skyrmion lattice (triple-q), ``cells`` lattice periods across the window."""
    y, x = _grid(n)
    b = cells * np.sqrt(3) / 2
    wavevectors = [(cells, 0), (-cells / 2, b), (-cells / 2, -b)]
    mx = np.zeros((n, n))
    my = np.zeros((n, n))
    offset = rng.uniform(0, 2 * np.pi)
    for kx, ky in wavevectors:
        # Bloch helix: rotation in the plane normal to k, i.e. in-plane part along z x k.
        k = np.hypot(kx, ky)
        arg = 2 * np.pi * (kx * x + ky * y) / window + offset
        mx += -ky / k * np.sin(arg)
        my += kx / k * np.sin(arg)
    norm = np.max(np.hypot(mx, my))
    return mx / norm, my / norm, np.ones((n, n))


def stripes(n: int, window: int, rng: np.random.Generator, periods: int = 5, wiggle: float = 0.12):
    """Stripe domains with undulating walls, ``periods`` across the window: magnetisation
    alternating along x, walls along x."""
    y, x = _grid(n)
    arg = 2 * np.pi * (periods * y / window + wiggle * np.sin(2 * np.pi * 2 * x / window + rng.uniform(0, 2 * np.pi)))
    mx = np.tanh(3 * np.sin(arg))
    return mx, np.zeros((n, n)), np.ones((n, n))


def _texture(spec: SeriesSpec, n: int, rng: np.random.Generator):
    makers = {"vortex": vortex, "skyrmions": skyrmions, "stripes": stripes}
    if spec.texture not in makers:
        raise ValueError(f"unknown texture {spec.texture!r}; choose from {', '.join(TEXTURES)}")
    return makers[spec.texture](n, spec.size_px, rng, **spec.extra)


def margin_px(spec: SeriesSpec) -> int:
    """The simulated field's margin around the recorded window (:func:`field_margin_px`); 0 when the
    spec asks for a periodic field."""
    if spec.margin_px is not None:
        return spec.margin_px
    return field_margin_px(_acquisition(spec))


def exit_wave(spec: SeriesSpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True exit wave on an n x n field (the window and its margin): (phase, amplitude, and the
    phase's magnetic part)."""
    mx, my, support = _texture(spec, n, rng)
    if spec.island_frac > 0:
        support = support * _disk(n, spec.island_frac * spec.size_px)
    # Thickness: the film (or disk), with gentle roughness.
    thickness = spec.thickness_nm * support * (1 + 0.05 * smooth_noise(n, 12.0, rng))
    # Gold fiducial particles, as used for alignment in practice: strongly absorbing, so they
    # show in focus too, and the same in under- and overfocus (unlike magnetic contrast). As
    # many per window area as the spec asks, over the whole field: some are cut by its edge.
    y, x = _grid(n)
    particles = np.zeros((n, n))
    for _ in range(int(round(spec.n_particles * (n / spec.size_px) ** 2))):
        cy, cx = rng.uniform(-n / 2, n / 2, size=2)
        dy = (y - cy + n / 2) % n - n / 2
        dx = (x - cx + n / 2) % n - n / 2
        radius = rng.uniform(1.5, 3.0)
        particles += 2 * np.sqrt(np.clip(radius**2 - dy**2 - dx**2, 0, None)) * spec.pixel_size_nm
    sigma = physics.interaction_constant(spec.voltage_kv * 1e3)
    phase_e = sigma * (spec.mean_inner_potential_v * thickness + PARTICLE_INNER_POTENTIAL_V * particles)
    phase_m = physics.magnetic_phase(
        mx, my, spec.thickness_nm * support, spec.b0_t, spec.pixel_size_nm, isolated=n > spec.size_px
    )
    amplitude = np.exp(-thickness / (2 * spec.inelastic_mfp_nm) - particles / (2 * PARTICLE_ABSORPTION_MFP_NM))
    return phase_e + phase_m, amplitude, phase_m


@dataclass(frozen=True)
class Acquisition:
    """How a series is recorded: defocus, its calibration, drift, noise, and the microscope."""

    defocus_nominal_nm: tuple[float, ...]
    calibration: float = 1.0
    defocus_jitter: float = 0.0
    noise_fraction: float = 0.05
    counts_per_px: float = 1000.0
    drift_px: float = 3.0
    pixel_size_nm: float = 5.0
    voltage_kv: float = Microscope.voltage_kv
    cs_mm: float = Microscope.cs_mm
    beam_divergence_mrad: float = Microscope.beam_divergence_mrad
    defocus_spread_nm: float = Microscope.defocus_spread_nm


def record(
    phase: np.ndarray,
    amplitude: np.ndarray,
    window: int,
    acquisition: Acquisition,
    rng: np.random.Generator,
    magnetic: np.ndarray | None = None,
) -> tuple[np.ndarray, xr.Dataset]:
    """A through-focus series of the exit wave (phase, amplitude) on a field whose centre
    ``window`` x ``window`` px the detector records: the images are formed on the whole field (the
    FFT's periodic wrap-around lands in the margin, beyond the Fresnel spread of the window) with
    the drift, then cropped, so that features cut by the window's edge and fringes from outside it
    are there, as in a microscope. Returns the images (N, window, window) float32 and the truth.

    ``magnetic``: the magnetic part of ``phase`` on the same field, when known; the truth then also
    holds ``phase_magnetic``, ``phase_electrostatic`` (the rest; each with its mean over the window
    removed) and the in-plane induction ``induction_x_tnm``, ``induction_y_tnm`` (B t, T nm).
    """
    a = acquisition
    n = phase.shape[0]
    margin = (n - window) // 2
    crop = np.s_[..., margin : margin + window, margin : margin + window]
    nominal = np.asarray(a.defocus_nominal_nm, dtype=float)
    n_img = nominal.size
    true_df = a.calibration * nominal * (1 + a.defocus_jitter * rng.standard_normal(n_img))
    steps = a.drift_px * rng.standard_normal((n_img, 2))
    shifts = np.cumsum(steps, axis=0)
    shifts -= shifts[np.argmin(np.abs(nominal))]  # drift measured relative to the in-focus image

    qy, qx = physics.frequency_grid(phase.shape, a.pixel_size_nm)
    lam = physics.wavelength_nm(a.voltage_kv * 1e3)
    transfer = physics.transfer_function(
        qx**2 + qy**2, true_df[:, None, None], lam, a.cs_mm * 1e6, a.beam_divergence_mrad * 1e-3, a.defocus_spread_nm
    )
    ramp = physics.shift_ramp(qy, qx, shifts, a.pixel_size_nm)
    clean = physics.image_intensities(amplitude * np.exp(1j * phase), transfer, ramp)[crop]
    noisy = clean * (1 + a.noise_fraction * rng.standard_normal(clean.shape))
    images = (a.counts_per_px * np.clip(noisy, 0, None)).astype(np.float32)

    true_phase = phase[crop]
    coords = {"y": np.arange(window) * a.pixel_size_nm, "x": np.arange(window) * a.pixel_size_nm}
    separated = {}
    if magnetic is not None:
        magnetic_window = magnetic[crop]
        electrostatic = true_phase - magnetic_window
        bx, by = physics.induction_from_phase(magnetic, a.pixel_size_nm)
        separated = {
            "phase_magnetic": (("y", "x"), magnetic_window - magnetic_window.mean()),
            "phase_electrostatic": (("y", "x"), electrostatic - electrostatic.mean()),
            "induction_x_tnm": (("y", "x"), bx[crop]),
            "induction_y_tnm": (("y", "x"), by[crop]),
        }
    truth = xr.Dataset(
        {
            "phase": (("y", "x"), true_phase - true_phase.mean()),
            **separated,
            "amplitude": (("y", "x"), amplitude[crop]),
            "defocus_nm": (("image",), true_df),
            "defocus_nominal_nm": (("image",), nominal),
            "shift_y_px": (("image",), shifts[:, 0]),
            "shift_x_px": (("image",), shifts[:, 1]),
        },
        coords=coords,
    )
    return images, truth


RELATIONS = ("flip", "reference")


def partner_wave(
    phase: np.ndarray, amplitude: np.ndarray, magnetic: np.ndarray, relation: str, similarity: frames.Similarity
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exit wave (phase, amplitude, magnetic part) of a partner series of the same field:
    ``flip``, the specimen turned over (electrostatic phase kept, magnetic reversed, the image
    mirrored: ``similarity.mirror`` should be set), or ``reference``, the specimen without its
    magnetic contrast (above its Curie temperature); either seen through ``similarity``
    (:mod:`phasepipe.frames`)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose from {', '.join(RELATIONS)}")
    sign = -1.0 if relation == "flip" else 0.0
    electrostatic = frames.to_partner(phase - magnetic, similarity)
    partner_magnetic = sign * frames.to_partner(magnetic, similarity)
    return electrostatic + partner_magnetic, frames.to_partner(amplitude, similarity), partner_magnetic


def field_margin_px(acquisition: Acquisition) -> int:
    """How far beyond the recorded window the field must reach: what the largest defocus carries
    into the window (its Fresnel spread, with room for a 10 % miscalibration) plus four rms drift
    steps per image, in px, a multiple of 8."""
    a = acquisition
    largest = 1.1 * max(abs(d) for d in a.defocus_nominal_nm)
    spread = physics.fresnel_spread_px(a.voltage_kv * 1e3, a.beam_divergence_mrad * 1e-3, largest, a.pixel_size_nm)
    drift = 4 * a.drift_px * np.sqrt(len(a.defocus_nominal_nm))
    return 8 * int(np.ceil((spread + drift) / 8))


def _acquisition(spec: SeriesSpec) -> Acquisition:
    fields = {f.name for f in dataclasses.fields(Acquisition)}
    return Acquisition(**{k: v for k, v in asdict(spec).items() if k in fields})


def simulate_series(spec: SeriesSpec) -> tuple[np.ndarray, xr.Dataset]:
    """Simulate one series: returns the recorded images (N, y, x) float32 and the ground truth."""
    rng = np.random.default_rng(spec.seed)
    n = spec.size_px + 2 * margin_px(spec)
    phase, amplitude, magnetic = exit_wave(spec, rng, n)
    images, truth = record(phase, amplitude, spec.size_px, _acquisition(spec), rng, magnetic)
    truth.attrs["spec"] = _spec_attrs(spec)
    return images, truth


def simulate_partner(spec: SeriesSpec) -> tuple[np.ndarray, xr.Dataset]:
    """Simulate the series ``spec.partner`` describes, of the same field as ``spec``'s."""
    partner = spec.partner
    rng = np.random.default_rng(spec.seed)
    phase, amplitude, magnetic = exit_wave(spec, rng, spec.size_px + 2 * margin_px(spec))
    wave = partner_wave(phase, amplitude, magnetic, partner.relation, partner.similarity())
    calibration = spec.calibration if partner.calibration is None else partner.calibration
    acquisition = dataclasses.replace(_acquisition(spec), calibration=calibration)
    images, truth = record(*wave[:2], spec.size_px, acquisition, np.random.default_rng(partner.seed), wave[2])
    truth.attrs["spec"] = _spec_attrs(spec)
    return images, truth


def _spec_attrs(spec: SeriesSpec) -> dict:
    attrs = asdict(spec)
    attrs["defocus_nominal_nm"] = list(spec.defocus_nominal_nm)
    return attrs


SHEET_COLUMNS = ("series", "files", "defocus_nm", "session", "acquired", "truth", "partner", "relation")


def write_campaign(out_dir: Path, specs: list[SeriesSpec]) -> Path:
    """Simulate every series, write images, truth stores and a series sheet; returns the sheet."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        images, truth = simulate_series(spec)
        row = write_series(out_dir, spec.series, images, truth, spec.pixel_size_nm, spec.defocus_nominal_nm)
        rows.append({**row, "session": spec.session, "acquired": spec.acquired})
        if spec.partner is not None:
            partner = spec.partner
            images, truth = simulate_partner(spec)
            row = write_series(out_dir, partner.series, images, truth, spec.pixel_size_nm, spec.defocus_nominal_nm)
            rows.append({**row, "session": spec.session, "acquired": partner.acquired})
            name_partners(rows[-2], rows[-1], partner.relation)
    return write_sheet(out_dir, rows)


def name_partners(row: dict[str, str], partner_row: dict[str, str], relation: str) -> None:
    """Fill the sheet rows' ``partner`` and ``relation`` of a series and its partner: a flip pair
    names each other; a reference is named by the series it serves, and names no one."""
    row.update(partner=partner_row["series"], relation=relation)
    if relation == "flip":
        partner_row.update(partner=row["series"], relation="flip")


def write_series(
    out_dir: Path,
    series: str,
    images: np.ndarray,
    truth: xr.Dataset,
    pixel_size_nm: float,
    defocus_nominal_nm: tuple[float, ...],
    session: str = "",
    acquired: str = "",
) -> dict[str, str]:
    """Write one series into ``out_dir``: its images as ``<series>.tif`` (calibrated TIFF stack)
    and its truth as ``<series>.truth.zarr``; returns its row of the series sheet (:func:`write_sheet`)."""
    imagefiles.write_tiff(out_dir / f"{series}.tif", images, pixel_size_nm)
    truth.to_zarr(out_dir / f"{series}.truth.zarr", mode="w", zarr_format=3, consolidated=False)
    return {
        "series": series,
        "files": f"{series}.tif",
        "defocus_nm": ",".join(f"{d:g}" for d in defocus_nominal_nm),
        "session": session,
        "acquired": acquired,
        "truth": f"{series}.truth.zarr",
    }


def write_sheet(out_dir: Path, rows: list[dict[str, str]]) -> Path:
    """Write the series sheet ``out_dir/series.tsv`` (columns :data:`SHEET_COLUMNS`) of these rows."""
    sheet = Path(out_dir) / "series.tsv"
    with open(sheet, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return sheet


def demo_campaign() -> list[SeriesSpec]:
    """The built-in demo: patterned islands of three magnetic textures, from two sessions whose
    lens calibrations are off in opposite directions (true / nominal defocus 1.04 and 0.965), with
    the specimen drifting by 3 px rms between images."""
    five = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)
    day1 = {"session": "2026-03-02", "calibration": 1.04, "defocus_nominal_nm": five}
    day2 = {"session": "2026-03-09", "calibration": 0.965, "defocus_nominal_nm": five}
    return [
        # Permalloy disk (Bs ~ 1 T): a vortex.
        SeriesSpec("s01_vortex", "vortex", seed=1, acquired="2026-03-02T10:15:00", **day1),
        # FeGe-like island (Bs ~ 0.45 T): a skyrmion lattice.
        SeriesSpec(
            "s02_skyrmions", "skyrmions", seed=2, b0_t=0.45, island_frac=0.42, acquired="2026-03-02T14:40:00", **day1
        ),
        # Stripe domains in an island of the same material.
        SeriesSpec(
            "s03_stripes", "stripes", seed=3, b0_t=0.45, island_frac=0.42, acquired="2026-03-09T09:05:00", **day2
        ),
        # A second vortex disk, larger and of a weaker ferromagnet.
        SeriesSpec(
            "s04_vortex",
            "vortex",
            seed=4,
            b0_t=0.8,
            acquired="2026-03-09T11:30:00",
            extra={"radius_frac": 0.42},
            **day2,
        ),
        # A skyrmion island imaged, then turned over (a flip pair): its rim's electrostatic step
        # (about 6 rad) dominates the total phase, and the joint fit separates phi_m from it.
        SeriesSpec(
            "s05_skyrmions",
            "skyrmions",
            seed=5,
            b0_t=0.45,
            island_frac=0.42,
            acquired="2026-03-09T14:00:00",
            partner=PartnerSpec(
                "s06_skyrmions_flipped", "flip", 3.0, (4.0, -3.0), seed=6, acquired="2026-03-09T14:40:00"
            ),
            **day2,
        ),
    ]


def _demo_series() -> tuple[str, ...]:
    return tuple(s for spec in demo_campaign() for s in (spec.series, *([spec.partner.series] if spec.partner else [])))


DEMO_SERIES = _demo_series()
# The demo's groups of related series, as the workflow reads them from a sheet (sheet.partner_groups).
DEMO_GROUPS = tuple(
    sheet.Group(spec.series, (spec.series, spec.partner.series), spec.partner.relation)
    if spec.partner.relation == "flip"
    else sheet.Group(spec.partner.series, (spec.partner.series, spec.series), "reference")
    for spec in demo_campaign()
    if spec.partner is not None
)
