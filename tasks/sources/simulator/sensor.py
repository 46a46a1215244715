"""The sensor: point-spread blur, sub-pixel misregistration and area integration as linear operators.

Along each axis, an output pixel of size ``p`` at offset ``shift`` is the PSF-weighted area mean
of the 2.5 m scene: weight of a scene sample at ``u`` = Phi((b - u)/sigma) - Phi((a - u)/sigma)
for the pixel footprint [a, b) (a Gaussian PSF convolved with the pixel box), rows normalised to 1.
The 2-D operator is separable: out = My @ scene @ Mx^T.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.special import ndtr

SCENE_RESOLUTION_M = 2.5
#: Gaussian PSF sigma per native resolution (~0.45 GSD, an MTF of ~0.2 at Nyquist).
PSF_SIGMA_M = {10: 4.5, 20: 9.0, 60: 27.0}


def footprint_operator(
    n_out: int, pixel_m: float, n_scene: int, origin_m: float, shift_m: float, sigma_m: float
) -> sparse.csr_matrix:
    """Sparse (n_out, n_scene) operator: PSF-weighted area means of a 2.5 m scene axis.

    Output pixel ``j`` covers ``[origin + j * pixel + shift, origin + (j + 1) * pixel + shift)``
    in scene metres (scene sample ``k`` is centred at ``(k + 0.5) * 2.5``).
    """
    reach = 4.0 * sigma_m + pixel_m
    a = origin_m + np.arange(n_out) * pixel_m + shift_m  # footprint starts, (n_out,)
    first = np.floor((a - reach) / SCENE_RESOLUTION_M).astype(np.int64)
    taps = int(np.ceil((pixel_m + 2 * reach) / SCENE_RESOLUTION_M)) + 2
    cols = first[:, None] + np.arange(taps)[None, :]
    u = (cols + 0.5) * SCENE_RESOLUTION_M
    weights = ndtr((a[:, None] + pixel_m - u) / sigma_m) - ndtr((a[:, None] - u) / sigma_m)
    weights[(cols < 0) | (cols >= n_scene) | (weights < 1e-7)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    keep = weights > 0
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    matrix = sparse.csr_matrix(
        (weights[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_out, n_scene)
    )
    matrix.eliminate_zeros()
    return matrix


def apply_separable(my: sparse.csr_matrix, mx: sparse.csr_matrix, image: np.ndarray) -> np.ndarray:
    """``My @ image @ Mx^T`` for one (H, W) scene channel -> (n_y, n_x) float32."""
    rows = my @ image  # (n_y, W)
    return np.ascontiguousarray((mx @ rows.T).T, dtype=np.float32)


def nearest_to_10m(image: np.ndarray, pixel_m: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a coarse (..., h, w) grid aligned at the box origin to 10 m."""
    factor = pixel_m // 10
    rows, cols = np.arange(shape[0]) // factor, np.arange(shape[1]) // factor
    return image[..., rows[:, None], cols[None, :]]
