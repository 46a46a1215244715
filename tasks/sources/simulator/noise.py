"""Deterministic world-coordinate noise: the same value at the same place, whichever box asks.

Values come from a splitmix64 hash of (seed, stream, lattice x, lattice y), so neighbouring boxes
generated independently (in parallel) agree where they meet.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uint64(*keys: np.ndarray | int) -> np.ndarray:
    """A well-mixed uint64 hash of integer keys (broadcast together)."""
    with np.errstate(over="ignore"):
        h: np.ndarray = np.asarray(np.uint64(0x243F6A8885A308D3))
        for key in keys:
            k = np.asarray(key, dtype=np.int64).astype(np.uint64)
            h = _mix(h ^ (k + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
        return np.asarray(h, dtype=np.uint64)


def hash_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1) from integer keys."""
    return (hash_uint64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def hash_normal(*keys: np.ndarray | int) -> np.ndarray:
    """Standard normal floats from integer keys (Box-Muller on two hashed uniforms)."""
    u1 = hash_uniform(*keys, 1)
    u2 = hash_uniform(*keys, 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def stream_id(name: str) -> int:
    """A stable integer for a named random stream."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") & 0x7FFFFFFFFFFFFFFF


def _interp_matrix(coords: np.ndarray, lattice: np.ndarray, spacing: float) -> sparse.csr_matrix:
    """Sparse (len(coords), len(lattice)) smoothstep interpolation weights along one axis."""
    pos = (coords - lattice[0]) / spacing
    i0 = np.floor(pos).astype(int)
    frac = pos - i0
    smooth = frac * frac * (3.0 - 2.0 * frac)
    rows = np.arange(coords.size)
    return sparse.csr_matrix(
        (
            np.concatenate([1.0 - smooth, smooth]),
            (np.concatenate([rows, rows]), np.concatenate([i0, i0 + 1])),
        ),
        shape=(coords.size, lattice.size),
    )


def value_noise_grid(seed: int, stream: int, xs: np.ndarray, ys: np.ndarray, spacing: float) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid ``ys x xs`` (world metres), lattice ``spacing``.

    Returns an array of shape (len(ys), len(xs)); computed as Wy @ G @ Wx^T, so it costs a
    small hash of the lattice and two matrix products.
    """
    lx = np.arange(np.floor(xs.min() / spacing), np.floor(xs.max() / spacing) + 2) * spacing
    ly = np.arange(np.floor(ys.min() / spacing), np.floor(ys.max() / spacing) + 2) * spacing
    ix = np.round(lx / spacing).astype(np.int64)
    iy = np.round(ly / spacing).astype(np.int64)
    lattice = 2.0 * hash_uniform(seed, stream, iy[:, None], ix[None, :]) - 1.0
    wy = _interp_matrix(ys, ly, spacing)
    wx = _interp_matrix(xs, lx, spacing)
    return np.asarray((wx @ (wy @ lattice).T).T, dtype=np.float32)


def fractal_noise_grid(
    seed: int, stream: int, xs: np.ndarray, ys: np.ndarray, spacings: tuple[float, ...], gain: float = 0.5
) -> np.ndarray:
    """Sum of value-noise octaves normalised to unit standard deviation (approximately Gaussian)."""
    total = np.zeros((ys.size, xs.size), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave, spacing in enumerate(spacings):
        total += amp * value_noise_grid(seed, stream + 7919 * octave, xs, ys, spacing)
        norm += amp**2
        amp *= gain
    # value noise with smoothstep interpolation of U(-1, 1) lattice values has variance ~ 0.2
    return total / np.float32(np.sqrt(norm * 0.2))


def value_noise_points(seed: int, stream: int, x: np.ndarray, y: np.ndarray, spacing: float) -> np.ndarray:
    """Value noise in [-1, 1] at scattered points (world metres)."""
    px, py = x / spacing, y / spacing
    ix, iy = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    fx, fy = px - ix, py - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)

    def corner(dy: int, dx: int) -> np.ndarray:
        return 2.0 * hash_uniform(seed, stream, iy + dy, ix + dx) - 1.0

    top = corner(0, 0) * (1 - sx) + corner(0, 1) * sx
    bottom = corner(1, 0) * (1 - sx) + corner(1, 1) * sx
    return top * (1 - sy) + bottom * sy


def fractal_noise_points(
    seed: int, stream: int, x: np.ndarray, y: np.ndarray, spacings: tuple[float, ...], gain: float = 0.5
) -> np.ndarray:
    """Scattered-point counterpart of :func:`fractal_noise_grid` (same values at the same places)."""
    total = np.zeros(np.shape(x))
    amp, norm = 1.0, 0.0
    for octave, spacing in enumerate(spacings):
        total += amp * value_noise_points(seed, stream + 7919 * octave, x, y, spacing)
        norm += amp**2
        amp *= gain
    return total / np.sqrt(norm * 0.2)
