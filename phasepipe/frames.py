"""How one series' frame maps onto another's: the similarity of a specimen seen twice.

A related series of the same area (the specimen turned over, or warmed into a reference state)
sees it mirrored, rotated, a little rescaled and shifted. One convention, used by the simulator,
the registration and the joint fit alike: a partner's pixel at index o (y, x), relative to its
field's centre c_p, shows the specimen point at the anchor's index

    c_a + A (o - c_p) + t,     A = scale R(angle) M,

with M = diag(1, -1) (x -> -x) for a mirrored partner, R the rotation by ``angle`` in (y, x)
and t = ``shift_px`` (y, x). Fields are centred on their windows, so a canvas with a margin
keeps the same centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass(frozen=True)
class Similarity:
    """A partner's frame in the anchor's (see the module docstring)."""

    mirror: bool = False
    angle_deg: float = 0.0
    scale: float = 1.0
    shift_px: tuple[float, float] = (0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """A (2 x 2, acting on (y, x)): scale R(angle) M."""
        return linear_part(self.mirror, self.angle_deg, self.scale)


def linear_part(mirror: bool, angle_deg, scale):
    """scale R(angle) M for numbers (numpy) or tensors (torch, differentiable in angle and scale)."""
    if isinstance(angle_deg, torch.Tensor):
        angle = angle_deg * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
        flip = torch.tensor([[1.0, 0.0], [0.0, -1.0 if mirror else 1.0]], dtype=rotation.dtype)
        return scale * rotation @ flip
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return scale * rotation @ np.diag([1.0, -1.0 if mirror else 1.0])


def _centre(shape) -> np.ndarray:
    return (np.asarray(shape[-2:], float) - 1) / 2


def to_partner(field: np.ndarray, similarity: Similarity, shape=None, order: int = 3) -> np.ndarray:
    """The anchor's ``field`` (y, x) as the partner sees it, on a partner field of ``shape``
    (the anchor's by default); points beyond the anchor's field take its nearest edge value."""
    shape = field.shape if shape is None else tuple(shape)
    a = similarity.matrix()
    offset = _centre(field.shape) + np.asarray(similarity.shift_px, float) - a @ _centre(shape)
    return ndimage.affine_transform(field, a, offset=offset, output_shape=shape, order=order, mode="nearest")


def to_anchor(field: np.ndarray, similarity: Similarity, shape=None, order: int = 3) -> np.ndarray:
    """A partner's ``field`` in the anchor's frame, on an anchor field of ``shape`` (the
    partner's by default); points the partner does not see are NaN."""
    shape = field.shape if shape is None else tuple(shape)
    a_inv = np.linalg.inv(similarity.matrix())
    offset = _centre(field.shape) - a_inv @ (_centre(shape) + np.asarray(similarity.shift_px, float))
    inside = ndimage.affine_transform(np.ones(field.shape), a_inv, offset=offset, output_shape=shape, order=1, cval=0)
    mapped = ndimage.affine_transform(field, a_inv, offset=offset, output_shape=shape, order=order, mode="nearest")
    return np.where(inside > 1 - 1e-6, mapped, np.nan)


def sampling_grid(
    anchor_shape: tuple[int, int],
    partner_shape: tuple[int, int],
    mirror: bool,
    angle_deg: torch.Tensor,
    scale: torch.Tensor,
    shift_px: torch.Tensor,
) -> torch.Tensor:
    """The grid (1, Hp, Wp, 2) for :func:`torch.nn.functional.grid_sample` (align_corners=True)
    that takes an anchor map to the partner's field: differentiable in angle, scale and shift."""
    hp, wp = partner_shape
    ha, wa = anchor_shape
    dtype = angle_deg.dtype
    oy, ox = torch.meshgrid(
        torch.arange(hp, dtype=dtype) - (hp - 1) / 2, torch.arange(wp, dtype=dtype) - (wp - 1) / 2, indexing="ij"
    )
    a = linear_part(mirror, angle_deg, scale)
    y = a[0, 0] * oy + a[0, 1] * ox + shift_px[0] + (ha - 1) / 2
    x = a[1, 0] * oy + a[1, 1] * ox + shift_px[1] + (wa - 1) / 2
    return torch.stack([2 * x / (wa - 1) - 1, 2 * y / (ha - 1) - 1], dim=-1)[None]


def sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Anchor ``maps`` (C, Ha, Wa) on the partner's field (C, Hp, Wp) along ``grid``: bicubic, edge
    values beyond the anchor's field."""
    out = torch.nn.functional.grid_sample(
        maps[None], grid.to(maps.dtype), mode="bicubic", padding_mode="border", align_corners=True
    )
    return out[0]
