"""Language QA: detect each candidate's language offline with lingua, restricted to the languages
in play (plus English), so off-target responses can be counted and kept out of pairs.

    lid_lang, lid_score = identify(["Hola, ¿qué tal?"], languages=["en", "es"])  # ["es"], [0.9...]
    ICR_LID_WORKERS=1 icr-data build ...   # language ID on one thread (default: every core)

Texts go to lingua's multi-threaded batch call (its Rust thread pool) in chunks of `CHUNK`, so a
million candidates keep only one chunk's texts and confidence lists in memory (all of them at
once took 2.7 kB a text, besides the texts): pass a dataset's column (`rows["response"]`), which
is sliced a chunk at a time, rather than a list of every text. Worker processes were measured too: they give the same rate less their start-up
and pickling, and each loads the models again. The thread count is `workers`, else
$ICR_LID_WORKERS, else the cores this process may use; lingua fixes it at its first parallel call
in a process, so a later call asking for another count gets the first one. With one worker each
text is detected on its own on this thread. Both paths give the same languages; lingua sums
confidences in threads, so its confidences may differ in their last bits (1e-15) between them:
`lid_score` keeps 6 decimals (SCORE_DIGITS), which makes identical builds byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

from icr_data.base.files import cores

WORKERS_ENV = "ICR_LID_WORKERS"
CHUNK = 8192  # texts per batch call: ~20 MB of lingua's result lists, seconds of work


def _lingua_codes(languages: Sequence[str]) -> dict[str, object]:
    """lingua's codes for `languages` plus English, leaving out the ones lingua cannot detect."""
    from lingua import IsoCode639_1

    out = {}
    for code in sorted(set(languages) | {"en"}):
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is not None:
            out[code] = iso
    return out


def default_workers() -> int:
    """$ICR_LID_WORKERS if set, else the cores this process may run on."""
    if env := os.environ.get(WORKERS_ENV, "").strip():
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number, got {env!r}") from None
        return max(1, n)
    return cores()


@lru_cache(maxsize=8)
def _detector(isos: tuple):
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()


SCORE_DIGITS = 6
"""lid_score is kept to 6 decimals: lingua sums confidences in threads, in an order that varies,
so the last bits differ between runs; rounded, identical builds write identical bytes."""


def _top(text: str, ranked) -> tuple[str | None, float]:
    if not text.strip() or not ranked or ranked[0].value == 0:
        return None, 0.0
    return ranked[0].language.iso_code_639_1.name.lower(), round(ranked[0].value, SCORE_DIGITS)


def identify(
    texts: Sequence[str], languages: Sequence[str], workers: int | None = None
) -> tuple[list[str | None], list[float]]:
    """The most likely language (ISO 639-1) of each text among `languages` (+ English), with its
    confidence; None and 0.0 for empty text or when fewer than two languages can be told apart.
    `workers` threads (default: `default_workers()`); see the module docstring."""
    codes = _lingua_codes(languages)
    if len(codes) < 2:
        return [None] * len(texts), [0.0] * len(texts)
    detector = _detector(tuple(codes.values()))
    workers = workers or default_workers()
    if 1 < workers != cores():  # lingua's pool reads it at its first parallel call; default: cores
        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    top: list[tuple[str | None, float]] = []
    for start in range(0, len(texts), CHUNK):  # a dataset's column is read a chunk at a time
        chunk = list(texts[start : start + CHUNK])
        if workers > 1:
            ranked = detector.compute_language_confidence_values_in_parallel(chunk)
        else:
            ranked = map(detector.compute_language_confidence_values, chunk)
        top.extend(_top(t, r) for t, r in zip(chunk, ranked))
    return [lang for lang, _ in top], [score for _, score in top]


def judged(found: Sequence[str | None], wanted: Sequence[str], languages: Sequence[str]):
    """`found` with None where the wanted language is one lingua cannot detect (no, kn, ...): such
    a text would be labelled as one of the others, so it is not judged rather than misjudged."""
    detectable = set(_lingua_codes(languages))
    return [got if want in detectable else None for got, want in zip(found, wanted)]
