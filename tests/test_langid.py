"""Language ID on a handful of sentences per language, restricted to the languages in play."""

import pytest
from datasets import Dataset

from icr_data.stages.langid import identify

SENTENCES = {
    "en": ["The weather is lovely today, so we are going for a walk in the park.",
           "Please remember to bring your notebook to the meeting on Friday.",
           "Photosynthesis turns sunlight, water and carbon dioxide into sugar."],
    "es": ["Hoy hace un tiempo estupendo, así que vamos a pasear por el parque.",
           "Por favor, recuerda traer tu cuaderno a la reunión del viernes.",
           "La fotosíntesis convierte la luz del sol, el agua y el dióxido de carbono en azúcar."],
    "de": ["Heute ist das Wetter herrlich, also gehen wir im Park spazieren.",
           "Bitte denk daran, dein Notizbuch zum Treffen am Freitag mitzubringen.",
           "Die Photosynthese verwandelt Sonnenlicht, Wasser und Kohlendioxid in Zucker."],
    "fr": ["Il fait un temps magnifique aujourd'hui, alors nous allons nous promener au parc.",
           "N'oubliez pas d'apporter votre carnet à la réunion de vendredi.",
           "La photosynthèse transforme la lumière du soleil, l'eau et le dioxyde de carbone en sucre."],
    "ru": ["Сегодня прекрасная погода, поэтому мы идём гулять в парк.",
           "Пожалуйста, не забудьте взять блокнот на встречу в пятницу.",
           "Фотосинтез превращает солнечный свет, воду и углекислый газ в сахар."],
}  # fmt: skip


def test_every_sentence_is_identified():
    texts = [t for ts in SENTENCES.values() for t in ts]
    truth = [lang for lang, ts in SENTENCES.items() for _ in ts]
    got, scores = identify(texts, list(SENTENCES))
    assert got == truth
    assert all(0.5 < s <= 1.0 for s in scores)


def test_empty_and_single_language():
    got, scores = identify(["", "Hola amigo"], ["en", "es"])
    assert got[0] is None and scores[0] == 0.0 and got[1] == "es"
    assert identify(["Hello there"], ["en"]) == ([None], [0.0])  # nothing to tell apart


def test_the_stage_marks_off_target_rows_and_leaves_undetectable_ones_unjudged():
    """Language ID as every command runs it: the stage, through the runner."""
    from icr_data.core.executor import LocalExecutor, MemoryWork
    from icr_data.core.runner import run_rows
    from icr_data.stages.stages import LangIdStage

    ds = Dataset.from_list([
        {"prompt_id": "a", "lang": "de", "response": SENTENCES["de"][0]},
        {"prompt_id": "a", "lang": "de", "response": SENTENCES["en"][1]},  # off-target
        {"prompt_id": "b", "lang": "kn", "response": SENTENCES["en"][2]},  # lingua has no kn
    ])  # fmt: skip
    out, report = run_rows(LocalExecutor(MemoryWork()), LangIdStage(languages=("de", "en", "kn")),
                           ds, shard_prompts=1)  # fmt: skip
    assert out["lid_lang"] == ["de", "en", None]
    assert out["lid_score"][0] > 0.5 and out["lid_score"][1] > 0.5
    assert report == {"done": 2, "skipped": 0, "stats": report["stats"]}
    assert report["stats"]["texts"] == 3


def test_parallel_batches_equal_one_text_at_a_time(monkeypatch):
    """The threaded batch path (several chunks) gives the languages and scores that lingua gives
    one text at a time; scores rounded to langid.SCORE_DIGITS decimals (lingua sums in threads,
    so its last bits may differ: rounded, they are equal)."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    from icr_data.stages import langid

    monkeypatch.setattr(langid, "CHUNK", 4)  # 6 chunks
    texts = [t for ts in SENTENCES.values() for t in ts] + [
        "", "   ", "12345 67890", "!!! ???",  # empty, blank, nothing to detect
        "今日はとても良い天気なので、公園を散歩します。",  # a language not in play
        SENTENCES["en"][0] + " " + SENTENCES["fr"][1],  # mixed
        "ok",
    ]  # fmt: skip
    languages = ["de", "es", "fr", "ru"]
    codes = [getattr(IsoCode639_1, c.upper()) for c in ["de", "en", "es", "fr", "ru"]]
    detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()
    want_langs, want_scores = [], []
    for text in texts:
        ranked = detector.compute_language_confidence_values(text)
        if not text.strip() or not ranked or ranked[0].value == 0:
            want_langs.append(None)
            want_scores.append(0.0)
        else:
            want_langs.append(ranked[0].language.iso_code_639_1.name.lower())
            want_scores.append(round(ranked[0].value, langid.SCORE_DIGITS))
    assert None in want_langs and "ja" not in want_langs
    column = Dataset.from_dict({"response": texts})["response"]  # read a chunk at a time
    for workers, given in ((2, texts), (1, texts), (2, column)):
        langs, scores = identify(given, languages, workers=workers)
        assert langs == want_langs
        assert scores == pytest.approx(want_scores, abs=1.1e-6)  # a rounding boundary at most


def test_worker_count_from_the_environment(monkeypatch):
    from icr_data.stages.langid import WORKERS_ENV, default_workers

    monkeypatch.setenv(WORKERS_ENV, "1")
    assert default_workers() == 1
    monkeypatch.delenv(WORKERS_ENV)
    assert default_workers() >= 1
    monkeypatch.setenv(WORKERS_ENV, "all")
    with pytest.raises(ValueError, match=WORKERS_ENV):
        default_workers()
