"""Length control's choice of alpha, compiled: per language, the alpha of the grid 0, step, ...,
alpha_max for which the mean len(chosen) - len(rejected) of the max/min pairs is closest to zero.

For every alpha of the grid and every prompt, the max/min pair is the first best and the first
worst of reward - alpha * length, computed as numpy computes it (alpha * length rounded, then the
difference; no fused multiply-add). A candidate that an earlier one matches or beats in both
reward and length is never the first best for any alpha >= 0 (rounding is monotone), so each
prompt first drops those, for the best and for the worst; the rest is a loop over the grid that
numba compiles (cached) and runs without the GIL, so languages run on threads.
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


@numba.njit(nogil=True, cache=True)
def _length_differences(reward, length, starts, sizes, alphas, total):
    """total[k] += len(first best) - len(first worst) at alphas[k], summed over the prompts."""
    widest = 1
    for n in sizes:
        widest = max(widest, n)
    br, bl = np.empty(widest), np.empty(widest)
    wr, wl = np.empty(widest), np.empty(widest)
    for p in range(len(starts)):
        nb = _front(reward, length, starts[p], sizes[p], True, br, bl)
        nw = _front(reward, length, starts[p], sizes[p], False, wr, wl)
        for k in range(len(alphas)):
            a = alphas[k]
            top, top_len = br[0] - a * bl[0], bl[0]
            for c in range(1, nb):
                v = br[c] - a * bl[c]
                if v > top:
                    top, top_len = v, bl[c]
            low, low_len = wr[0] - a * wl[0], wl[0]
            for c in range(1, nw):
                v = wr[c] - a * wl[c]
                if v < low:
                    low, low_len = v, wl[c]
            total[k] += top_len - low_len  # whole numbers: exact in any order


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
