"""The prompt loader: joins by prompt_id, attaches the scoring prompt, names bad rows."""

import json

import pytest

from icr_data.base.config import PromptsConfig, ScoringConfig
from icr_data.stages.prompts import PromptError, load_prompts

ROWS = [
    {"prompt_id": "p1", "lang": "de", "instruction": "Nenne drei Früchte."},
    {"prompt_id": "p1", "lang": "en", "instruction": "Name three fruits."},
    {"prompt_id": "p2", "lang": "en", "instruction": "Say hi."},
    {"prompt_id": "p2", "lang": "de", "instruction": "Sag hallo."},
    {"prompt_id": "p2", "lang": "fr", "instruction": "Dis bonjour."},
]


def write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def test_cross_lingual_join_by_id_in_stable_order(tmp_path):
    ds = load_prompts(
        PromptsConfig(source=write(tmp_path, ROWS), languages=["en", "de"]), ScoringConfig()
    )
    assert list(zip(ds["lang"], ds["prompt_id"])) == [
        ("en", "p1"),
        ("en", "p2"),
        ("de", "p1"),
        ("de", "p2"),
    ]
    de = ds.filter(lambda r: r["lang"] == "de")
    assert de["instruction"] == ["Nenne drei Früchte.", "Sag hallo."]
    assert de["scoring_prompt"][0].endswith("German, unless explicitly instructed to respond in a "
                                            "different language.\n\nName three fruits.")  # fmt: skip
    assert ds["scoring_prompt"][0] == "Name three fruits."


def test_native_mode_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    ds = load_prompts(
        PromptsConfig(source=str(path), languages=["fr"]), ScoringConfig(mode="native")
    )
    assert ds["scoring_prompt"] == ["Dis bonjour."]


def test_limit_keeps_first_prompt_ids(tmp_path):
    ds = load_prompts(
        PromptsConfig(source=write(tmp_path, ROWS), languages=["en", "de"], limit=1),
        ScoringConfig(),
    )
    assert set(ds["prompt_id"]) == {"p1"}


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ROWS + [{"prompt_id": "p3", "lang": "de", "instruction": "Hallo"}],
            "prompt_id p3 \\(de\\) has no English row",
        ),
        (ROWS + [ROWS[0]], "row 6: duplicate \\(prompt_id, lang\\) = \\(p1, de\\)"),
        (
            ROWS + [{"prompt_id": "p4", "lang": "xx", "instruction": "?"}],
            "row 6 \\(prompt_id p4\\): unknown language code 'xx'",
        ),
        (
            ROWS + [{"prompt_id": "p4", "lang": "en", "instruction": "  "}],
            "row 6 \\(prompt_id p4, en\\): empty instruction",
        ),
        (ROWS + [{"prompt_id": "p4", "lang": "en"}], "row 6 lacks column\\(s\\) instruction"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    with pytest.raises(PromptError, match=message):
        load_prompts(
            PromptsConfig(source=write(tmp_path, rows), languages=["en", "de"]), ScoringConfig()
        )


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(PromptError, match=r"p.jsonl:2: malformed JSON"):
        load_prompts(PromptsConfig(source=str(path)), ScoringConfig())
    with pytest.raises(PromptError, match="prompts.source not found"):
        load_prompts(PromptsConfig(source=str(tmp_path / "missing.jsonl")), ScoringConfig())


def test_datasets_folder_of_one_split_or_a_clear_error(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "one"))
    ds = load_prompts(PromptsConfig(source=str(tmp_path / "one"), languages=["en", "de"]),
                      ScoringConfig())  # fmt: skip
    assert sorted(zip(ds["prompt_id"], ds["lang"])) == [("p1", "de"), ("p1", "en"),
                                                        ("p2", "de"), ("p2", "en")]  # fmt: skip
    two = DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])})
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(PromptError, match=r"splits \['test', 'train'\].*two/train"):
        load_prompts(PromptsConfig(source=str(tmp_path / "two"), languages=["en"]), ScoringConfig())
