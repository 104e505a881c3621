"""Length control's choice of alpha, compiled: per language, the alpha of the grid 0, step, ...,
alpha_max for which the mean len(chosen) - len(rejected) of the max/min pairs is closest to zero.

For every alpha of the grid and every prompt, the max/min pair is the first best and the first
worst of reward - alpha * length, computed as numpy computes it (alpha * length rounded, then the
difference; no fused multiply-add). A candidate that an earlier one matches or beats in both
reward and length is never the first best for any alpha >= 0 (rounding is monotone), so each
prompt first drops those, for the best and for the worst. The first best then changes only where
two of the rest cross: the grid is evaluated wherever rounding could decide an order, and once
for each stretch between crossings (_add_extremes). Lengths are characters or tokens, whole
numbers, so the sums are exact. numba compiles the loops (cached) and runs them without the GIL,
so languages run on threads. tests/test_pairs_columnar.py checks the choice against every alpha
evaluated.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _front(reward, length, s, n, best, out_r, out_l):
    """Keep the candidates s..s+n-1 that no earlier one matches or beats (for the best: reward
    >= and length <=; for the worst: reward <= and length >=); return how many."""
    w = 0
    for c in range(n):
        r, ln = reward[s + c], length[s + c]
        beaten = False
        for j in range(c):
            rj, lj = reward[s + j], length[s + j]
            if (rj >= r and lj <= ln) if best else (rj <= r and lj >= ln):
                beaten = True
                break
        if not beaten:
            out_r[w] = r
            out_l[w] = ln
            w += 1
    return w


TOL = 1e-9
"""Two adjusted rewards closer than this (relative to their terms' sizes) at an alpha are "not
clear": rounding (about 1e-16 relative) could order them either way there, so that alpha is
evaluated as numpy would; farther apart, the exact order is the rounded one."""


@numba.njit(nogil=True, cache=True)
def _first_extreme(fr, fl, m, a, best):
    """The length of the first best (or worst) of fr - a * fl over the m kept, rounded as numpy
    rounds it."""
    top, top_len = fr[0] - a * fl[0], fl[0]
    for c in range(1, m):
        v = fr[c] - a * fl[c]
        if (v > top) if best else (v < top):
            top, top_len = v, fl[c]
    return top_len


@numba.njit(nogil=True, cache=True)
def _clear(fr, fl, m, a):
    """Whether every two of the m kept are ordered at alpha a by more than TOL."""
    for i in range(m):
        for j in range(i + 1, m):
            d = (fr[i] - fr[j]) - a * (fl[i] - fl[j])
            scale = abs(fr[i]) + abs(fr[j]) + a * (abs(fl[i]) + abs(fl[j])) + 1.0
            if not abs(d) > TOL * scale:
                return False
    return True


@numba.njit(nogil=True, cache=True)
def _set(fr, fl, m, alphas, k, best, sign, steps, prev):
    """Evaluate alphas[k]; record the change from `prev` at k; return the length."""
    v = _first_extreme(fr, fl, m, alphas[k], best)
    steps[k] += sign * (v - prev)
    return v


@numba.njit(nogil=True, cache=True)
def _add_extremes(fr, fl, m, alphas, best, sign, steps, cuts):
    """steps[k] += sign * the change at k of the first best (worst) length over the grid.

    The grid is cut at the first point at or after each crossing of two of the m kept. Within a
    stretch between cuts no two cross (a point exactly at a crossing is never clear), so their
    order, and the first best, is fixed; where every pair is clear at both ends of a stretch it
    is clear inside it (the gaps and TOL's bound are linear in alpha), and one evaluation stands
    for the stretch. Ends that are not clear are evaluated alone and the stretch shrinks."""
    k_all = len(alphas)
    if m == 1:
        steps[0] += sign * fl[0]
        return
    nc = 0
    for i in range(m):
        for j in range(i + 1, m):
            if fl[i] != fl[j]:
                x = (fr[i] - fr[j]) / (fl[i] - fl[j])
                if alphas[0] <= x <= alphas[k_all - 1]:
                    cuts[nc] = np.searchsorted(alphas, x)  # the first grid point >= x
                    nc += 1
    cuts[:nc].sort()
    prev = 0.0
    k = 0
    for ci in range(nc + 1):
        stop = cuts[ci] if ci < nc else k_all
        if stop > k:  # the stretch k .. stop - 1
            lo, hi = k, stop - 1
            while lo <= hi and not _clear(fr, fl, m, alphas[lo]):
                prev = _set(fr, fl, m, alphas, lo, best, sign, steps, prev)
                lo += 1
            if lo <= hi:
                t = hi
                while t > lo and not _clear(fr, fl, m, alphas[t]):
                    t -= 1
                prev = _set(fr, fl, m, alphas, lo, best, sign, steps, prev)  # holds to t
                for u in range(t + 1, hi + 1):
                    prev = _set(fr, fl, m, alphas, u, best, sign, steps, prev)
            k = stop


@numba.njit(nogil=True, cache=True)
def _length_differences(reward, length, starts, sizes, alphas, total):
    """total[k] += len(first best) - len(first worst) at alphas[k], summed over the prompts, as
    changes along the grid summed at the end (lengths are whole numbers: exact in any order)."""
    widest = 1
    for n in sizes:
        widest = max(widest, n)
    br, bl = np.empty(widest), np.empty(widest)
    wr, wl = np.empty(widest), np.empty(widest)
    cuts = np.empty(widest * widest, np.int64)
    steps = np.zeros(len(alphas))
    for p in range(len(starts)):
        nb = _front(reward, length, starts[p], sizes[p], True, br, bl)
        nw = _front(reward, length, starts[p], sizes[p], False, wr, wl)
        _add_extremes(br, bl, nb, alphas, True, 1.0, steps, cuts)
        _add_extremes(wr, wl, nw, alphas, False, -1.0, steps, cuts)
    run = 0.0
    for k in range(len(alphas)):
        run += steps[k]
        total[k] += run


def choose_alpha(reward, length, starts, sizes, alphas) -> tuple[int, np.ndarray]:
    """Index into `alphas` minimising |mean length difference| of max/min pairs, and the means;
    the prompts' kept candidates are reward[starts[p] : starts[p] + sizes[p]] (and length)."""
    total = np.zeros(len(alphas))
    _length_differences(np.ascontiguousarray(reward, np.float64),
                        np.ascontiguousarray(length, np.float64), np.asarray(starts, np.int64),
                        np.asarray(sizes, np.int64), np.ascontiguousarray(alphas, np.float64),
                        total)  # fmt: skip
    mean = total / len(starts)
    return int(np.argmin(np.abs(mean))), mean
