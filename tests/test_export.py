"""The JSON exports (llamafactory, jsonl) are streamed in batches, vectorised; each line must be
exactly what json.dumps(row, ensure_ascii=False) writes for the row built from the pairs table
one pair at a time (the export before it streamed), across batches and Parquet files."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import tables

from icr_data.store import store
from icr_data.store.card import render_card
from icr_data.commands.export import _json_lines, export

AWKWARD = [
    'a "quoted" word, a back\\slash and \\n written out',
    "two\nlines\r\nand\ta tab, \b\f",
    "control \x00\x01\x1f and \x7f (not escaped)",
    "ünïcödé — 日本語 😀 \u2028 \u2029 \ufeff",
    "",
    "   ",
    "</script>{}[]:,",
]
FLOATS = [1.7675697946048214, 1e-05, -0.0, 2.0, 1e16, 1.2345678901234568e16, 1e-300,
          0.1 + 0.2, -3.5e-7, 123456789012345.0, math.nan, math.inf]  # fmt: skip


def msgs(role, text, system=None):
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": role, "content": text}]


def pairs_rows(n):
    rows = []
    for i in range(n):
        text = AWKWARD[i % len(AWKWARD)]
        rows.append({
            "prompt_id": f"p{i // 3}" if i % 5 else f'id "{i}"\n',
            "lang": ("en", "de", "ru")[i % 3],
            "prompt": msgs("user", f"question {i}: {text}", system="be brief" if i % 4 == 0 else None),
            "chosen": msgs("assistant", text + f" chosen {i}"),
            "rejected": msgs("assistant", AWKWARD[(i + 3) % len(AWKWARD)]),
            "chosen_reward": FLOATS[i % len(FLOATS)],
            "rejected_reward": FLOATS[(i + 5) % len(FLOATS)],
            "margin": float(i) - 0.1,
            "chosen_tokens": i, "rejected_tokens": i + 1,
            "chosen_sample_idx": 0, "rejected_sample_idx": 1,
        })  # fmt: skip
    return rows


def reference_lines(pairs, fmt):
    """The rows built from the table one pair at a time, as the export wrote them unstreamed."""
    lines = []
    for r in pairs:
        flat = {"prompt_id": r["prompt_id"], "lang": r["lang"],
                "prompt": r["prompt"][-1]["content"], "chosen": r["chosen"][-1]["content"],
                "rejected": r["rejected"][-1]["content"], "chosen_reward": r["chosen_reward"],
                "rejected_reward": r["rejected_reward"], "margin": r["margin"]}  # fmt: skip
        if fmt == "llamafactory":
            flat = {"instruction": flat["prompt"], "input": "", "chosen": flat["chosen"],
                    "rejected": flat["rejected"], "lang": flat["lang"],
                    "prompt_id": flat["prompt_id"]}  # fmt: skip
        lines.append(json.dumps(flat, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A version whose pairs are two Parquet files (23 + 11 rows) of awkward text and floats."""
    t, m = tables()
    rows = pairs_rows(34)
    t["pairs"] = Dataset.from_list(rows[:23])
    v = store.write_version(tmp_path_factory.mktemp("s"), "t", t, m, render_card)
    first = sorted((v / "data" / "pairs").glob("*.parquet"))
    assert len(first) == 1
    schema = pq.read_schema(first[0])
    pq.write_table(pa.Table.from_pylist(rows[23:], schema=schema), first[0].with_name("z.parquet"))
    return v, rows


@pytest.mark.parametrize("fmt", ["jsonl", "llamafactory"])
@pytest.mark.parametrize("batch_rows", [4, 10_000])
def test_streamed_export_is_the_row_by_row_export(version, fmt, batch_rows, tmp_path):
    v, rows = version
    written = export(v, fmt, tmp_path / "out", batch_rows=batch_rows)
    assert written[0].read_bytes() == reference_lines(rows, fmt)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_trl_export_copies_every_pair_row_group_by_row_group(version, tmp_path):
    """export --format trl writes the pairs of every file, in order, with the datasets features,
    without loading the version whole."""
    from datasets import load_dataset

    v, rows = version
    (path,) = export(v, "trl", tmp_path / "out")
    same = json.dumps(rows)  # NaN rewards written as NaN on both sides
    assert json.dumps(pq.read_table(path).to_pylist()) == same
    loaded = load_dataset("parquet", data_files=str(path), split="train")
    assert loaded.features == store.read_table(v, "pairs").features
    assert json.dumps(loaded.to_list()) == same


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)))),
            st.floats(allow_nan=False, allow_infinity=True),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_text_and_float_is_written_as_json_dumps_writes_it(values):
    import polars as pl

    frame = pl.DataFrame(
        {"s": [s for s, _ in values], "x": [x for _, x in values]},
        schema={"s": pl.String, "x": pl.Float64},
    )
    lines = _json_lines(frame, {"text": "s", "input": None, "x": "x"})
    want = [
        json.dumps({"text": s, "input": "", "x": x}, ensure_ascii=False) + "\n" for s, x in values
    ]
    assert lines.to_pylist() == want
