"""The compiled text pass pairing screens with (icr_data/pairing/textscan.py), against Python's own
definitions: str.split() words, len() characters, the repeated n-gram share, normalised text."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from icr_data.pairing.textfeatures import normalise, repeated_ngram_ratio
from icr_data.pairing.textscan import FOLD_EXCEPTIONS, FOLD_LIMIT, WHITESPACE, scan

CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def test_the_tables_are_this_pythons_unicode():
    """WHITESPACE is str.isspace; lower() neither makes nor unmakes whitespace (so lower-casing
    and splitting commute); FOLD_EXCEPTIONS are exactly the characters at or above FOLD_LIMIT
    whose lower case has one below it. A Python with a newer Unicode fails here first."""
    chars = [chr(c) for c in CODE_POINTS]
    assert {c for c in chars if c.isspace()} == set(WHITESPACE)
    assert all(c.isspace() == any(x.isspace() for x in c.lower()) for c in chars)
    assert all(c.lower() == c for c in WHITESPACE)
    high = [
        ord(c)
        for c in chars
        if ord(c) >= FOLD_LIMIT and any(ord(x) < FOLD_LIMIT for x in c.lower())
    ]
    assert tuple(high) == FOLD_EXCEPTIONS


ALPHABET = list("aAbBcC xyz") + ["\u00c9", "\u00e9", "\u03a3", "\u03c3", "\u03c2", "\u0130", "i\u0307",
            "\u212a", "k", "\u0416", "\u0436", "\u4e2d", "\U0001f600", "\u3000", "\u00a0", "\t", "\n",
            "\x1c", "\u2028", "\u1e9e", "\u00df", "\u0391\u03a3", "  "]  # fmt: skip


def _random_texts(rng, count):
    texts = []
    for _ in range(count):
        words = [rng.choice(["the", "cat", "Σοφία", "Кот", "İstanbul", "中文", "KELVIN", "ǅ"])
                 for _ in range(rng.randint(0, 30))]  # fmt: skip
        text = "".join(w + rng.choice([" ", "  ", "\u3000", "\n", "\u00a0", "\x1f"]) for w in words)
        text += "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.2:  # repetitive: a phrase again and again
            text = text[: rng.randint(1, 40)] * rng.randint(2, 9)
        texts.append(text if rng.random() < 0.9 else rng.choice(["", "   ", "\u2029"]))
    return texts


def _variant(rng, text):
    """The same normalised text: other case, other whitespace between and around words."""
    words = [w.upper() if rng.random() < 0.3 else w.lower() if rng.random() < 0.3 else w
             for w in text.split()]  # fmt: skip
    glue = [rng.choice([" ", "\t", "\u3000 ", "\u2028"]) for _ in words]
    return rng.choice(["", " ", "\n"]) + "".join(w + g for w, g in zip(words, glue))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_words_characters_and_repetition_screen_match_python(seed):
    rng = random.Random(seed)
    texts = _random_texts(rng, 400) + [None]
    for n, limit in [(4, 0.5), (2, 0.2), (1, 0.0)]:
        words, chars, maybe, _ = scan(pa.array(texts, pa.string()), n, limit)
        plain = [t or "" for t in texts]
        assert words.tolist() == [len(t.split()) for t in plain]
        assert chars.tolist() == [len(t) for t in plain]
        truth = np.array([repeated_ngram_ratio(t, n) > limit for t in plain])
        assert not (truth & ~maybe).any()  # a superset of the repetitive
        assert truth.sum() > 0 and (maybe & ~truth).sum() <= 1  # and, by hashes, (almost) no more


def test_equal_normalised_texts_have_equal_keys_and_others_differ():
    """Case (final sigma, dotted capital I, Kelvin sign, capital sharp s) and whitespace never
    change the key; different normalised texts (almost) always do."""
    rng = random.Random(7)
    base = [t for t in _random_texts(rng, 300) if t.split()]
    variants = [_variant(rng, t) for t in base]
    same = [normalise(a) == normalise(b) for a, b in zip(base, variants)]
    assert sum(same) > 0.8 * len(base)  # upper() can change a text's lower case (final sigma)
    base = [t for t, ok in zip(base, same) if ok]
    variants = [t for t, ok in zip(variants, same) if ok]
    special = ["ΣΟΦΙΑΣ x", "σοφιας X", "İ", "i\u0307", "\u212a", "k", "\u1e9e", "\u00df",
               "Straße", "STRAẞE"]  # fmt: skip
    texts = base + variants + special
    assert [normalise(a) for a in base] == [normalise(b) for b in variants]
    _, _, _, key = scan(pa.array(texts), 4, 0.5)
    by_norm: dict[str, set] = {}
    for t, k in zip(texts, key.tolist()):
        by_norm.setdefault(normalise(t), set()).add(k)
    assert all(len(keys) == 1 for keys in by_norm.values())
    assert len({next(iter(k)) for k in by_norm.values()}) == len(by_norm)


def test_texts_of_one_letter_words_fill_the_ngram_table_to_its_bound():
    """Words of one byte are the most a text's bytes can hold: the screen's table is then near
    half full, and the screen still agrees with the count (distinct n-grams, then repeated)."""
    rng = random.Random(3)
    fresh = [" ".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(k))
             for k in (2000, 3000, 8191)]  # fmt: skip
    again = [t[: len(t) // 8] * 8 for t in fresh]
    words, _, maybe, _ = scan(pa.array(fresh + again), 4, 0.5)
    assert words.tolist() == [len(t.split()) for t in fresh + again]
    truth = [repeated_ngram_ratio(t, 4) > 0.5 for t in fresh + again]
    assert truth == [False] * 3 + [True] * 3
    assert maybe.tolist() == truth


def test_a_repeated_long_word_is_caught_wherever_it_stands():
    """Equal words hash equal at any position and across chunk offsets (an exact 64-bit sum once
    made equal long words differ, so the screen missed repetitive rows)."""
    text = "wonderful x wonderful yy wonderful\u3000marvellous " * 6
    arr = pa.array(["pad", "", text, "  wonderful  ", text[3:]]).slice(1)
    words, _, maybe, _ = scan(arr, 2, 0.3)
    assert words.tolist() == [0, len(text.split()), 1, len(text[3:].split())]
    assert maybe.tolist() == [False, True, False, True]


def test_every_whitespace_character_and_no_other_ends_a_word():
    """The kernel's own whitespace test against WHITESPACE (str.isspace), character by character
    over the first 0x3100 code points (every whitespace lies below) and the planes' ends."""
    chars = [chr(c) for c in [*range(1, 0x3100), 0xFFFD, 0x10FFFF] if not 0xD800 <= c < 0xE000]
    words, chars_, _, _ = scan(pa.array([f"a{c}b" for c in chars]), 4, 0.5)
    assert words.tolist() == [1 if c not in WHITESPACE else 2 for c in chars]
    assert chars_.tolist() == [3] * len(chars)
