"""5x5 neighbourhood statistics of a cloud-masked Sentinel-2 stack (RF / LightGBM baseline, seed 000).

For every pixel and band, over the ``window x window`` neighbourhood of *valid* values: min, max, mean,
median, std (population, ``ddof=0``), Q1, Q3 and span (max - min); see ``models.md``, "RF / LightGBM on
5x5 statistics".

Conventions (shared by the fast and the reference implementation):

* Features are **band-major**: output channel ``c * 8 + k`` is statistic ``STAT_NAMES[k]`` of band ``c``
  (``B01_min, B01_max, ..., B01_span, B02_min, ...``); :func:`feature_names` spells them out.
* Quantiles (median, Q1, Q3) use numpy's default ``'linear'`` method over the valid values of the window.
* Windows are truncated at the image borders (only in-image pixels count): padding with invalid values.
* A value is usable when ``valid`` is True *and* the value is finite (NaN / inf count as invalid).
* ``mode="per_frame"``: statistics of the window in each frame, then the per-pixel mean over the frames in
  which the window had at least one usable value. ``mode="pooled"``: statistics over all usable values of
  the window in all frames at once (up to ``T * window**2`` values).
* A pixel whose window has no usable value at all (in any frame) gets NaN for every statistic; LightGBM and
  scikit-learn >= 1.4 forests accept NaN.
* Mean and std are accumulated in float64; the output is float32.

Algorithms (numba, parallel; :func:`reference_neighbourhood_statistics` is the slow plain-numpy oracle):

* ``per_frame``, parallel over image rows: per frame and band, the window rows form a plane padded with
  +inf (= unusable); a comparator network sorts its columns, a second one merges the ``window`` sorted
  columns of every pixel's window into its ``window**2`` sorted values (unusable ones last), vectorised
  over the pixels of the row (SIMD min/max). Ranks give min, max and the quantiles; mean and std come from
  column sums. About 100 comparators per 5x5 window, ~40 ns CPU per window: ~5 s CPU for a full box
  (500 x 500 px, 40 frames, 12 bands = 1.2 * 10^8 windows), 0.1 GB of output and small per-row buffers.
* ``pooled``, parallel over (band, row segment), in row blocks of bounded memory: each pixel's time series
  is sorted once; per column the sorted values of the window rows slide down the rows, and per row the
  window's sorted values (up to ``T * window**2``) slide along x, each step one merge pass that drops the
  leaving and inserts the entering sorted column. ``O(T * window**2)`` per pixel and band, branchy: ~8 us
  CPU per pixel and band at T=40, ~25 s CPU for a full box, 4-5x the per-frame mode; the sorted series use
  at most ``POOLED_BLOCK_BYTES`` (see ``benchmarks/results/stats5x5.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

import numba
import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from numba import njit, prange

from s2agri.tasks.contract import BAND_NAMES

LOGGER = logging.getLogger(__name__)

#: Statistics per band, in output order.
STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "median", "std", "q1", "q3", "span")
N_STATS = len(STAT_NAMES)
_QUANTILES = (0.25, 0.5, 0.75)
_Q_STATS = (5, 3, 6)  #: output index of each of _QUANTILES
Mode = Literal["per_frame", "pooled"]
MODES: tuple[str, ...] = ("per_frame", "pooled")
#: Memory (bytes) of the sorted per-pixel time series one block of the pooled mode may hold.
POOLED_BLOCK_BYTES = 64 * 2**20


def feature_names(band_names: Sequence[str] = BAND_NAMES) -> list[str]:
    """Names of the output channels, band-major: ``["B01_min", "B01_max", ..., "B12_span"]``."""
    return [f"{band}_{stat}" for band in band_names for stat in STAT_NAMES]


def _check_inputs(values: np.ndarray, valid: np.ndarray, mode: str, window: int) -> None:
    """Raise a ``ValueError`` naming the problem with the arguments."""
    if values.ndim != 4:
        raise ValueError(f"values must have shape (T, H, W, C), got shape {values.shape}")
    if valid.shape != values.shape[:3]:
        raise ValueError(
            f"valid must have shape (T, H, W) = {values.shape[:3]} matching values {values.shape}, "
            f"got {valid.shape}"
        )
    _check_options(mode, window)


def _check_options(mode: str, window: int) -> None:
    """Raise a ``ValueError`` for an unknown mode or a window that is not an odd integer >= 1."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------------
# comparator networks (per-frame mode)
# ---------------------------------------------------------------------------------------------------------

Comparators = list[tuple[int, int]]


def merge_exchange_network(n: int) -> Comparators:
    """Comparators ``(i, j)``, i < j, of Batcher's merge-exchange sort of ``n`` slots (Knuth 5.2.2 M)."""
    comparators: Comparators = []
    if n < 2:
        return comparators
    t = (n - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            comparators += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return comparators


def odd_even_merge_network(a: Sequence[int], b: Sequence[int]) -> tuple[Comparators, list[int]]:
    """Batcher's odd-even merge of two sorted runs of slots (any lengths).

    Returns the comparators (min goes to the first slot) and the slots in ascending order afterwards.
    """
    if not a or not b:
        return [], [*a, *b]
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])], [a[0], b[0]]
    even_comps, even = odd_even_merge_network(a[0::2], b[0::2])
    odd_comps, odd = odd_even_merge_network(a[1::2], b[1::2])
    comparators = even_comps + odd_comps
    order = [even[0]]
    for i, slot in enumerate(odd):
        if i + 1 < len(even):
            comparators.append((slot, even[i + 1]))
            order += [slot, even[i + 1]]
        else:
            order.append(slot)
    order += even[len(odd) + 1 :]
    return comparators, order


def merge_runs_network(runs: Sequence[Sequence[int]]) -> tuple[Comparators, list[int]]:
    """Merge sorted runs of slots pairwise, shortest two first; comparators and final ascending slots."""
    pending = [list(run) for run in runs if run]
    comparators: Comparators = []
    while len(pending) > 1:
        i, j = sorted(sorted(range(len(pending)), key=lambda k: (len(pending[k]), k))[:2])
        comps, merged = odd_even_merge_network(pending[i], pending[j])
        comparators += comps
        pending = [run for k, run in enumerate(pending) if k not in (i, j)] + [merged]
    return comparators, pending[0] if pending else []


def _row_table(comparators: Comparators, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-place form of a network on ``n_slots + 2`` rows: (src_a, src_b, dst_min, dst_max) per
    comparator and the row holding each slot at the end."""
    row_of = list(range(n_slots))
    free = [n_slots, n_slots + 1]
    table = []
    for i, j in comparators:
        lo_row, hi_row = free
        table.append((row_of[i], row_of[j], lo_row, hi_row))
        free = [row_of[i], row_of[j]]
        row_of[i], row_of[j] = lo_row, hi_row
    return np.array(table, np.int64).reshape(-1, 4), np.array(row_of, np.int64)


@cache
def _per_frame_tables(window: int) -> tuple[np.ndarray, ...]:
    """Networks and quantile ranks of the per-frame kernel for one window size.

    Returns ``col_table, col_rows`` (sort a column of ``window`` slots: rank r in row ``col_rows[r]``),
    ``win_table, win_rows`` (merge ``window`` sorted columns, slot ``dx * window + r``; rank k in row
    ``win_rows[k]``) and ``q_lo, q_hi, q_gamma`` ((window**2 + 1, 3), for Q1, median, Q3 of n values).
    """
    col_table, col_rows = _row_table(merge_exchange_network(window), window)
    runs = [range(dx * window, (dx + 1) * window) for dx in range(window)]
    comparators, order = merge_runs_network(runs)
    win_table, slot_rows = _row_table(comparators, window * window)
    win_rows = slot_rows[np.array(order, np.int64)]
    n_max = window * window
    q_lo = np.zeros((n_max + 1, len(_QUANTILES)), np.int64)
    q_hi = np.zeros_like(q_lo)
    q_gamma = np.zeros((n_max + 1, len(_QUANTILES)))
    for n in range(1, n_max + 1):
        for j, q in enumerate(_QUANTILES):
            index = q * (n - 1)  # numpy's 'linear' method: virtual index, as in np.quantile
            q_lo[n, j] = int(np.floor(index))
            q_hi[n, j] = min(q_lo[n, j] + 1, n - 1)
            q_gamma[n, j] = index - q_lo[n, j]
    return col_table, col_rows, win_table, win_rows, q_lo, q_hi, q_gamma


# ---------------------------------------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _quantile_sorted(buf: np.ndarray, n: int, q: float) -> float:
    """numpy's 'linear' quantile of the sorted ``buf[:n]`` (same lerp as ``numpy._lerp``)."""
    idx = q * (n - 1)
    lo = int(np.floor(idx))
    hi = lo + 1 if lo + 1 < n else n - 1
    gamma = idx - lo
    a = np.float64(buf[lo])
    b = np.float64(buf[hi])
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


@njit(cache=True, inline="always")
def _window_stats(buf: np.ndarray, n: int, res: np.ndarray) -> None:
    """The 8 statistics of the sorted ``buf[:n]`` (n >= 1) into ``res`` (float64[8])."""
    total = 0.0
    for i in range(n):
        total += buf[i]
    mean = total / n
    ss = 0.0
    for i in range(n):
        d = buf[i] - mean
        ss += d * d
    lo = np.float64(buf[0])
    hi = np.float64(buf[n - 1])
    res[0] = lo
    res[1] = hi
    res[2] = mean
    res[3] = _quantile_sorted(buf, n, 0.5)
    res[4] = np.sqrt(ss / n)
    res[5] = _quantile_sorted(buf, n, 0.25)
    res[6] = _quantile_sorted(buf, n, 0.75)
    res[7] = hi - lo


@njit(cache=True, inline="always")
def _apply_network(rows: np.ndarray, table: np.ndarray, n: int) -> None:
    """Run a comparator network on the columns ``[:n]`` of ``rows`` (one lane per column, vectorised).

    ``table[k] = (src_a, src_b, dst_min, dst_max)``: rows, with destinations distinct from sources (an
    in-place compare-exchange makes LLVM emit masked stores, which are slow on AMD CPUs).
    """
    for k in range(table.shape[0]):
        ra = table[k, 0]
        rb = table[k, 1]
        rlo = table[k, 2]
        rhi = table[k, 3]
        for i in range(n):
            a = rows[ra, i]
            b = rows[rb, i]
            rows[rlo, i] = min(a, b)
            rows[rhi, i] = max(a, b)


@njit(parallel=True, cache=True)
def _per_frame_kernel(
    values: np.ndarray,
    valid: np.ndarray,
    h: int,
    col_table: np.ndarray,
    col_rows: np.ndarray,
    win_table: np.ndarray,
    win_rows: np.ndarray,
    q_lo: np.ndarray,
    q_hi: np.ndarray,
    q_gamma: np.ndarray,
    out: np.ndarray,
) -> None:
    """Per-frame statistics averaged over frames; ``out`` is (H, W, 8*C) float32.

    Per image row ``y`` (parallel), frame and band: the window rows form a plane padded with +inf (= not
    usable); a network sorts its columns, then for every pixel the ``window`` sorted columns of its window
    are merged by a second network (vectorised over pixels) into ``window**2`` sorted values, +inf last.
    Quantiles are read at ranks from ``q_lo/q_hi/q_gamma[n]`` (n usable values); mean and std come from
    column sums of ``v - K`` (K = smallest usable value of the plane, float64), std is 0 when min == max.
    """
    n_times, height, width, n_bands = values.shape
    w = 2 * h + 1
    wp = width + 2 * h
    for y in prange(height):
        acc = np.zeros((n_bands, N_STATS, width))
        hits = np.zeros((n_bands, width), np.int64)
        planes = np.full((n_bands, w + 2, wp), np.inf, np.float32)
        win = np.empty((w * w + 2, width), np.float32)
        col_n = np.zeros(wp, np.int64)
        col_s1 = np.zeros(wp)
        col_s2 = np.zeros(wp)
        win_n = np.zeros(width, np.int64)
        win_s1 = np.zeros(width)
        win_s2 = np.zeros(width)
        for t in range(n_times):
            for r in range(w):
                yy = y - h + r
                if yy < 0 or yy >= height:
                    planes[:, r, :] = np.inf
                    continue
                for x in range(width):
                    ok = valid[t, yy, x]
                    for c in range(n_bands):
                        v = values[t, yy, x, c]
                        planes[c, r, x + h] = v if (ok and np.isfinite(v)) else np.inf
            for c in range(n_bands):
                plane = planes[c]
                _apply_network(plane, col_table, wp)
                lowest = plane[col_rows[0]]
                shift = np.inf
                for x in range(wp):
                    shift = min(shift, lowest[x])
                if shift == np.inf:
                    continue  # no usable value in these rows of this frame
                shift = np.float64(shift)
                col_n[:] = 0
                col_s1[:] = 0.0
                col_s2[:] = 0.0
                for r in range(w):
                    row = plane[col_rows[r]]
                    for x in range(wp):
                        v = row[x]
                        usable = v < np.inf
                        d = (np.float64(v) - shift) if usable else 0.0
                        col_n[x] += usable
                        col_s1[x] += d
                        col_s2[x] += d * d
                win_n[:] = 0
                win_s1[:] = 0.0
                win_s2[:] = 0.0
                for dx in range(w):
                    for x in range(width):
                        win_n[x] += col_n[x + dx]
                        win_s1[x] += col_s1[x + dx]
                        win_s2[x] += col_s2[x + dx]
                for dx in range(w):
                    for r in range(w):
                        src = plane[col_rows[r]]
                        dst = win[dx * w + r]
                        for x in range(width):
                            dst[x] = src[x + dx]
                _apply_network(win, win_table, width)
                for x in range(width):
                    n = win_n[x]
                    if n == 0:
                        continue
                    lo = np.float64(win[win_rows[0], x])
                    hi = np.float64(win[win_rows[n - 1], x])
                    mean = win_s1[x] / n
                    var = win_s2[x] / n - mean * mean
                    acc[c, 0, x] += lo
                    acc[c, 1, x] += hi
                    acc[c, 2, x] += mean + shift
                    acc[c, 4, x] += np.sqrt(var) if (var > 0.0 and hi > lo) else 0.0
                    acc[c, 7, x] += hi - lo
                    for j in range(3):
                        a = np.float64(win[win_rows[q_lo[n, j]], x])
                        b = np.float64(win[win_rows[q_hi[n, j]], x])
                        g = q_gamma[n, j]
                        d = b - a
                        acc[c, _Q_STATS[j], x] += (b - d * (1.0 - g)) if g >= 0.5 else (a + d * g)
                    hits[c, x] += 1
        out_row = out[y]
        for x in range(width):
            for c in range(n_bands):
                cnt = hits[c, x]
                for k in range(N_STATS):
                    out_row[x, c * N_STATS + k] = acc[c, k, x] / cnt if cnt > 0 else np.nan


@njit(parallel=True, cache=True)
def _sort_series_kernel(
    values: np.ndarray, valid: np.ndarray, y_start: int, series: np.ndarray
) -> np.ndarray:
    """Sorted usable values of each pixel's time series, rows ``y_start : y_start + R``.

    Fills ``series[r, x, c, :n]`` (R, W, C, T) and returns the counts ``n`` (R, W, C).
    """
    n_times, _, width, n_bands = values.shape
    n_rows = series.shape[0]
    counts = np.zeros((n_rows, width, n_bands), np.int64)
    for r in prange(n_rows):
        y = y_start + r
        for t in range(n_times):
            for x in range(width):
                if not valid[t, y, x]:
                    continue
                for c in range(n_bands):
                    v = values[t, y, x, c]
                    if not np.isfinite(v):
                        continue
                    j = counts[r, x, c]
                    while j > 0 and series[r, x, c, j - 1] > v:
                        series[r, x, c, j] = series[r, x, c, j - 1]
                        j -= 1
                    series[r, x, c, j] = v
                    counts[r, x, c] += 1
    return counts


@njit(cache=True, inline="always")
def _merge_update(
    cur: np.ndarray,
    n_cur: int,
    leaving: np.ndarray,
    n_leaving: int,
    entering: np.ndarray,
    n_entering: int,
    dst: np.ndarray,
) -> int:
    """``dst`` = sorted multiset ``cur[:n_cur] - leaving[:n_leaving] + entering[:n_entering]``; its size.

    All three are sorted and the leaving values are exact copies of values in ``cur``, so one pass
    suffices: walking ``cur`` in order, the smallest not yet removed value is always the next one to drop.
    """
    j = 0
    k = 0
    o = 0
    for i in range(n_cur):
        v = cur[i]
        if j < n_leaving and v == leaving[j]:
            j += 1
            continue
        while k < n_entering and entering[k] < v:
            dst[o] = entering[k]
            o += 1
            k += 1
        dst[o] = v
        o += 1
    while k < n_entering:
        dst[o] = entering[k]
        o += 1
        k += 1
    return o


@njit(parallel=True, cache=True)
def _pooled_kernel(
    series: np.ndarray,
    counts: np.ndarray,
    row0: int,
    y_start: int,
    y_stop: int,
    h: int,
    n_segments: int,
    out: np.ndarray,
) -> None:
    """Pooled statistics for image rows ``y_start:y_stop`` into ``out`` (H, W, 8*C).

    ``series[r, x, c, :counts[r, x, c]]`` are the sorted usable values of pixel (row0 + r, x), band c.
    Parallel over (band, segment of rows). Per column, the sorted values of the window rows ("strip") slide
    down the segment; per row, the window's sorted values slide along x; both by :func:`_merge_update`.
    """
    _, width, n_bands, n_times = series.shape
    height = out.shape[0]
    w = 2 * h + 1
    cap = w * n_times
    seg_len = (y_stop - y_start + n_segments - 1) // n_segments
    for task in prange(n_bands * n_segments):
        c = task // n_segments
        ys = y_start + (task % n_segments) * seg_len
        ye = min(y_stop, ys + seg_len)
        strips = np.empty((width, cap), np.float32)
        strip_n = np.zeros(width, np.int64)
        strips_next = np.empty((width, cap), np.float32)
        strip_n_next = np.zeros(width, np.int64)
        buf_a = np.empty(w * cap, np.float32)
        buf_b = np.empty(w * cap, np.float32)
        res = np.empty(N_STATS)
        for y in range(ys, ye):
            if y == ys:
                for x in range(width):
                    # merge the sorted series of the window rows, from the back, in place
                    n = 0
                    for yy in range(max(0, y - h), min(height, y + h + 1)):
                        r = yy - row0
                        m = counts[r, x, c]
                        i = n - 1
                        j = m - 1
                        o = n + m - 1
                        while j >= 0:
                            if i >= 0 and strips[x, i] > series[r, x, c, j]:
                                strips[x, o] = strips[x, i]
                                i -= 1
                            else:
                                strips[x, o] = series[r, x, c, j]
                                j -= 1
                            o -= 1
                        n += m
                    strip_n[x] = n
            else:
                r_out = y - h - 1 - row0
                r_in = y + h - row0
                for x in range(width):
                    n_out = counts[r_out, x, c] if y - h - 1 >= 0 else 0
                    n_in = counts[r_in, x, c] if y + h < height else 0
                    strip_n_next[x] = _merge_update(
                        strips[x],
                        strip_n[x],
                        series[max(r_out, 0), x, c],
                        n_out,
                        series[min(r_in, series.shape[0] - 1), x, c],
                        n_in,
                        strips_next[x],
                    )
                strips, strips_next = strips_next, strips
                strip_n, strip_n_next = strip_n_next, strip_n
            cur = buf_a
            dst = buf_b
            n = 0
            for x in range(-h, width):
                x_in = x + h
                x_out = x - h - 1
                n_in = strip_n[x_in] if x_in < width else 0
                n_out = strip_n[x_out] if x_out >= 0 else 0
                if n_in > 0 or n_out > 0:
                    n = _merge_update(
                        cur, n, strips[max(x_out, 0)], n_out, strips[min(x_in, width - 1)], n_in, dst
                    )
                    cur, dst = dst, cur
                if x < 0:
                    continue
                if n == 0:
                    for k in range(N_STATS):
                        out[y, x, c * N_STATS + k] = np.nan
                    continue
                _window_stats(cur, n, res)
                for k in range(N_STATS):
                    out[y, x, c * N_STATS + k] = res[k]


# ---------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------


def neighbourhood_statistics(
    values: np.ndarray, valid: np.ndarray, mode: Mode = "per_frame", window: int = 5
) -> np.ndarray:
    """Min, max, mean, median, std, Q1, Q3, span of each band over each pixel's window of valid values.

    :param values: (T, H, W, C) reflectances (computed as float32).
    :param valid: (T, H, W) bool, True for a usable observation.
    :param mode: ``"per_frame"`` (stats per frame, averaged over frames with data) or ``"pooled"``.
    :param window: odd window size (5 for the 5x5 baseline).
    :return: (H, W, 8*C) float32, band-major (see :func:`feature_names`); NaN where a pixel's window has
        no usable value at all.
    """
    values = np.asarray(values)
    valid = np.asarray(valid)
    _check_inputs(values, valid, mode, window)
    values = np.ascontiguousarray(values, dtype=np.float32)
    valid = np.ascontiguousarray(valid, dtype=bool)
    n_times, height, width, n_bands = values.shape
    h = int(window) // 2
    out = np.empty((height, width, N_STATS * n_bands), np.float32)
    if height == 0 or width == 0 or n_bands == 0:
        return out
    if mode == "per_frame":
        kernel: Any = _per_frame_kernel  # a numba dispatcher: its signature is the jitted function's
        kernel(values, valid, h, *_per_frame_tables(int(window)), out)
        return out

    # pooled: sorted per-pixel series for a block of rows plus its halo, bounded to POOLED_BLOCK_BYTES
    row_bytes = max(1, width * n_bands * max(n_times, 1) * 4)
    block = max(1, POOLED_BLOCK_BYTES // row_bytes - 2 * h)
    for y_start in range(0, height, block):
        y_stop = min(height, y_start + block)
        row0 = max(0, y_start - h)
        row1 = min(height, y_stop + h)
        series = np.empty((row1 - row0, width, n_bands, n_times), np.float32)
        counts = _sort_series_kernel(values, valid, row0, series)
        n_segments = max(1, min(y_stop - y_start, -(-4 * numba.get_num_threads() // n_bands)))
        _pooled_kernel(series, counts, row0, y_start, y_stop, h, n_segments, out)
    return out


def reference_neighbourhood_statistics(
    values: np.ndarray, valid: np.ndarray, mode: Mode = "per_frame", window: int = 5
) -> np.ndarray:
    """Slow plain-numpy reference of :func:`neighbourhood_statistics` (same conventions, float64 maths).

    A python loop over frames, pixels and bands with ``np.quantile``/``np.std``; meant for tests and
    benchmarks on small arrays only.
    """
    values = np.asarray(values)
    valid = np.asarray(valid)
    _check_inputs(values, valid, mode, window)
    vals = values.astype(np.float32).astype(np.float64)
    usable = valid.astype(bool)[..., None] & np.isfinite(vals)
    n_times, height, width, n_bands = vals.shape
    h = window // 2

    def stats(x: np.ndarray) -> np.ndarray:
        q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
        return np.array([x.min(), x.max(), x.mean(), median, x.std(), q1, q3, x.max() - x.min()])

    out = np.full((height, width, n_bands, N_STATS), np.nan)
    for y in range(height):
        ys = slice(max(0, y - h), y + h + 1)
        for x in range(width):
            xs = slice(max(0, x - h), x + h + 1)
            for c in range(n_bands):
                win = vals[:, ys, xs, c]
                use = usable[:, ys, xs, c]
                if mode == "pooled":
                    if use.any():
                        out[y, x, c] = stats(win[use])
                    continue
                per_frame = [stats(win[t][use[t]]) for t in range(n_times) if use[t].any()]
                if per_frame:
                    out[y, x, c] = np.mean(per_frame, axis=0)
    return out.reshape(height, width, n_bands * N_STATS).astype(np.float32)


class NeighbourhoodStatisticsTask(EOTask):
    """Adds the (H, W, 8*C) neighbourhood statistics of a cloud-masked stack as a timeless feature.

    The feature names (band-major, e.g. ``B04_median``) go to ``eopatch.meta_info[f"{name}_FEATURES"]``
    where ``name`` is the output feature's name (``STATS5X5_FEATURES`` by default).
    """

    def __init__(
        self,
        input_feature: tuple[FeatureType, str] = (FeatureType.DATA, "REFLECTANCE"),
        valid_feature: tuple[FeatureType, str] = (FeatureType.MASK, "VALID"),
        output_feature: tuple[FeatureType, str] = (FeatureType.DATA_TIMELESS, "STATS5X5"),
        mode: Mode = "per_frame",
        window: int = 5,
        band_names: Sequence[str] | None = None,
    ) -> None:
        """
        :param input_feature: (T, H, W, C) reflectances.
        :param valid_feature: (T, H, W, 1) bool mask, True for usable observations.
        :param output_feature: timeless data feature receiving the statistics.
        :param mode: ``"per_frame"`` or ``"pooled"``, see :func:`neighbourhood_statistics`.
        :param window: odd window size.
        :param band_names: names of the C bands; default the contract's 12 bands when C == 12, else
            ``band00, band01, ...``.
        """
        _check_options(mode, window)
        self.input_feature = self.parse_feature(input_feature, allowed_feature_types=[FeatureType.DATA])
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.mode = mode
        self.window = int(window)
        self.band_names = tuple(band_names) if band_names is not None else None

    def _names(self, n_bands: int) -> list[str]:
        if self.band_names is not None:
            if len(self.band_names) != n_bands:
                raise ValueError(
                    f"{len(self.band_names)} band_names given but {self.input_feature[1]} has {n_bands} bands"
                )
            return feature_names(self.band_names)
        if n_bands == len(BAND_NAMES):
            return feature_names(BAND_NAMES)
        return feature_names([f"band{i:02d}" for i in range(n_bands)])

    def execute(self, eopatch: EOPatch) -> EOPatch:
        """Compute the statistics of ``input_feature`` where ``valid_feature`` is True."""
        values = eopatch[self.input_feature]
        valid = eopatch[self.valid_feature]
        if valid.ndim != 4 or valid.shape[-1] != 1:
            raise ValueError(f"{self.valid_feature[1]} must have shape (T, H, W, 1), got {valid.shape}")
        if valid.shape[:3] != values.shape[:3]:
            raise ValueError(
                f"{self.valid_feature[1]} {valid.shape} and {self.input_feature[1]} {values.shape} disagree "
                "in (T, H, W)"
            )
        names = self._names(values.shape[-1])
        eopatch[self.output_feature] = neighbourhood_statistics(
            values, valid[..., 0].astype(bool, copy=False), mode=self.mode, window=self.window
        )
        eopatch.meta_info[f"{self.output_feature[1]}_FEATURES"] = names
        LOGGER.debug("%s: %d neighbourhood statistics (%s)", self.output_feature[1], len(names), self.mode)
        return eopatch
