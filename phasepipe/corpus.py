"""A validation corpus: specimens of many kinds, each recorded through a window of a larger field.

Defaults are tuned on the tuning families and judged on the held-out ones, which nothing was
tuned on (docs/physics.md, "Validation"):

- tuning: ``islands`` (the project's own magnetic textures: vortex disks, skyrmion and stripe
  islands, skyrmion films, with particles; ``Case.particles`` False: without, one material),
  ``weak`` (weak smooth phase and absorption),
  ``images`` (standard test images bundled with scikit-image, used as phase maps of a few rad);
- held out: ``litho`` (sharp-edged lithographic patterns: letters, bars, rings and polygons with a
  mean inner potential), ``elements`` (patterned magnetic elements in micromagnetic-like states,
  bars magnetised along their length, vortex disks, two-domain plates, each with its
  electrostatic rim, scattered over a field the window cuts), ``wraps`` (strong phase of thick
  rounded bodies, tens of rad, wrapping many times).

Every case is one family's specimen (seeded) on the grid {3, 5 images} x {+-0.8, +-1.6 mm} x
{5, 10 % noise}, with drift of 1-4 px rms between images, the nominal defocus off by up to +-6 %
(a common calibration, no per-image scatter), 5 nm pixels, 200 kV, Cs 1 mm, theta_c 0.01 mrad,
Delta 500 nm.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from phasepipe import physics, simulate, yardstick

TUNING = ("islands", "weak", "images")
HELD_OUT = ("litho", "elements", "wraps")
FAMILIES = TUNING + HELD_OUT
IMAGES = ("camera", "moon", "coins", "astronaut", "chelsea", "coffee", "horse", "clock", "brick", "gravel", "rocket")
PIXEL_NM = 5.0
OCTAVES = 6  # of spatial frequency, Nyquist down, in the per-band error
SIGMA_200KV = physics.interaction_constant(200e3)  # rad / (V nm)


@dataclass(frozen=True)
class Case:
    """One corpus series: a family's specimen (by seed) and how it is recorded."""

    family: str
    seed: int
    size_px: int = 256
    n_images: int = 3
    defocus_mm: float = 1.6
    noise: float = 0.1
    particles: bool = True  # False: the islands without their gold particles (one material)

    @property
    def name(self) -> str:
        noise = round(100 * self.noise)
        bare = "" if self.particles else "-bare"
        return f"{self.family}{bare}-{self.n_images}x{self.defocus_mm:g}mm-{noise}%-{self.size_px}-s{self.seed}"

    def acquisition(self) -> simulate.Acquisition:
        """Nominal defocus, its true calibration and the drift, drawn from the case's seed."""
        rng = np.random.default_rng([self.seed, self.n_images, round(self.defocus_mm * 10), round(self.noise * 100)])
        d = self.defocus_mm * 1e6
        nominal = (-d, 0.0, d) if self.n_images == 3 else (-d, -d / 2, 0.0, d / 2, d)
        return simulate.Acquisition(
            defocus_nominal_nm=nominal,
            calibration=float(1 + rng.uniform(-0.06, 0.06)),
            noise_fraction=self.noise,
            drift_px=float(rng.uniform(1.0, 4.0)),
            pixel_size_nm=PIXEL_NM,
        )


def cases(families=FAMILIES, sizes=(256,), seeds=(0,)) -> list[Case]:
    """Every case of the grid for these families, sizes and seeds."""
    grid = itertools.product(families, seeds, sizes, (3, 5), (0.8, 1.6), (0.05, 0.1))
    return [Case(f, seed, size, n, d, noise) for f, seed, size, n, d, noise in grid]


def specimen(
    family: str, n: int, window: int, rng: np.random.Generator, particles: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(phase, amplitude, the phase's magnetic part or None for a specimen with none) of a
    family's specimen on an n x n field whose centre window x window px are recorded; sizes scale
    with the window. ``particles``: False leaves out the islands' gold particles (the other
    families hold none), so that the specimen is one material."""
    makers = {
        "islands": functools.partial(_islands, particles=particles),
        "weak": _weak,
        "images": _images,
        "litho": _litho,
        "elements": _elements,
        "wraps": _wraps,
    }
    if family not in makers:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return makers[family](n, window, rng)


def field(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.random.Generator]:
    """(phase, amplitude, magnetic phase or None) of a case's specimen on the whole field its
    window is cut from, and the case's generator, drawn on for the recording next."""
    rng = np.random.default_rng([case.seed, FAMILIES.index(case.family)])
    n = case.size_px + 2 * simulate.field_margin_px(case.acquisition())
    return (*specimen(case.family, n, case.size_px, rng, case.particles), rng)


def simulate_case(case: Case) -> tuple[np.ndarray, object]:
    """The recorded images (N, size, size) float32 and the truth of a case."""
    phase, amplitude, magnetic, rng = field(case)
    return simulate.record(phase, amplitude, case.size_px, case.acquisition(), rng, magnetic)


def simulate_pair(case: Case, relation: str) -> tuple[tuple[np.ndarray, object], tuple[np.ndarray, object], object]:
    """A case and its partner series of the same field (``flip``: the specimen turned over and
    mirrored; ``reference``: without its magnetic contrast), seen rotated by a few degrees and
    shifted by a few px, with its own calibration, drift and noise: ((images, truth) of the case,
    (images, truth) of the partner, the partner's :class:`~phasepipe.frames.Similarity`)."""
    from phasepipe import frames

    acquisition = case.acquisition()
    phase, amplitude, magnetic, rng = field(case)
    if magnetic is None:
        raise ValueError(f"family {case.family!r} holds no magnetic phase to separate")
    anchor = simulate.record(phase, amplitude, case.size_px, acquisition, rng, magnetic)
    draw = np.random.default_rng([case.seed, FAMILIES.index(case.family), simulate.RELATIONS.index(relation), 7])
    similarity = frames.Similarity(
        relation == "flip", float(draw.uniform(-5, 5)), 1.0, tuple(draw.uniform(-6, 6, 2).round(2).tolist())
    )
    partner_acquisition = simulate.Acquisition(
        **{
            **vars(acquisition),
            "calibration": float(1 + draw.uniform(-0.06, 0.06)),
            "drift_px": float(draw.uniform(1.0, 4.0)),
        }
    )
    partner_phase, partner_amplitude, partner_magnetic = simulate.partner_wave(
        phase, amplitude, magnetic, relation, similarity
    )
    partner = simulate.record(
        partner_phase, partner_amplitude, case.size_px, partner_acquisition, draw, partner_magnetic
    )
    return anchor, partner, similarity


# --- tuning families -----------------------------------------------------------------------------


def _islands(n: int, window: int, rng: np.random.Generator, particles: bool = True):
    """One of the project's own textures, as the demo makes them (simulate.exit_wave), with its
    gold particles or without them."""
    kind = int(rng.integers(4))
    spec = [
        simulate.SeriesSpec("c", "vortex", size_px=window, extra={"radius_frac": rng.uniform(0.3, 0.42)}),
        simulate.SeriesSpec("c", "skyrmions", size_px=window, b0_t=0.45, island_frac=rng.uniform(0.35, 0.45)),
        simulate.SeriesSpec("c", "stripes", size_px=window, b0_t=0.45, island_frac=rng.uniform(0.35, 0.45)),
        simulate.SeriesSpec("c", "skyrmions", size_px=window, b0_t=0.45),  # a film the window cuts
    ][kind]
    if not particles:
        spec = dataclasses.replace(spec, n_particles=0)
    return simulate.exit_wave(spec, rng, n)


def _weak(n: int, window: int, rng: np.random.Generator):
    """Weak, smooth phase (0.2-0.5 rad rms) with a little absorption that follows it."""
    corr = rng.uniform(3.0, 12.0) * window / 256
    phase = rng.uniform(0.2, 0.5) * simulate.smooth_noise(n, corr, rng)
    amplitude = np.exp(-0.05 * (phase - phase.min()))
    return phase, amplitude, None


def _images(n: int, window: int, rng: np.random.Generator):
    """A scikit-image test image (bundled with it, never fetched) as a phase map of 1.5-3 rad."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    image = getattr(skimage.data, IMAGES[int(rng.integers(len(IMAGES)))])()
    image = rgb2gray(image[..., :3]) if image.ndim == 3 else image.astype(float)
    side = min(image.shape)
    y0, x0 = (rng.integers(0, s - side + 1) for s in image.shape)
    square = image[y0 : y0 + side, x0 : x0 + side]
    # The window sees the image at about its own resolution; the margin sees its mirror.
    field = resize(square, (window, window), anti_aliasing=True)
    pad = (n - window) // 2
    field = np.pad(field, ((pad, n - window - pad), (pad, n - window - pad)), mode="reflect")
    field = (field - field.min()) / np.ptp(field)
    phase = rng.uniform(1.5, 3.0) * ndimage.gaussian_filter(field, 0.7)
    return phase, np.exp(-0.1 * field), None


# --- held-out families ---------------------------------------------------------------------------


def _polygon_mask(n: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros((n, n))
    rr, cc = polygon(ys, xs, (n, n))
    mask[rr, cc] = 1
    return mask


def _letters(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """A few words in a bold font at random places and angles (matplotlib's own font)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(n / 100, n / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    for _ in range(int(rng.integers(2, 4))):
        word = "".join(rng.choice(list("ABEFHKLMNPRTXZ3478"), size=int(rng.integers(2, 5))))
        fig.text(
            rng.uniform(0.05, 0.7),
            rng.uniform(0.05, 0.9),
            word,
            fontsize=rng.uniform(0.10, 0.18) * window * 0.72,
            fontweight="bold",
            rotation=rng.uniform(-40, 40),
        )
    canvas.draw()
    return (np.asarray(canvas.buffer_rgba())[:n, :n, 0] < 128).astype(float)


def _litho(n: int, window: int, rng: np.random.Generator):
    """Sharp-edged lithographic patterns of a few heights: letters, bars, rings, polygons, disks."""
    y, x = np.mgrid[:n, :n].astype(float)
    height = np.zeros((n, n))
    for _ in range(int(rng.integers(14, 22) * (n / window) ** 2)):
        cy, cx = rng.uniform(0, n, 2)
        size = rng.uniform(0.04, 0.12) * window
        kind = int(rng.integers(4))
        if kind == 0:  # bar
            angle = rng.uniform(0, np.pi)
            u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
            v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
            mask = ((np.abs(u) < size) & (np.abs(v) < 0.2 * size)).astype(float)
        elif kind == 1:  # ring
            r = np.hypot(y - cy, x - cx)
            mask = ((r < size) & (r > 0.6 * size)).astype(float)
        elif kind == 2:  # polygon
            k = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            radii = size * rng.uniform(0.6, 1.0, k)
            mask = _polygon_mask(n, cy + radii * np.sin(angles), cx + radii * np.cos(angles))
        else:  # disk
            mask = (np.hypot(y - cy, x - cx) < 0.7 * size).astype(float)
        height = np.maximum(height, rng.uniform(0.5, 1.0) * mask)
    height = np.maximum(height, rng.uniform(0.5, 1.0) * _letters(n, window, rng))
    height = ndimage.gaussian_filter(height, 0.7)  # a lithographic edge spans a pixel or so
    phase = rng.uniform(1.0, 2.5) * height  # sigma V0 t of the resist or metal
    return phase, np.exp(-0.15 * height), None


def _elements(n: int, window: int, rng: np.random.Generator):
    """Patterned magnetic elements (permalloy-like, 20 nm thick, 1 T) in the states their shapes
    favour, each with the electrostatic phase of its thickness (about 3 rad), scattered so that
    the window cuts some of them."""
    y, x = np.mgrid[:n, :n].astype(float)
    thickness_nm = 20.0
    support = np.zeros((n, n))
    mx = np.zeros((n, n))
    my = np.zeros((n, n))
    for _ in range(int(rng.integers(6, 10) * (n / window) ** 2)):
        cy, cx = rng.uniform(0, n, 2)
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        kind = int(rng.integers(3))
        if kind == 0:  # a bar magnetised along its length
            length, width = rng.uniform(0.15, 0.35) * window, rng.uniform(0.04, 0.09) * window
            shape = 0.25 * (1 - np.tanh((np.abs(u) - length) / 1.5)) * (1 - np.tanh((np.abs(v) - width) / 1.5))
            direction = rng.choice([-1.0, 1.0])
            mu, mv = direction * np.ones_like(u), np.zeros_like(u)
        elif kind == 1:  # a disk in the vortex state
            radius = rng.uniform(0.06, 0.14) * window
            r = np.hypot(u, v)
            shape = 0.5 * (1 - np.tanh((r - radius) / 1.5))
            core = 1 - np.exp(-((r / 3.0) ** 2))
            chirality = rng.choice([-1.0, 1.0])
            mu, mv = -chirality * core * v / np.maximum(r, 1e-9), chirality * core * u / np.maximum(r, 1e-9)
        else:  # a plate of two antiparallel domains and the wall between them
            length, width = rng.uniform(0.1, 0.2) * window, rng.uniform(0.06, 0.12) * window
            shape = 0.25 * (1 - np.tanh((np.abs(u) - length) / 1.5)) * (1 - np.tanh((np.abs(v) - width) / 1.5))
            mu, mv = np.tanh(v / 3.0), np.zeros_like(u)
        new = shape > support
        support = np.where(new, shape, support)
        mx = np.where(new, mu * np.cos(angle) - mv * np.sin(angle), mx)
        my = np.where(new, mu * np.sin(angle) + mv * np.cos(angle), my)
    thickness = thickness_nm * support
    phase_m = physics.magnetic_phase(mx * support, my * support, thickness, 1.0, PIXEL_NM, isolated=True)
    phase_e = SIGMA_200KV * rng.uniform(18.0, 24.0) * thickness
    return phase_e + phase_m, np.exp(-thickness / (2 * 120.0)), phase_m


def _wraps(n: int, window: int, rng: np.random.Generator):
    """Strong phase, tens of rad that wrap many times: thick rounded bodies, gentle enough (below
    about 1 rad per px) that the images sample them. (A wedge's uniform gradient would be a beam
    tilt, which no through-focus series tells from drift in proportion to defocus.)"""
    y, x = np.mgrid[:n, :n].astype(float)
    phase = np.zeros((n, n))
    for _ in range(int(rng.integers(3, 6) * (n / window) ** 2)):
        cy, cx = rng.uniform(0, n, 2)
        radius = rng.uniform(0.08, 0.2) * window
        # cos^2 profile: steepest, peak pi / (2 radius), at 0.5-0.8 rad per px
        peak = rng.uniform(0.3, 0.5) * radius
        r = np.hypot(y - cy, x - cx) / radius
        phase += peak * np.where(r < 1, np.cos(np.pi * r / 2) ** 2, 0.0)
    return phase, np.exp(-0.01 * (phase - phase.min())), None


# --- running a case ------------------------------------------------------------------------------


def run_case(case: Case, settings=None, plain_iterations: int = 0) -> dict:
    """One case as a user's series goes through the workflow (align, then the engine), with TIE
    and, if ``plain_iterations``, the plain reference fit on the same aligned images.

    Returns the case and, for each method, acc against the truth (and plane-free:
    :func:`metrics.plane_free_accuracy`), the calibration's relative
    error (fitted / true - 1), the align stage's and the engine's drift error (RMS over images, px,
    relative to the reference image), its stated std of
    the calibration, times, and the phase error per octave; the same figures of
    :func:`yardstick.linear_estimate` (``linear``: what the images carry), the calibration's std
    their linear part carries (:func:`yardstick.calibration_information`), and the transfer per
    octave.
    """
    import time

    from phasepipe import align, metrics, optimise, parameters, plain, reconstruct, tie

    images, truth = simulate_case(case)
    acquisition = case.acquisition()
    nominal = np.asarray(acquisition.defocus_nominal_nm)
    registration = align.series_registration(images, nominal)
    aligned = align.apply_registration(images, registration)
    microscope = parameters.Microscope()
    settings = settings or optimise.Settings()
    t0 = time.perf_counter()
    result = reconstruct.reconstruct(aligned, nominal, PIXEL_NM, microscope, settings)
    wall = time.perf_counter() - t0
    true_phase = truth["phase"].values
    defocused = nominal != 0
    scale = float(np.mean(result.values["defocus_nm"][defocused] / nominal[defocused]))
    scale_std = float(np.median(result.stds["defocus_nm"][defocused] / np.abs(nominal[defocused])))
    drift = reconstruct.total_drift(registration.shift_px, result, nominal)
    true_drift = np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1)
    true_drift = true_drift - true_drift[int(np.argmin(np.abs(nominal)))]

    def rms_px(shifts: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum((shifts - true_drift) ** 2, axis=1))))

    tie_map = tie.tie_phase(aligned, nominal, PIXEL_NM, microscope.voltage_kv * 1e3)
    bands = metrics.octave_bands(true_phase.shape, PIXEL_NM, OCTAVES)
    row = {
        **{k: getattr(case, k) for k in ("family", "seed", "size_px", "n_images", "defocus_mm", "noise")},
        "case": case.name,
        "calibration": acquisition.calibration,
        "acc_ad": metrics.phase_accuracy(result.phase, true_phase),
        "acc_tie": metrics.phase_accuracy(tie_map, true_phase),
        "acc_free_ad": metrics.plane_free_accuracy(result.phase, true_phase),
        "acc_free_tie": metrics.plane_free_accuracy(tie_map, true_phase),
        "cal_err_ad": scale / acquisition.calibration - 1,
        "cal_std_ad": scale_std,
        "registration_err_px": rms_px(registration.shift_px),
        "drift_err_px": rms_px(drift),
        "t_fit": result.seconds,
        "t_uncertainty": wall - result.seconds,
        "iterations": result.iterations,
        "band_ad": metrics.band_errors(result.phase, true_phase, PIXEL_NM, OCTAVES),
        "band_tie": metrics.band_errors(tie_map, true_phase, PIXEL_NM, OCTAVES),
        "band_transfer": yardstick.phase_transfer(acquisition, truth["defocus_nm"].values, true_phase.shape, bands),
    }
    linear = yardstick.linear_estimate(acquisition, field(case)[0], case.size_px)
    row.update(
        acc_linear=metrics.phase_accuracy(linear, true_phase),
        acc_free_linear=metrics.plane_free_accuracy(linear, true_phase),
        band_linear=metrics.band_errors(linear, true_phase, PIXEL_NM, OCTAVES),
        cal_std_linear=yardstick.calibration_information(
            acquisition, true_phase, truth["amplitude"].values, truth["defocus_nm"].values
        ),
    )
    if plain_iterations:
        reference = plain.plain_fit(aligned, nominal, PIXEL_NM, microscope, plain_iterations)
        row.update(
            acc_plain=metrics.phase_accuracy(reference.phase, true_phase),
            acc_free_plain=metrics.plane_free_accuracy(reference.phase, true_phase),
            cal_err_plain=reference.calibration / acquisition.calibration - 1,
            t_plain=reference.seconds,
            band_plain=metrics.band_errors(reference.phase, true_phase, PIXEL_NM, OCTAVES),
        )
    return row
