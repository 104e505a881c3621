"""What pairing needs from the response texts, in one compiled pass over their UTF-8 bytes.

Per text: the number of words as str.split() cuts them, the length in characters, whether the share
of repeated word n-grams may exceed a limit, and a 64-bit key of its normalised text
(`" ".join(text.lower().split())`). The pass is a numba kernel (compiled on first use and cached) that
releases the GIL, so batches run on threads; it reads each byte once.

Two of these are screens, confirmed in Python where they flag a text, so that results are exactly
the per-row definitions':
- repetition counts distinct n-grams by a hash of their words (32 bits kept): a collision can
  only lower the count, so the screen flags a superset (textfeatures.repeated_ngram_ratio
  confirms);
- texts with equal normalised text have equal keys: each word's key hashes its characters folded
  to lower case, keeping only the code points below U+0800 of each lower-cased character (Latin,
  Greek, Cyrillic, Armenian, Hebrew, Arabic...; the others weigh as nothing), with final sigma
  folded to sigma. Equal keys are then compared by their normalised text.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")  # fmt: skip
"""Every character str.split() and str.strip() treat as whitespace (str.isspace)."""
FOLD_LIMIT = 0x800
"""Case folding keeps the code points below this (those of one- and two-byte UTF-8)."""
FOLD_EXCEPTIONS = (0x1E9E, 0x2126, 0x212A, 0x212B, 0x2C62, 0x2C64, 0x2C6D, 0x2C6E, 0x2C6F, 0x2C70,
                   0x2C7E, 0x2C7F, 0xA78D, 0xA7AA, 0xA7AB, 0xA7AC, 0xA7AD, 0xA7AE, 0xA7B0, 0xA7B1,
                   0xA7B2, 0xA7C5)  # fmt: skip
"""The code points at or above FOLD_LIMIT whose lower case has one below it (KELVIN SIGN lowers
to "k"). tests/test_textscan.py recomputes the list over every code point of this Python."""


@functools.cache
def fold_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, high_fold): low[c] holds the folded code points of c < FOLD_LIMIT (-1 pads);
    high (sorted) and high_fold the exceptions at or above it."""

    def fold(c: int) -> list[int]:
        out = [ord(x) for x in chr(c).lower() if ord(x) < FOLD_LIMIT]
        return [0x3C3 if x == 0x3C2 else x for x in out]  # lower() picks the final sigma by context

    low = np.full((FOLD_LIMIT, 2), -1, np.int32)
    for c in range(FOLD_LIMIT):
        f = fold(c)
        low[c, : len(f)] = f
    high = np.array(FOLD_EXCEPTIONS, np.int32)
    high_fold = np.array([fold(c)[0] for c in FOLD_EXCEPTIONS], np.int32)
    return low, high, high_fold


@numba.njit(nogil=True, cache=True)
def _mix(h):
    """splitmix64's finaliser: every input bit reaches every output bit."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@numba.njit(nogil=True, cache=True)
def _is_space(c):
    if c <= 0x20:
        return c == 0x20 or 9 <= c <= 13 or 0x1C <= c <= 0x1F
    if c < 0x85:
        return False
    if c < 0x1680:
        return c == 0x85 or c == 0xA0
    return (c == 0x1680 or 0x2000 <= c <= 0x200A or c == 0x2028 or c == 0x2029 or c == 0x202F
            or c == 0x205F or c == 0x3000)  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _char(data, i):
    """(code point, bytes) of the multi-byte UTF-8 character starting at data[i]."""
    b = data[i]
    if b < 0xE0:
        return (np.int64(b & 0x1F) << 6) | np.int64(data[i + 1] & 0x3F), 2
    if b < 0xF0:
        return ((np.int64(b & 0x0F) << 12) | (np.int64(data[i + 1] & 0x3F) << 6)
                | np.int64(data[i + 2] & 0x3F)), 3  # fmt: skip
    return ((np.int64(b & 0x07) << 18) | (np.int64(data[i + 1] & 0x3F) << 12)
            | (np.int64(data[i + 2] & 0x3F) << 6) | np.int64(data[i + 3] & 0x3F)), 4  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _scan(offsets, data, n, limit, low, high, high_fold, words, chars, maybe_rep, key):
    """Fill words, chars, maybe_rep and key for the rows of (offsets, data). A row is read as
    runs of whitespace and words, one tight loop each, ASCII through a table; the per-word work
    (the key, the n-gram count) happens once at each word's end."""
    rows = len(offsets) - 1
    longest = 0
    for r in range(rows):
        longest = max(longest, offsets[r + 1] - offsets[r])
    size = 8
    while size < longest + 2:
        size *= 2
    # a row's distinct n-grams, open addressing; an entry is (row + 1) << 32 | 32 bits of the
    # n-gram's hash, so rows need no clearing; a row has at most (bytes + 1) / 2 words, so the
    # table is at most half full
    table = np.zeros(size, np.uint64)
    ring = np.zeros(n, np.uint64)  # the last n words' hashes
    prime = np.uint64(0x100000001B3)
    spread = np.uint64(0x9E3779B97F4A7C15)
    spread_n = np.uint64(1)
    for _ in range(n):
        spread_n *= spread
    ascii = np.zeros(128, np.int64)  # -1: whitespace; else the folded character + 1
    for b in range(128):
        ascii[b] = -1 if _is_space(b) else low[b, 0] + 1
    low32 = np.uint64(0xFFFFFFFF)
    for r in range(rows):
        lo, hi = offsets[r], offsets[r + 1]
        mask = 8
        while mask < hi - lo + 2:
            mask *= 2
        mask -= 1
        tag = np.uint64(r + 1) << np.uint64(32)
        nw = 0
        nc = 0
        distinct = 0
        row_key = np.uint64(0)
        gram = np.uint64(0)  # sum of the last n words' hashes times spread ** (age)
        at = 0  # where the next word's hash goes in ring (the oldest is there)
        i = lo
        while True:
            while i < hi:  # whitespace
                b = data[i]
                if b < 0x80:
                    if ascii[b] >= 0:
                        break
                    step = 1
                else:
                    c, step = _char(data, i)
                    if not _is_space(c):
                        break
                i += step
                nc += 1
            if i >= hi:
                break
            wh = np.uint64(0)  # the word's characters, for repetition
            wf = np.uint64(0)  # its folded characters, for the key
            while i < hi:  # a word
                b = data[i]
                if b < 0x80:
                    t = ascii[b]
                    if t < 0:
                        break
                    wh = wh * prime + np.uint64(b + 1)
                    wf = wf * prime + np.uint64(t)
                    i += 1
                    nc += 1
                    continue
                c, step = _char(data, i)
                if _is_space(c):
                    break
                wh = wh * prime + np.uint64(c + 1)
                if c < 0x800:
                    if low[c, 0] >= 0:  # U+023A and U+023E lower above FOLD_LIMIT
                        wf = wf * prime + np.uint64(low[c, 0] + 1)
                    if low[c, 1] >= 0:  # U+0130 lowers to two
                        wf = wf * prime + np.uint64(low[c, 1] + 1)
                elif c >= high[0]:
                    x = np.searchsorted(high, c)
                    if x < len(high) and high[x] == c:
                        wf = wf * prime + np.uint64(high_fold[x] + 1)
                i += step
                nc += 1
            row_key = row_key * prime + _mix(wf)
            nw += 1
            gram = gram * spread + wh
            if nw > n:
                gram -= ring[at] * spread_n  # the word n back leaves the n-gram
            ring[at] = wh
            at = at + 1 if at + 1 < n else 0
            if nw >= n:
                g = _mix(gram)
                entry = tag | (g & low32)
                slot = np.int64(g >> np.uint64(32)) & mask
                while True:
                    v = table[slot]
                    if v == entry:
                        break
                    if v & ~low32 != tag:
                        table[slot] = entry
                        distinct += 1
                        break
                    slot = (slot + 1) & mask
        words[r] = nw
        chars[r] = nc
        key[r] = _mix(row_key + np.uint64(nw))
        maybe_rep[r] = nw >= 2 * n and 1.0 - distinct / (nw - n + 1) > limit


def utf8(arr) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of an Arrow string array: row r is data[offsets[r]:offsets[r + 1]]."""
    import pyarrow as pa

    arr = arr.cast(pa.large_string())
    _, offsets, data = arr.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def scan(arr, n: int, limit: float):
    """(words, characters, may be repetitive, normalised-text key) of each text of an Arrow string
    array; nulls count as empty texts."""
    offsets, data = utf8(arr)
    rows = len(offsets) - 1
    words = np.zeros(rows, np.int64)
    chars = np.zeros(rows, np.int64)
    maybe = np.zeros(rows, np.bool_)
    key = np.zeros(rows, np.uint64)
    low, high, high_fold = fold_tables()
    _scan(offsets, data, max(int(n), 1), float(limit), low, high, high_fold, words, chars, maybe,
          key)  # fmt: skip
    return words, chars, maybe, key
