"""Quality gates for machine-translated prompts: pure functions, no model (translate.py runs them).

    gate_reasons("Name 3 fruits.", "Nenne 3 Früchte.", "de", detected="de")  # [] (passes)

Gates, in this order (GATES); the first one failed is a failure's `reason`, all are `reasons`:
  empty           the output is blank (nothing else is judged)
  truncated       generation stopped at max_tokens (finish_reason "length")
  answered        answered instead of translated: (a) the output opens with a reply phrase that
                  the source does not open with ("Sure", "Here is", "Claro", "Voici", "Конечно",
                  "Translation:", ...), or (b) it holds the whole English source (normalised, >= 2
                  words) plus more: the prompt echoed, then answered, or (c) the source asks
                  (ends with "?" or opens with a question word or an imperative such as "write",
                  "explain", "list"), is >= min_ratio_chars long, and length ratio > the upper bound
  wrong_language  lingua (langid.py, restricted to English + the target languages) names another
                  language for the output with its protected spans removed (judged only when >= 12
                  letters remain), or the output is the source copied (same normalised text,
                  >= 2 words)
  length_ratio    len(output) / len(source), in characters, outside the language's [lo, hi]
                  (default 0.5-2.5); sources under min_ratio_chars (10) characters are not judged
  code_block, inline_code, url, placeholder, number
                  every such span of the source occurs in the output at least as often, verbatim:
                  ```fenced blocks```, `inline code`, http(s):// and www. URLs, placeholders
                  {name} {0} {} {{x}} %s %d %(name)s and <tags>; numbers are compared by their
                  digits, so a locale's 1.000, 1 000 or 3,5 matches 1,000 or 3.5
Spans are taken in that order and each kind is cut out before the next is looked for, so a number
inside a URL or a code block is judged as part of it, not twice.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

GATES = ("empty", "truncated", "answered", "wrong_language", "length_ratio",
         "code_block", "inline_code", "url", "placeholder", "number")  # fmt: skip

_SPANS = (
    ("code_block", re.compile(r"```.*?(?:```|\Z)", re.S)),  # an unclosed fence runs to the end
    ("inline_code", re.compile(r"`[^`\n]+`")),
    ("url", re.compile(r"(?:https?://|www\.)[^\s<>\"'`]+")),
    ("placeholder", re.compile(
        r"\{\{[^{}]*\}\}|\{\w*\}|%(?:\(\w+\))?[-+#0]?\d*(?:\.\d+)?[sdifr]|</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>"
    )),
    ("number", re.compile(r"\d+(?:[.,]\d+)*")),
)  # fmt: skip
_GROUPED = re.compile(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:[.,]\d+)?(?![\d.,])")
# Reply openers in English and the paper's languages; `(?!\w)` so "Okayama" is not "okay".
_OPENERS = re.compile(
    r"^(?:sure|certainly|of course|absolutely|okay|ok|here is|here's|here are|i'm sorry|"
    r"i am sorry|i can't|i cannot|as an ai|great question|translation\s*:|claro|por supuesto|"
    r"aquí tienes|aquí está|traducción\s*:|natürlich|hier ist|hier sind|übersetzung\s*:|"
    r"bien sûr|voici|traduction\s*:|конечно|вот|перевод\s*:)(?!\w)",
    re.I,
)
_ASKS = re.compile(
    r"^\W*(?:what|how|why|who|whom|whose|when|where|which|can|could|would|should|is|are|do|"
    r"does|did|will|write|explain|describe|list|name|give|tell|create|generate|summari[sz]e|"
    r"translate|compose|suggest|provide|compare|find|calculate|make|help|draft|classify|"
    r"rewrite|identify|define|please)(?!\w)",
    re.I,
)


def near_key(text: str) -> str:
    """Text under NFKC, case folding, punctuation removed and whitespace collapsed: two prompts
    with the same key are near-identical (also the dedup rule of translate.py)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def protected_spans(text: str, grouped: bool = False) -> tuple[dict[str, Counter], str]:
    """The spans that must survive translation, by kind, and the text left without them.
    `grouped` (a translation): numbers whose thousands are grouped with a (narrow) space, as
    fr/ru write them ("1 000"), count as that number too, besides their digit groups."""
    out = {}
    for kind, rx in _SPANS:
        found = rx.findall(text)
        if kind == "url":
            found = [u.rstrip(".,;:!?)]}") for u in found]  # sentence punctuation is not the URL
        if kind == "number":
            found = [re.sub(r"\D", "", x) for x in found]
        out[kind] = Counter(found)
        if kind == "number" and grouped:
            out[kind] |= Counter(re.sub(r"\D", "", x) for x in _GROUPED.findall(text))
        text = rx.sub(" ", text)
    return out, text


def asks(source: str) -> bool:
    """The source is a question or an instruction: something a model would answer."""
    return source.rstrip().endswith("?") or bool(_ASKS.match(source))


def _opens_with_reply(text: str) -> bool:
    return bool(_OPENERS.match(text.lstrip(" \t\n*_#>\"'«“")))


def answered(source: str, output: str, hi: float = 2.5, min_chars: int = 10) -> bool:
    """Rules (a), (b), (c) of the module docstring."""
    if _opens_with_reply(output) and not _opens_with_reply(source):
        return True
    ks, ko = near_key(source), near_key(output)
    if len(ks.split()) >= 2 and ks in ko and len(ko) > len(ks):
        return True
    return asks(source) and len(source) >= min_chars and len(output) / len(source) > hi


def gate_reasons(
    source: str,
    output: str,
    lang: str,
    detected: str | None,
    finish_reason: str = "stop",
    bounds: tuple[float, float] = (0.5, 2.5),
    min_ratio_chars: int = 10,
) -> list[str]:
    """Every gate (in GATES order) that `output`, the translation of `source` into `lang`,
    fails; [] when it passes. `detected`: its language from `detect_languages` (None: unjudged)."""
    if not output.strip():
        return ["empty"]
    lo, hi = bounds
    reasons = ["truncated"] if finish_reason == "length" else []
    if answered(source, output, hi, min_ratio_chars):
        reasons.append("answered")
    copied = near_key(output) == near_key(source) and len(near_key(source).split()) >= 2
    if (detected is not None and detected != lang) or copied:
        reasons.append("wrong_language")
    if len(source) >= min_ratio_chars and not lo <= len(output) / len(source) <= hi:
        reasons.append("length_ratio")
    want, _ = protected_spans(source)
    got, _ = protected_spans(output, grouped=True)
    return reasons + [kind for kind, _ in _SPANS if want[kind] - got[kind]]


def detect_languages(
    outputs: list[str], targets: list[str], languages: list[str], min_letters: int = 12
) -> list[str | None]:
    """lingua's language for each output without its protected spans, among `languages`; None
    where fewer than `min_letters` letters remain (code, URLs or two words: too little to tell)
    or where the output's target language (`targets`, one per output) is one lingua cannot detect."""
    from icr_data.stages.langid import identify, judged

    rest = [protected_spans(t)[1] for t in outputs]
    found, _ = identify(rest, languages)
    found = judged(found, targets, languages)
    return [f if sum(c.isalpha() for c in r) >= min_letters else None for f, r in zip(found, rest)]
