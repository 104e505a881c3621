"""Language codes (ISO 639-1) and the scoring-prompt language directive of the method.

>>> scoring_prompt("Name three fruits.", "Nenne drei Früchte.", "de", "cross_lingual")
'Please answer the following instruction using only German, unless ...\\n\\nName three fruits.'
"""

from __future__ import annotations

LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French",
    "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "kn": "Kannada", "ko": "Korean",
    "lt": "Lithuanian", "lv": "Latvian", "ml": "Malayalam", "mr": "Marathi", "ms": "Malay",
    "nl": "Dutch", "no": "Norwegian", "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai",
    "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
}  # fmt: skip

DIRECTIVE = (
    "Please answer the following instruction using only {language}, "
    "unless explicitly instructed to respond in a different language.\n\n"
)


def language_name(code: str) -> str:
    try:
        return LANGUAGES[code]
    except KeyError:
        raise KeyError(
            f"unknown language code {code!r} (expected ISO 639-1, e.g. en, es, de, fr, ru)"
        ) from None


def scoring_prompt(english_instruction: str, native_instruction: str, lang: str, mode: str) -> str:
    """The x under which a response in `lang` is scored.

    cross_lingual: the English instruction, prefixed by the directive (none for English).
    native: the instruction in the response's own language, as it was generated.
    translate_en: the English instruction (the response is scored as its English translation).
    """
    if mode == "native":
        return native_instruction
    if mode == "translate_en":
        return english_instruction
    if mode != "cross_lingual":
        raise ValueError(f"unknown scoring mode {mode!r}")
    if lang == "en":
        return english_instruction
    return DIRECTIVE.format(language=language_name(lang)) + english_instruction
