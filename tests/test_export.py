"""The JSON exports (llamafactory, jsonl) are streamed in batches, vectorised; each line must be
exactly what json.dumps(row, ensure_ascii=False) writes for the row built from the pairs table
one pair at a time (the export before it streamed), across batches and Parquet files. Formats
are the registry's: one registered at run time is exported like the built-in ones."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import cli_run as _cli
from synthetic import tables

from icr_data.base.files import atomic_write_text
from icr_data.base.registry import EXPORT_FORMATS
from icr_data.commands.export import ExportError, Format, _json_lines, export
from icr_data.store import store
from icr_data.store.card import render_card

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
    manifest = json.loads((v / "manifest.json").read_text())  # the second file, listed
    manifest["files"]["pairs"].append("data/pairs/z.parquet")
    manifest["totals"]["pairs"] = len(rows)
    (v / "manifest.json").write_text(json.dumps(manifest))
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


def test_every_registered_format_is_a_format_of_its_name():
    for name in EXPORT_FORMATS:
        form = EXPORT_FORMATS.load(name)
        assert isinstance(form, Format) and form.name == name


def _write_toy(job):
    """Question/answer lines (streamed by the Job's helper) and a line count written by hand."""
    data = job.jsonl(f"{job.name}.toy.jsonl", {"q": "prompt", "a": "chosen", "note": None,
                                               "margin": "margin"})  # fmt: skip
    count = job.out / "count.txt"
    atomic_write_text(count, f"{sum(1 for _ in data.open(encoding='utf-8'))}\n")
    return [data, count]


@pytest.fixture
def toy():
    """A format registered for one test only: one Format object plus one registry line."""
    EXPORT_FORMATS.register("toy", Format("toy", writes=("{name}.toy.jsonl", "count.txt"),
                                          write=_write_toy))  # fmt: skip
    try:
        yield
    finally:
        EXPORT_FORMATS.unregister("toy")


def test_a_registered_format_is_exported_through_the_cli(version, toy, capsys, tmp_path):
    v, rows = version
    out = tmp_path / "out"
    code, stdout, err = _cli(capsys, "export", str(v), "--out", str(out), "--format", "toy")
    assert code == 0, err
    data, count = out / "t_v1.toy.jsonl", out / "count.txt"
    assert stdout.splitlines() == [str(data), str(count)]
    want = [{"q": r["prompt"][-1]["content"], "a": r["chosen"][-1]["content"], "note": "",
             "margin": r["margin"]} for r in rows]  # fmt: skip
    assert data.read_bytes() == "".join(json.dumps(w, ensure_ascii=False) + "\n"
                                        for w in want).encode("utf-8")  # fmt: skip
    assert count.read_text() == f"{len(rows)}\n"
    # what export checks for every format: a file it writes is never overwritten ...
    code, _, err = _cli(capsys, "export", str(v), "--out", str(out), "--format", "toy")
    assert code == 2 and err.count("\n") == 1 and "t_v1.toy.jsonl already exists" in err
    # ... --ref-logps only where the format carries it, and a misspelt name is one line
    with pytest.raises(ExportError, match="--ref-logps applies to --format trl only"):
        export(v, "toy", tmp_path / "ref", ref_logps=True)
    code, _, err = _cli(capsys, "export", str(v), "--out", str(out), "--format", "tyo")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: unknown format 'tyo' (export --format) (did you mean 'toy'?)")


def test_an_unregistered_format_is_refused(version, tmp_path):
    with pytest.raises(
        ExportError, match=r"unknown format 'toy' \(export --format\); known: trl, "
    ):
        export(version[0], "toy", tmp_path / "out")
    assert not (tmp_path / "out").exists()
