"""Magnetic and electrostatic phase apart, by one fit of related series of the same area.

A flip pair (the specimen turned over: phi_e kept, phi_m reversed, the image mirrored) or a
reference group (a series in which the specimen holds no magnetic contrast, and the series it
serves) shares the specimen's electrostatic phase phi_e and amplitude; the magnetic phase phi_m
is shared by a flip pair with opposite signs, and is each served series' own in a reference
group. :func:`separate` fits them jointly on the first member's (the anchor's) canvas: every
member keeps its own defocus calibration, drift and coherence (a
:class:`~phasepipe.parameters.Parameters` of its own, whose phase the shared maps replace),
and every other member sees the shared maps through its :class:`~phasepipe.frames.Similarity`,
found by :func:`register` and refined inside the fit. Each member's maps are returned in its
own frame and sign (docs/physics.md, "Magnetic and electrostatic phase").
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from phasepipe import frames, gauge
from phasepipe.fused import total_variation
from phasepipe.model import ForwardModel, misfit_per_image
from phasepipe.optimise import FitDiverged, Settings
from phasepipe.parameters import Microscope, Parameters, output_values
from phasepipe.reconstruct import canvas_margin_px

log = logging.getLogger(__name__)

# Role of a member: the sign of the magnetic phase it sees, and whether its image is mirrored.
ROLES = {"magnetic": (1.0, False), "flip": (-1.0, True), "reference": (0.0, False)}
ITERATIONS = 600
RATES = {"maps": 0.02, "log_amplitude": 0.005, "angle_deg": 0.005, "log_scale": 1e-4, "shift_px": 0.01}
ANGLE_STEP_DEG = 2.0  # the registration's search step, before refining
REGISTRATION_SMOOTHING_PX = 1.5


@dataclass(frozen=True)
class Member:
    """One series of a group: its aligned images, nominal defocus, microscope and role
    (:data:`ROLES`; the anchor, first, is ``magnetic`` in a flip pair and ``reference`` in a
    reference group)."""

    series: str
    images: np.ndarray
    defocus_nominal_nm: np.ndarray
    microscope: Microscope
    role: str


@dataclass
class Separated:
    """One member's result in its own frame and sign: total, magnetic and electrostatic phase (rad),
    amplitude, its registered outputs (parameters.outputs) and its frame in the anchor's."""

    series: str
    phase: np.ndarray
    phase_magnetic: np.ndarray
    phase_electrostatic: np.ndarray
    amplitude: np.ndarray
    values: dict
    similarity: frames.Similarity
    seconds: float


def magnetic_maps(members: list[Member]) -> list[int | None]:
    """Which magnetic map each member sees: a flip pair shares one; in a reference group each
    magnetic member has its own; a reference none."""
    if any(m.role == "flip" for m in members):
        return [0 for _ in members]
    maps, index = [], 0
    for m in members:
        maps.append(None if m.role == "reference" else index)
        index += m.role != "reference"
    return maps


def _normalised(a: np.ndarray) -> np.ndarray:
    # What registers is structure: neither the field's slope nor a fitted map's pixel noise.
    a = ndimage.gaussian_filter(a, REGISTRATION_SMOOTHING_PX) - ndimage.gaussian_filter(a, 16)
    return (a - a.mean()) / (a.std() + 1e-12)


def register(anchor_phase: np.ndarray, partner_phase: np.ndarray, mirror: bool) -> tuple[frames.Similarity, float]:
    """The partner's frame in the anchor's, from the two series' own phase maps (the
    electrostatic phase both share dominates them): every rotation in ``ANGLE_STEP_DEG`` steps with
    its shift by phase correlation, the best then refined by least squares. Returns the similarity
    and its correlation (1: identical structure, near 0: nothing in common)."""
    anchor = _normalised(anchor_phase)
    partner = _normalised(partner_phase)
    best = (-np.inf, 0.0, np.zeros(2))
    for angle in np.arange(-180.0, 180.0, ANGLE_STEP_DEG):
        seen = frames.to_partner(anchor, frames.Similarity(mirror, angle), partner.shape, order=1)
        shift, _, _ = phase_cross_correlation(partner, seen, upsample_factor=4, normalization=None)
        moved = ndimage.shift(seen, shift, order=1, mode="nearest")
        score = float(np.mean(moved * partner))
        if score > best[0]:
            best = (score, angle, shift)
    _, angle, shift = best
    # The partner's o shows the turned anchor at o - shift, so t = -A shift.
    start = frames.Similarity(mirror, angle, 1.0, tuple(-frames.linear_part(mirror, angle, 1.0) @ shift))
    return _refine_registration(anchor, partner, start)


def _refine_registration(
    anchor: np.ndarray, partner: np.ndarray, start: frames.Similarity
) -> tuple[frames.Similarity, float]:
    angle = torch.tensor(start.angle_deg, dtype=torch.float64, requires_grad=True)
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(start.shift_px, dtype=torch.float64, requires_grad=True)
    source = torch.as_tensor(anchor)[None]
    target = torch.as_tensor(partner)
    inner = np.s_[8:-8, 8:-8]
    optimiser = torch.optim.LBFGS([angle, log_scale, shift], max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        grid = frames.sampling_grid(anchor.shape, partner.shape, start.mirror, angle, log_scale.exp(), shift)
        loss = torch.mean((frames.sample(source, grid)[0] - target)[inner] ** 2)
        loss.backward()
        return loss

    loss = float(optimiser.step(closure).detach())
    with torch.no_grad():
        similarity = frames.Similarity(start.mirror, float(angle), float(log_scale.exp()), tuple(shift.tolist()))
    return similarity, 1 - loss / 2


# Below this correlation, or beyond this change of magnification, two series' maps share no
# structure to register (unrelated maps reach 0.3 with the scale free; a partner's 0.4-0.99).
MIN_CORRELATION = 0.35
MAX_SCALE_CHANGE = 0.05


class RegistrationError(ValueError):
    """A partner's maps share too little with the anchor's to be registered (no overlap)."""


def register_members(members: list[Member], starts: list[dict]) -> list[frames.Similarity]:
    """Every member's frame in the anchor's (the anchor's the identity), registered on the
    in-focus images (their contrast, mostly absorption, is what every member sees alike: the
    fitted amplitude is noisier), else, where those correlate too little (a specimen that absorbs
    nothing), on the fitted phases (which a flip or a reference changes by the magnetic part,
    biasing the frame by a fraction of a degree and a px). Raises :class:`RegistrationError`
    naming the series whose maps do not correlate."""
    found = [frames.Similarity()]
    for member, start in zip(members[1:], starts[1:], strict=True):
        mirror = ROLES[member.role][1]
        best = register(_in_focus(members[0]), _in_focus(member), mirror)
        if not _registered(best):
            best = register(starts[0]["phase"], start["phase"], mirror)
        if not _registered(best):
            raise RegistrationError(
                f"series {member.series} cannot be registered onto {members[0].series}: their maps correlate by "
                f"{best[1]:.2f} at best, at a magnification of {best[0].scale:.3f} (no common area?)"
            )
        log.info("series %s in %s's frame: %s (correlation %.2f)", member.series, members[0].series, best[0], best[1])
        found.append(best[0])
    return found


def _registered(result: tuple[frames.Similarity, float]) -> bool:
    return result[1] >= MIN_CORRELATION and abs(result[0].scale - 1) <= MAX_SCALE_CHANGE


def _in_focus(member: Member) -> np.ndarray:
    """-ln of the member's image nearest focus (mean-normalised): its absorption, roughly."""
    image = np.asarray(member.images[int(np.argmin(np.abs(member.defocus_nominal_nm)))], np.float64)
    return -np.log(np.clip(image / image.mean(), 1e-3, None))


class _Frame(torch.nn.Module):
    """A member's similarity as refinable tensors."""

    def __init__(self, similarity: frames.Similarity):
        super().__init__()
        self.mirror = similarity.mirror
        self.angle_deg = torch.nn.Parameter(torch.tensor(similarity.angle_deg, dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(similarity.scale), dtype=torch.float64))
        self.shift_px = torch.nn.Parameter(torch.tensor(similarity.shift_px, dtype=torch.float64))

    def grid(self, anchor_shape, partner_shape) -> torch.Tensor:
        return frames.sampling_grid(
            anchor_shape, partner_shape, self.mirror, self.angle_deg, self.log_scale.exp(), self.shift_px
        )

    def similarity(self) -> frames.Similarity:
        with torch.no_grad():
            return frames.Similarity(
                self.mirror, float(self.angle_deg), float(self.log_scale.exp()), tuple(self.shift_px.tolist())
            )


def _canvas(window: np.ndarray, margin: int) -> np.ndarray:
    return np.pad(window, margin, mode="edge")


def separate(
    members: list[Member],
    starts: list[dict],
    similarities: list[frames.Similarity],
    pixel_size_nm: float,
    settings: Settings,
    tv_weight: float,
    iterations: int = ITERATIONS,
) -> list[Separated]:
    """Fit the group's shared maps and every member's own parameters jointly.

    ``starts``: each member's own reconstruction (``phase``, ``amplitude`` windows, the
    calibration factor ``calibration`` and ``shifts_px``, the drift it refined beyond the aligned
    images'), from which the fit starts: phi_e and phi_m from
    the members' phases brought into the anchor's frame (sum and difference of a flip pair, the
    reference's phase and the differences to it). ``similarities``: each member's frame in the
    anchor's (the anchor's the identity). The loss is the mean of the members' misfits plus
    ``tv_weight`` times the total variation of phi_e and of each phi_m.
    """
    t0 = time.perf_counter()
    maps_of = magnetic_maps(members)
    anchor = members[0]
    window = anchor.images.shape[1:]
    in_anchor = [starts[0]["phase"]] + [
        frames.to_anchor(s["phase"], sim, window) for s, sim in zip(starts[1:], similarities[1:], strict=True)
    ]
    electrostatic, magnetic = _start_maps(members, maps_of, in_anchor)
    margin_a = canvas_margin_px(anchor.defocus_nominal_nm, pixel_size_nm, anchor.microscope)
    phase_e = torch.nn.Parameter(torch.as_tensor(_canvas(electrostatic, margin_a), dtype=torch.float32))
    phase_m = torch.nn.Parameter(
        torch.as_tensor(np.stack([_canvas(m, margin_a) for m in magnetic]), dtype=torch.float32)
    )
    log_amplitude = torch.nn.Parameter(
        torch.as_tensor(_canvas(np.log(np.clip(starts[0]["amplitude"], 1e-3, None)), margin_a), dtype=torch.float32)
    )
    fits = []
    for member, start, similarity in zip(members, starts, similarities, strict=True):
        margin = canvas_margin_px(member.defocus_nominal_nm, pixel_size_nm, member.microscope)
        images = np.pad(member.images.astype(np.float64), ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
        measured = np.pad(np.ones(member.images.shape[1:]), margin)
        data = images / (np.sum(images * measured, axis=(1, 2), keepdims=True) / measured.sum())
        reference = int(np.argmin(np.abs(member.defocus_nominal_nm)))
        params = Parameters(
            np.zeros(images.shape[1:]),
            np.ones(images.shape[1:]),
            member.defocus_nominal_nm,
            member.microscope,
            reference,
        )
        with torch.no_grad():
            params.defocus_scale.fill_(math.log(start["calibration"]))
            params.shifts.copy_(torch.as_tensor(start["shifts_px"], dtype=torch.float32))
        model = ForwardModel(images.shape[1:], pixel_size_nm, member.microscope, settings.device, measured)
        fits.append((model, params, torch.as_tensor(data, dtype=torch.float32), _Frame(similarity)))
    groups = [
        {"params": [phase_e, phase_m], "lr": RATES["maps"]},
        {"params": [log_amplitude], "lr": RATES["log_amplitude"]},
    ]
    for index, (_, params, _, frame) in enumerate(fits):
        groups.append({"params": [params.defocus_scale], "lr": settings.options["defocus_scale"].lr})
        if "shifts" in settings.refine:
            groups.append({"params": [params.shifts], "lr": settings.options["shifts"].lr})
        if index:
            groups += [
                {"params": [frame.angle_deg], "lr": RATES["angle_deg"]},
                {"params": [frame.log_scale], "lr": RATES["log_scale"]},
                {"params": [frame.shift_px], "lr": RATES["shift_px"]},
            ]
    optimiser = torch.optim.Adam(groups)
    for it in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        misfit = 0.0
        for index, (model, params, data, _) in enumerate(fits):
            predicted = model(
                params,
                "shifts" in settings.refine,
                wave=_member_wave(index, fits, members, maps_of, phase_e, phase_m, log_amplitude),
            )
            misfit = misfit + misfit_per_image(predicted, data, model.measured).mean()
        loss = misfit / len(fits) + tv_weight * (total_variation(phase_e) + sum(total_variation(m) for m in phase_m))
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            phase_e -= phase_e.mean()
            phase_m -= phase_m.mean(dim=(1, 2), keepdim=True)
        if it % 100 == 0 or it == iterations - 1:
            value = float(misfit.detach()) / len(fits)
            if not math.isfinite(value):
                raise FitDiverged(f"the joint fit of {', '.join(m.series for m in members)} diverged at iteration {it}")
            log.info("joint fit: iteration %d, misfit %.4e", it, value)
    seconds = time.perf_counter() - t0
    inner = np.s_[margin_a : margin_a + window[0], margin_a : margin_a + window[1]]
    with torch.no_grad():
        electrostatic = phase_e.numpy()[inner].astype(np.float64)
        magnetic = [m.numpy()[inner].astype(np.float64) for m in phase_m]
        amplitude = log_amplitude.exp().numpy()[inner].astype(np.float64)
    # Neither map's ramp is measured (each series' drift takes it up): the flattest is chosen for
    # each, as for a single series' phase (gauge.py).
    electrostatic = gauge.without_ramp(electrostatic, gauge.flattest_gradient(electrostatic))
    magnetic = [gauge.without_ramp(m, gauge.flattest_gradient(m)) for m in magnetic]
    return [
        _in_own_frame(member, map_index, electrostatic, magnetic, amplitude, fit[1], fit[3].similarity(), seconds)
        for member, map_index, fit in zip(members, maps_of, fits, strict=True)
    ]


def _start_maps(members, maps_of, in_anchor) -> tuple[np.ndarray, list[np.ndarray]]:
    """phi_e and each phi_m in the anchor's frame from the members' own phases there (NaN where a
    member does not see the anchor's window, which there counts as the anchor's).

    Each series measures its phase only modulo 2 pi: where one member's own fit left a region
    2 pi off (a slip), the half sum and difference put pi into both maps there, which the joint
    fit cannot undo, as both members' waves are unchanged by it (docs/physics.md). Unwrapping
    the difference instead (a slip vanishes from exp(i (phi_a - phi_b))) lowered acc where an own
    fit was poor for other reasons, and is not done.
    """
    anchor_phase = in_anchor[0]

    def seen_as(phase):
        phase = np.where(np.isfinite(phase), phase, anchor_phase)
        return phase - phase.mean() + anchor_phase.mean()

    if members[0].role == "reference":
        magnetic = [seen_as(p) - anchor_phase for p, k in zip(in_anchor, maps_of, strict=True) if k is not None]
        return anchor_phase, magnetic
    other = seen_as(in_anchor[1])
    return (anchor_phase + other) / 2, [(anchor_phase - other) / 2]


def _member_wave(index, fits, members, maps_of, phase_e, phase_m, log_amplitude) -> torch.Tensor:
    """The exit wave member ``index`` sees on its own canvas."""
    sign, _ = ROLES[members[index].role]
    map_index = maps_of[index]
    stack = [phase_e, log_amplitude] + ([phase_m[map_index]] if map_index is not None else [])
    maps = torch.stack(stack)
    if index:
        model = fits[index][0]
        maps = frames.sample(maps, fits[index][3].grid(phase_e.shape, tuple(model.q2.shape)))
    phase = maps[0] + (sign * maps[2] if map_index is not None else 0.0)
    return torch.polar(maps[1].exp(), phase)


def _in_own_frame(member, map_index, electrostatic, magnetic, amplitude, params, similarity, seconds) -> Separated:
    sign, _ = ROLES[member.role]
    shape = member.images.shape[1:]
    own = (lambda a: a) if similarity == frames.Similarity() else (lambda a: frames.to_partner(a, similarity, shape))
    phase_e = own(electrostatic)
    phase_m = sign * own(magnetic[map_index]) if map_index is not None else np.zeros(shape)
    return Separated(
        series=member.series,
        phase=(phase_e + phase_m).astype(np.float32),
        phase_magnetic=(phase_m - phase_m.mean()).astype(np.float32),
        phase_electrostatic=(phase_e - phase_e.mean()).astype(np.float32),
        amplitude=own(amplitude).astype(np.float32),
        values=output_values(params),
        similarity=similarity,
        seconds=seconds,
    )
