"""Synthetic Lorentz TEM campaigns with known ground truth.

Magnetic textures become magnetic phase through the Fourier relation of the physics module,
thickness maps give electrostatic phase and amplitude, and a through-focus series is formed with
the same image-formation code the reconstruction fits, then degraded the way a real acquisition
is: a defocus calibration that is off by a few percent, drift between images, and noise. Images are
written as calibrated multi-page TIFF files with a series sheet, as a microscope would leave them,
and the ground truth is kept beside them for tests and benchmarks.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from phasepipe import io, physics

TEXTURES = ("vortex", "skyrmions", "stripes")
PARTICLE_INNER_POTENTIAL_V = 10.0
PARTICLE_ABSORPTION_MFP_NM = 60.0  # effective, objective-aperture scattering included


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
    voltage_kv: float = 200.0
    cs_mm: float = 1.0
    beam_divergence_mrad: float = 0.01
    defocus_spread_nm: float = 500.0
    b0_t: float = 1.0  # saturation induction
    thickness_nm: float = 40.0
    mean_inner_potential_v: float = 20.0
    inelastic_mfp_nm: float = 120.0
    n_particles: int = 8  # non-magnetic particles
    island_frac: float = 0.0  # > 0: the film is a patterned disk of this radius (fraction of the field)
    seed: int = 0
    session: str = ""
    acquired: str = ""
    extra: dict = field(default_factory=dict)  # texture-specific settings


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


def _disk(n: int, radius_frac: float) -> np.ndarray:
    """A patterned island: 1 inside, 0 outside, with a sloped edge.

    Real patterned edges are sloped; a cliff steeper than about 1 rad/px would make the phase step
    ambiguous by 2 pi.
    """
    y, x = _grid(n)
    return 0.5 * (1 - np.tanh((np.hypot(y, x) - radius_frac * n) / 4.0))


def vortex(n: int, rng: np.random.Generator, radius_frac: float = 0.36, core_px: float = 4.0):
    """A magnetic vortex in a disk: in-plane curl, vanishing at the core; support = the disk."""
    y, x = _grid(n)
    y = y + rng.uniform(-2, 2)
    x = x + rng.uniform(-2, 2)
    r = np.hypot(y, x)
    chirality = rng.choice([-1.0, 1.0])
    inplane = 1 - np.exp(-((r / core_px) ** 2))
    mx = -chirality * inplane * y / np.maximum(r, 1e-9)
    my = chirality * inplane * x / np.maximum(r, 1e-9)
    return mx, my, _disk(n, radius_frac)


def skyrmions(n: int, rng: np.random.Generator, cells: int = 6):
    """A Bloch skyrmion lattice (triple-q), with wave vectors commensurate with the grid."""
    y, x = _grid(n)
    b = int(round(cells * np.sqrt(3) / 2))
    wavevectors = [(cells, 0), (-cells / 2, b), (-cells / 2, -b)]
    mx = np.zeros((n, n))
    my = np.zeros((n, n))
    offset = rng.uniform(0, 2 * np.pi)
    for kx, ky in wavevectors:
        # Bloch helix: rotation in the plane normal to k, i.e. in-plane part along z x k.
        k = np.hypot(kx, ky)
        arg = 2 * np.pi * (kx * x + ky * y) / n + offset
        mx += -ky / k * np.sin(arg)
        my += kx / k * np.sin(arg)
    norm = np.max(np.hypot(mx, my))
    return mx / norm, my / norm, np.ones((n, n))


def stripes(n: int, rng: np.random.Generator, periods: int = 5, wiggle: float = 0.12):
    """Stripe domains with undulating walls: magnetisation alternating along x, walls along x."""
    y, x = _grid(n)
    arg = 2 * np.pi * (periods * y / n + wiggle * np.sin(2 * np.pi * 2 * x / n + rng.uniform(0, 2 * np.pi)))
    mx = np.tanh(3 * np.sin(arg))
    return mx, np.zeros((n, n)), np.ones((n, n))


def _texture(spec: SeriesSpec, rng: np.random.Generator):
    makers = {"vortex": vortex, "skyrmions": skyrmions, "stripes": stripes}
    if spec.texture not in makers:
        raise ValueError(f"unknown texture {spec.texture!r}; choose from {', '.join(TEXTURES)}")
    return makers[spec.texture](spec.size_px, rng, **spec.extra)


def exit_wave(spec: SeriesSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True exit wave: returns (psi, phase, amplitude) for the spec's texture."""
    n = spec.size_px
    mx, my, support = _texture(spec, rng)
    if spec.island_frac > 0:
        support = support * _disk(n, spec.island_frac)
    # Thickness: the film (or disk), with gentle roughness.
    thickness = spec.thickness_nm * support * (1 + 0.05 * smooth_noise(n, 12.0, rng))
    # Gold fiducial particles, as used for alignment in practice: strongly absorbing, so they
    # show in focus too, and the same in under- and overfocus (unlike magnetic contrast).
    y, x = _grid(n)
    particles = np.zeros((n, n))
    for _ in range(spec.n_particles):
        cy, cx = rng.uniform(-n / 2, n / 2, size=2)
        dy = (y - cy + n / 2) % n - n / 2
        dx = (x - cx + n / 2) % n - n / 2
        radius = rng.uniform(1.5, 3.0)
        particles += 2 * np.sqrt(np.clip(radius**2 - dy**2 - dx**2, 0, None)) * spec.pixel_size_nm
    sigma = physics.interaction_constant(spec.voltage_kv * 1e3)
    phase_e = sigma * (spec.mean_inner_potential_v * thickness + PARTICLE_INNER_POTENTIAL_V * particles)
    phase_m = physics.magnetic_phase(mx, my, spec.thickness_nm * support, spec.b0_t, spec.pixel_size_nm)
    phase = phase_e + phase_m
    amplitude = np.exp(-thickness / (2 * spec.inelastic_mfp_nm) - particles / (2 * PARTICLE_ABSORPTION_MFP_NM))
    return amplitude * np.exp(1j * phase), phase, amplitude


def simulate_series(spec: SeriesSpec) -> tuple[np.ndarray, xr.Dataset]:
    """Simulate one series: returns the recorded images (N, y, x) float32 and the ground truth."""
    rng = np.random.default_rng(spec.seed)
    psi, phase, amplitude = exit_wave(spec, rng)
    nominal = np.asarray(spec.defocus_nominal_nm, dtype=float)
    n_img = nominal.size
    true_df = spec.calibration * nominal * (1 + spec.defocus_jitter * rng.standard_normal(n_img))
    steps = spec.drift_px * rng.standard_normal((n_img, 2))
    shifts = np.cumsum(steps, axis=0)
    shifts -= shifts[np.argmin(np.abs(nominal))]  # drift measured relative to the in-focus image

    qy, qx = physics.frequency_grid(psi.shape, spec.pixel_size_nm)
    lam = physics.wavelength_nm(spec.voltage_kv * 1e3)
    transfer = physics.transfer_function(
        qx**2 + qy**2,
        true_df[:, None, None],
        lam,
        spec.cs_mm * 1e6,
        spec.beam_divergence_mrad * 1e-3,
        spec.defocus_spread_nm,
    )
    ramp = physics.shift_ramp(qy, qx, shifts, spec.pixel_size_nm)
    clean = physics.image_intensities(psi, transfer, ramp)
    noisy = clean * (1 + spec.noise_fraction * rng.standard_normal(clean.shape))
    images = (spec.counts_per_px * np.clip(noisy, 0, None)).astype(np.float32)

    coords = {"y": np.arange(spec.size_px) * spec.pixel_size_nm, "x": np.arange(spec.size_px) * spec.pixel_size_nm}
    truth = xr.Dataset(
        {
            "phase": (("y", "x"), phase - phase.mean()),
            "amplitude": (("y", "x"), amplitude),
            "defocus_nm": (("image",), true_df),
            "defocus_nominal_nm": (("image",), nominal),
            "shift_y_px": (("image",), shifts[:, 0]),
            "shift_x_px": (("image",), shifts[:, 1]),
        },
        coords=coords,
        attrs={"spec": _spec_attrs(spec)},
    )
    return images, truth


def _spec_attrs(spec: SeriesSpec) -> dict:
    attrs = asdict(spec)
    attrs["defocus_nominal_nm"] = list(spec.defocus_nominal_nm)
    return attrs


SHEET_COLUMNS = ("series", "files", "defocus_nm", "session", "acquired", "truth")


def write_campaign(out_dir: Path, specs: list[SeriesSpec]) -> Path:
    """Simulate every series, write images, truth stores and a series sheet; returns the sheet."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        images, truth = simulate_series(spec)
        io.write_tiff(out_dir / f"{spec.series}.tif", images, spec.pixel_size_nm)
        truth.to_zarr(out_dir / f"{spec.series}.truth.zarr", mode="w", zarr_format=3, consolidated=False)
        rows.append(
            {
                "series": spec.series,
                "files": f"{spec.series}.tif",
                "defocus_nm": ",".join(f"{d:g}" for d in spec.defocus_nominal_nm),
                "session": spec.session,
                "acquired": spec.acquired,
                "truth": f"{spec.series}.truth.zarr",
            }
        )
    sheet = out_dir / "series.tsv"
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
    ]


DEMO_SERIES = tuple(spec.series for spec in demo_campaign())
