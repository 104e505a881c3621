"""scoring.mode translate_en (the paper's weak baseline): responses translated to English, scored as
translations under the English instruction; pairs keep the original texts."""

import pytest

from icr_data.base.config import SamplingConfig, ScoringConfig
from icr_data.commands.derive import rescore
from icr_data.commands.score_phase import score_candidates
from icr_data.commands.translate import english_requests, response_translator
from icr_data.core.executor import run_once
from icr_data.core.stage import Shard
from icr_data.store import store


@pytest.fixture(scope="module")
def translated(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("translate_en") / "store"
    return build_tiny(store_dir, "sampling.max_tokens=6", "prompts.limit=2",
                      "prompts.languages=[en, de]", "scoring.mode=translate_en")  # fmt: skip


def test_scored_on_the_english_instruction_and_the_stored_translation(translated, tiny_pair):
    policy, reference = tiny_pair
    cands = store.read_table(translated, "candidates")
    m = store.read_manifest(translated)
    english = {c["prompt_id"]: c["instruction"] for c in cands if c["lang"] == "en"}
    assert cands["scoring_prompt"] == [english[p] for p in cands["prompt_id"]]
    for c in cands:
        if c["lang"] == "en":
            assert c["response_en"] == c["response"]
    # response_en is what the generation backend gives for the translate prompt (greedy)
    de = cands.filter(lambda c: c["lang"] == "de")
    stage = response_translator(str(policy), {"name": str(policy)},
                                SamplingConfig(**m["recipe"]["sampling"]), None)  # fmt: skip
    out, _ = run_once(stage, [Shard(0, english_requests(cands))])
    assert out[0]["response"] == de["response_en"] and len(de) == 6
    assert (
        "Translate the following text from German to English"
        in english_requests(de)[0]["instruction"]
    )
    # the rewards are the scorer's on (English instruction, response_en), run here directly
    rows = cands.select_columns(
        ["prompt_id", "lang", "sample_idx", "scoring_prompt", "response_en"]
    )
    rows = rows.rename_column("response_en", "response")
    again = score_candidates(
        rows, str(policy), str(reference), ScoringConfig(**m["recipe"]["scoring"])
    )
    assert cands["reward"] == pytest.approx(again["reward"], abs=1e-5)
    # the tokens of the responses themselves (what training counts), the English's beside them
    from icr_data.stages.chat import ChatEncoder
    from icr_data.stages.models import pair_tokenizer

    enc = ChatEncoder(pair_tokenizer(str(policy), str(reference), None), count_eot=True)
    for c in cands:
        assert c["response_tokens"] == len(enc.encode(c["instruction"], c["response"]).response_ids)
        assert c["response_en_tokens"] == len(
            enc.encode(c["scoring_prompt"], c["response_en"]).response_ids
        )
    # pairs hold the original-language texts
    texts = {(c["prompt_id"], c["lang"], c["sample_idx"]): c["response"] for c in cands}
    for p in store.read_table(translated, "pairs"):
        chosen = texts[(p["prompt_id"], p["lang"], p["chosen_sample_idx"])]
        assert p["chosen"][0]["content"] == chosen
    assert m["scoring"]["mode"] == "translate_en"
    assert (
        m["models"]["translator"]["name"]
        == m["scoring"]["translation"]["translator"]
        == policy.name
    )
    card = (translated / "README.md").read_text()
    assert "produced by `translate_en` scoring" in card and "`response_en`" in card


def test_rescoring_in_translate_en_reuses_samples_and_translations(translated):
    cands = store.read_table(translated, "candidates")
    same, _ = rescore(translated)  # its own translations, reused
    assert store.read_table(same, "candidates")["reward"] == pytest.approx(
        cands["reward"], abs=1e-5
    )
    native, _ = rescore(translated, scoring={"mode": "native"})
    plain = store.read_table(native, "candidates")
    assert "response_en" not in plain.column_names and plain["response"] == cands["response"]
    work = translated.parent / ".work" / "generate"  # the samples and the translations
    made = sorted(work.glob("*.parquet"))
    back, m = rescore(native, scoring={"mode": "translate_en"})  # needs response_en again
    # the translation requests are the build's (same responses, template and translator): the
    # score phase keys them by content, so the build's translations are found, not made again
    assert sorted(work.glob("*.parquet")) == made
    again = store.read_table(back, "candidates")
    assert again["response_en"] == cands["response_en"]
    assert again["reward"] == pytest.approx(cands["reward"], abs=1e-5)
    assert m["scoring"]["mode"] == "translate_en"


def test_reference_logps_of_a_translate_en_version_are_refused(translated):
    from icr_data.store.version_ref import refusal

    why = refusal(store.read_manifest(translated), None, None)
    assert why.startswith(
        "the version was scored in translate_en mode (y = each response's English translation"
    )
    assert why.endswith("rescore it with --mode native")
