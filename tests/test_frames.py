"""The one convention of a partner's frame: numpy and torch agree, and there and back is the identity."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from phasepipe import frames


@pytest.fixture
def field():
    return ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((96, 112)), 4)


@pytest.mark.parametrize("mirror", [False, True])
def test_to_anchor_undoes_to_partner(field, mirror):
    similarity = frames.Similarity(mirror, 7.0, 1.02, (3.0, -2.5))
    back = frames.to_anchor(frames.to_partner(field, similarity, (90, 96)), similarity, field.shape)
    seen = np.isfinite(back)
    assert 0.6 < seen.mean() < 0.9  # the partner's smaller, turned field does not see the corners
    inner = seen & ndimage.binary_erosion(seen, iterations=4)
    assert np.abs(back - field)[inner].max() < 0.02 * np.abs(field).max()


def test_mirror_reverses_x_only():
    field = np.zeros((9, 9))
    field[2, 1] = 1.0  # above and left of the centre (4, 4)
    mirrored = frames.to_partner(field, frames.Similarity(mirror=True), order=0)
    assert np.argwhere(mirrored == 1).tolist() == [[2, 7]]


def test_torch_sampling_matches_numpy(field):
    similarity = frames.Similarity(True, -4.0, 0.99, (1.5, 2.0))
    expected = frames.to_partner(field, similarity, (80, 88))
    grid = frames.sampling_grid(
        field.shape,
        (80, 88),
        True,
        torch.tensor(-4.0, dtype=torch.float64),
        torch.tensor(0.99, dtype=torch.float64),
        torch.tensor([1.5, 2.0], dtype=torch.float64),
    )
    sampled = frames.sample(torch.as_tensor(field)[None], grid)[0].numpy()
    assert np.abs(sampled - expected)[4:-4, 4:-4].max() < 0.02 * np.abs(field).max()
