"""The tile grid of a large field: geometry, blending weights, reconciliation and anchoring.

Pure functions on :class:`Tile` and NumPy maps (docs/physics.md, "Tiling"): :func:`tile_grid`
cuts a field into tiles of ``tile_px`` on the store's chunk grid, each widened by the halo into
the window that is fitted; :func:`anchor` replaces a tile's low spatial frequencies by the binned
whole-field fit's; :func:`reconcile` finds every tile's remaining phase constant and gradient (and
log amplitude constant) by least squares over the overlaps (:func:`overlap_moments`);
:func:`blend_weights` blends overlapping tiles with weights that sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phasepipe import parameters, physics

ANCHOR_SIGMA_BINS = 2.0  # low-pass (Gaussian sigma, binned px) below which tiles take the binned fit's maps
# Terms of each map's per-tile correction (constant; constant and gradient). Phase is known up to
# a constant, and a tile's fit pins its low frequencies poorly (a gradient across a periodic
# window is a beam tilt); log amplitude up to a constant (intensities are normalised per tile).
TERMS = {"phase": 3, "amplitude": 1, "tie_phase": 3}


# Peak memory of one tile's fit: interpreter, torch and the compiled kernels, with up to 64 MB of
# freed memory kept for reuse (tiling.reuse_freed_memory), plus bytes per window pixel and image (the
# forward model keeps a few complex maps per image for the backward pass); benchmarks/tiling_speed.py
# measures it (docs/performance.md).
TILE_BASE_MB = 900
TILE_BYTES_PER_PX_IMAGE = 260


class TilingError(ValueError):
    """Tiling settings the schema cannot judge (the tile against the halo it needs): the message
    names the key and what is wrong."""


@dataclass(frozen=True)
class Tile:
    """One tile: its core (the output chunk it owns) and its window (what is reconstructed)."""

    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    window: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"r{self.row:03d}c{self.col:03d}"

    def window_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.window
        return slice(y0, y1), slice(x0, x1)


def tile_grid(shape: tuple[int, int], tile_px: int, halo_px: int) -> list[Tile]:
    """Tiles of ``tile_px`` from the origin (the output's chunk grid), windows widened by
    ``halo_px`` and clipped to the field."""
    if tile_px < 2 * halo_px:
        raise TilingError(
            f"reconstruction.tile_px {tile_px} is smaller than twice the halo ({halo_px} px): "
            "raise tile_px or lower halo_px"
        )
    h, w = shape
    tiles = []
    for row, y0 in enumerate(range(0, h, tile_px)):
        for col, x0 in enumerate(range(0, w, tile_px)):
            y1, x1 = min(y0 + tile_px, h), min(x0 + tile_px, w)
            window = (max(y0 - halo_px, 0), min(y1 + halo_px, h), max(x0 - halo_px, 0), min(x1 + halo_px, w))
            tiles.append(Tile(row, col, (y0, y1, x0, x1), window))
    return tiles


def _ramp(t: np.ndarray) -> np.ndarray:
    """0 below t = 0, 1 above t = 1, sin^2 between: with its mirror image a partition of unity."""
    return np.sin(0.5 * np.pi * np.clip(t, 0.0, 1.0)) ** 2


def _axis_weights(core: tuple[int, int], window: tuple[int, int], size: int, band_px: int) -> np.ndarray:
    centres = np.arange(window[0], window[1]) + 0.5
    weights = np.ones(centres.size)
    # Ramps over a band of band_px centred on each core edge that has a neighbour; the neighbour's
    # ramp over the same band is the complement, so the weights of all tiles sum to one.
    if core[0] > 0:
        weights *= _ramp((centres - core[0]) / max(band_px, 1e-9) + 0.5) if band_px else centres >= core[0]
    if core[1] < size:
        weights *= _ramp((core[1] - centres) / max(band_px, 1e-9) + 0.5) if band_px else centres < core[1]
    return weights


def blend_weights(tile: Tile, shape: tuple[int, int], halo_px: int) -> np.ndarray:
    """Blending weights over the tile's window: 1 in the core, smooth ramps across the inner half
    of the halo on both sides of each seam, 0 in the halo's outer half."""
    y0, y1, x0, x1 = tile.core
    wy0, wy1, wx0, wx1 = tile.window
    band = halo_px  # the band reaches halo_px / 2 beyond the core
    return np.outer(
        _axis_weights((y0, y1), (wy0, wy1), shape[0], band), _axis_weights((x0, x1), (wx0, wx1), shape[1], band)
    )


def _basis(tile: Tile, shape: tuple[int, int], terms: int) -> list[np.ndarray]:
    """Per-pixel basis of a tile's correction over its window: 1, and for three terms y and x
    (in units of the field's size, from its centre: a well-conditioned least squares)."""
    wy0, wy1, wx0, wx1 = tile.window
    ones = np.ones((wy1 - wy0, wx1 - wx0))
    if terms == 1:
        return [ones]
    y = (np.arange(wy0, wy1) + 0.5 - shape[0] / 2)[:, None] / max(shape)
    x = (np.arange(wx0, wx1) + 0.5 - shape[1] / 2)[None, :] / max(shape)
    return [ones, ones * y, ones * x]


def correction(tile: Tile, shape: tuple[int, int], theta: np.ndarray) -> np.ndarray:
    """A tile's correction over its window for coefficients ``theta``."""
    return sum(c * g for c, g in zip(theta, _basis(tile, shape, theta.size), strict=True))


def _overlap(a: Tile, b: Tile) -> tuple[slice, slice, slice, slice] | None:
    """Index ranges of the two windows' intersection, in a's and in b's window coordinates."""
    y0, y1 = max(a.window[0], b.window[0]), min(a.window[1], b.window[1])
    x0, x1 = max(a.window[2], b.window[2]), min(a.window[3], b.window[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return (
        slice(y0 - a.window[0], y1 - a.window[0]),
        slice(x0 - a.window[2], x1 - a.window[2]),
        slice(y0 - b.window[0], y1 - b.window[0]),
        slice(x0 - b.window[2], x1 - b.window[2]),
    )


def overlap_moments(
    a: Tile, b: Tile, field_a: np.ndarray, field_b: np.ndarray, shape: tuple[int, int], halo_px: int, terms: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Normal-equation terms (G, h) of the misfit between two tiles' maps over their overlap.

    With corrections theta (coefficients of :func:`_basis`), sum w (g.(theta_a - theta_b) - d)^2,
    d = field_b - field_a, weighted by the product of the two tiles' blending weights, equals
    D.G.D - 2 D.h + const with D = theta_a - theta_b.
    """
    where = _overlap(a, b)
    if where is None:
        return None
    ya, xa, yb, xb = where
    weight = blend_weights(a, shape, halo_px)[ya, xa] * blend_weights(b, shape, halo_px)[yb, xb]
    if not weight.any():
        return None
    basis = [g[ya, xa] for g in _basis(a, shape, terms)]
    diff = field_b[yb, xb] - field_a[ya, xa]
    gram = np.array([[np.sum(weight * gi * gj) for gj in basis] for gi in basis])
    rhs = np.array([np.sum(weight * gi * diff) for gi in basis])
    return gram, rhs


def reconcile(n_tiles: int, terms: int, pairs: list[tuple[int, int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Corrections (n_tiles, k) that make neighbouring tiles agree best over their overlaps.

    Least squares over all pairs (a, b, G, h) of :func:`overlap_moments`. A correction common to
    every tile changes no overlap: the minimum-norm solution, whose corrections sum to zero, is
    taken, so the field as a whole keeps the tiles' mean.
    """
    normal = np.zeros((n_tiles * terms, n_tiles * terms))
    rhs = np.zeros(n_tiles * terms)
    for a, b, gram, h in pairs:
        sa, sb = slice(a * terms, (a + 1) * terms), slice(b * terms, (b + 1) * terms)
        normal[sa, sa] += gram
        normal[sb, sb] += gram
        normal[sa, sb] -= gram
        normal[sb, sa] -= gram
        rhs[sa] += h
        rhs[sb] -= h
    solution = np.linalg.lstsq(normal, rhs, rcond=None)[0]
    return solution.reshape(n_tiles, terms)


def neighbours(tiles: list[Tile]) -> list[tuple[int, int]]:
    """Index pairs of tiles whose windows overlap (each pair once)."""
    index = {(t.row, t.col): i for i, t in enumerate(tiles)}
    pairs = []
    for i, t in enumerate(tiles):
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            j = index.get((t.row + dr, t.col + dc))
            if j is not None and _overlap(t, tiles[j]) is not None:
                pairs.append((i, j))
    return pairs


def upsample(coarse: np.ndarray, window: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """A binned map (linearly) interpolated onto the full-resolution pixels of ``window``."""
    from scipy import ndimage

    wy0, wy1, wx0, wx1 = window
    # Coarse pixel i covers full pixels [i f, (i + 1) f): its centre is at full index (i + 0.5) f - 0.5.
    yy = (np.arange(wy0, wy1) + 0.5) / factor - 0.5
    xx = (np.arange(wx0, wx1) + 0.5) / factor - 0.5
    grid = np.meshgrid(yy, xx, indexing="ij")
    return ndimage.map_coordinates(np.asarray(coarse, np.float64), grid, order=1, mode="nearest")


def anchor(tile_map: np.ndarray, coarse: np.ndarray, tile: Tile, factor: int) -> np.ndarray:
    """A tile's map with its low spatial frequencies replaced by the binned whole-field map's.

    A tile's fit pins frequencies below about one cycle per window poorly (and its start, TIE,
    suppresses them); the binned fit sees the whole field, as an untiled fit does. Gaussian of
    ``ANCHOR_SIGMA_BINS`` binned pixels splits low from high.
    """
    from scipy import ndimage

    sigma = ANCHOR_SIGMA_BINS * factor
    tile_map = np.asarray(tile_map, np.float64)
    low = ndimage.gaussian_filter(tile_map, sigma, mode="nearest")
    coarse_low = ndimage.gaussian_filter(upsample(coarse, tile.window, factor), sigma, mode="nearest")
    return tile_map - low + coarse_low


def auto_halo_px(microscope: parameters.Microscope, max_defocus_nm: float, pixel_size_nm: float) -> int:
    """Halo that covers the Fresnel spread of the largest defocus (:func:`physics.fresnel_spread_px`).
    The tile's object is fitted on a canvas a further halo wider, free of data, so that the FFT's
    wrap-around falls outside the data."""
    theta = microscope.beam_divergence_mrad * 1e-3
    return physics.fresnel_spread_px(microscope.voltage_kv * 1e3, theta, max_defocus_nm, pixel_size_nm)


def tile_memory_mb(window_px: int, n_images: int) -> int:
    """Peak memory of one tile's fit (see ``TILE_BYTES_PER_PX_IMAGE``)."""
    return int(TILE_BASE_MB + TILE_BYTES_PER_PX_IMAGE * window_px**2 * n_images / 2**20)
