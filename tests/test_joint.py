"""The joint fit of related series: partners simulated in their own frames are registered, and
the shared maps come back in every member's own frame and sign."""

import numpy as np
import pytest

from phasepipe import align, corpus, frames, joint, metrics, optimise, parameters


def _pair(relation):
    case = corpus.Case("elements", 0, 96, 3, 0.8, 0.05)
    return corpus.simulate_pair(case, relation)


@pytest.mark.parametrize("relation", ["flip", "reference"])
def test_partner_truth_is_the_anchor_seen_through_its_frame(relation):
    (_, truth_a), (_, truth_b), similarity = _pair(relation)
    seen = frames.to_anchor(truth_b["phase_electrostatic"].values, similarity)
    inside = np.isfinite(seen)
    anchor_e = truth_a["phase_electrostatic"].values
    assert np.corrcoef(seen[inside], anchor_e[inside])[0, 1] > 0.98
    partner_m = truth_b["phase_magnetic"].values
    if relation == "reference":
        assert np.abs(partner_m).max() == 0
    else:  # reversed
        seen_m = frames.to_anchor(partner_m, similarity)
        assert np.corrcoef(seen_m[inside], truth_a["phase_magnetic"].values[inside])[0, 1] < -0.95


def _members(pairs, roles):
    return [
        joint.Member(name, images, truth["defocus_nominal_nm"].values, parameters.Microscope(), role)
        for name, (images, truth), role in zip("ab", pairs, roles, strict=True)
    ]


@pytest.mark.parametrize("relation", ["flip", "reference"])
def test_registration_finds_the_partners_frame(relation):
    """From the noisy images (the in-focus ones) of a 96 px field."""
    a, b, similarity = _pair(relation)
    starts = [{"phase": t["phase"].values} for _, t in (a, b)]
    found = joint.register_members(_members((a, b), ("magnetic", relation)), starts)[1]
    assert found.mirror == (relation == "flip")
    assert abs(found.angle_deg - similarity.angle_deg) < 0.3
    assert np.hypot(*np.subtract(found.shift_px, similarity.shift_px)) < 0.5


def test_unrelated_series_are_not_registered():
    a, _, _ = _pair("flip")
    other = corpus.simulate_pair(corpus.Case("elements", 5, 96, 3, 0.8, 0.05), "flip")[0]
    starts = [{"phase": t["phase"].values} for _, t in (a, other)]
    with pytest.raises(joint.RegistrationError, match="series b cannot be registered onto a"):
        joint.register_members(_members((a, other), ("magnetic", "flip")), starts)


def test_flip_pair_is_separated_in_each_members_frame_and_sign():
    """From the two series' total phases (here the true ones) the joint fit's start gives phi_m
    and phi_e, and the flipped member's maps are its own: mirrored, turned and with phi_m
    reversed. (No iterations: from the true maps of so small a field, the joint iterations lower
    the plane-free acc of phi_m, docs/physics.md.)"""
    (images_a, truth_a), (images_b, truth_b), similarity = _pair("flip")
    members, starts = [], []
    for name, images, truth, role in (("a", images_a, truth_a, "magnetic"), ("b", images_b, truth_b, "flip")):
        nominal = truth["defocus_nominal_nm"].values
        images = align.apply_registration(images, align.series_registration(images, nominal))
        calibration = float(truth["defocus_nm"].values[0] / nominal[0])
        members.append(joint.Member(name, images, nominal, parameters.Microscope(), role))
        starts.append(
            {
                "phase": truth["phase"].values,
                "amplitude": truth["amplitude"].values,
                "calibration": calibration,
                "shifts_px": np.zeros((len(nominal), 2)),
            }
        )
    result = joint.separate(
        members, starts, [frames.Similarity(), similarity], corpus.PIXEL_NM, optimise.Settings(), 5e-3, 0
    )
    for separated, truth in zip(result, (truth_a, truth_b), strict=True):
        assert metrics.plane_free_accuracy(separated.phase_magnetic, truth["phase_magnetic"].values) > 0.97
        assert metrics.plane_free_accuracy(separated.phase_electrostatic, truth["phase_electrostatic"].values) > 0.97
    assert result[1].similarity == similarity
