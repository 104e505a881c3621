"""Language QA: detect each candidate's language offline with lingua, restricted to the languages
in play (plus English), so off-target responses can be counted and kept out of pairs.

    lid_lang, lid_score = identify(["Hola, ¿qué tal?"], languages=["en", "es"])  # ["es"], [0.9...]
"""

from __future__ import annotations

from collections.abc import Sequence


def _lingua_codes(languages: Sequence[str]) -> dict[str, object]:
    """lingua's codes for `languages` plus English, leaving out the ones lingua cannot detect."""
    from lingua import IsoCode639_1

    out = {}
    for code in sorted(set(languages) | {"en"}):
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is not None:
            out[code] = iso
    return out


def identify(
    texts: Sequence[str], languages: Sequence[str]
) -> tuple[list[str | None], list[float]]:
    """The most likely language (ISO 639-1) of each text among `languages` (+ English), with its
    confidence; None and 0.0 for empty text or when fewer than two languages can be told apart."""
    codes = _lingua_codes(languages)
    if len(codes) < 2:
        return [None] * len(texts), [0.0] * len(texts)
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes.values()).build()
    values = detector.compute_language_confidence_values_in_parallel(list(texts))
    langs: list[str | None] = []
    scores: list[float] = []
    for text, ranked in zip(texts, values):
        if not text.strip() or not ranked or ranked[0].value == 0:
            langs.append(None)
            scores.append(0.0)
        else:
            langs.append(ranked[0].language.iso_code_639_1.name.lower())
            scores.append(float(ranked[0].value))
    return langs, scores


def judged(found: Sequence[str | None], wanted: Sequence[str], languages: Sequence[str]):
    """`found` with None where the wanted language is one lingua cannot detect (no, kn, ...): such
    a text would be labelled as one of the others, so it is not judged rather than misjudged."""
    detectable = set(_lingua_codes(languages))
    return [got if want in detectable else None for got, want in zip(found, wanted)]


def add_lid(candidates, languages: Sequence[str]):
    """Candidates with `lid_lang` and `lid_score` (replaced if present). Rows whose own language
    lingua cannot detect get lid_lang None, so they are never counted off-target."""
    langs, scores = identify(candidates["response"], languages)
    langs = judged(langs, candidates["lang"], languages)
    for name in ("lid_lang", "lid_score"):
        if name in candidates.column_names:
            candidates = candidates.remove_columns(name)
    return candidates.add_column("lid_lang", langs).add_column("lid_score", scores)
