"""Export a version's pairs for external trainers.

    icr-data export icr_store/demo/v1 --format trl|llamafactory|jsonl --out DIR [--ref-logps]

trl          DIR/train.parquet: the pairs config as it is (TRL's conversational format with an
             explicit prompt) plus prompt_id, lang, rewards and margin;
             `load_dataset("parquet", data_files="DIR/train.parquet")` feeds DPOTrainer.
llamafactory DIR/<dataset>_<version>.jsonl in LLaMA-Factory's alpaca ranking format
             (instruction, input, chosen, rejected) and its entry in DIR/dataset_info.json (an
             existing dataset_info.json is updated, not replaced).
jsonl        DIR/pairs.jsonl: one flat JSON object per pair (prompt as text).

The two JSON formats stream: the pairs' Parquet is read in batches of BATCH_ROWS, each batch's
lines are built as polars string expressions (the last message's content, JSON string escapes
as json.dumps(ensure_ascii=False) writes them, its ", " and ": " separators; numbers through
json.dumps) and appended to one temporary file, renamed into place when complete. The bytes are
those of json.dumps(row, ensure_ascii=False) per row; memory stays at a batch.

--ref-logps (trl only) adds ref_chosen_logps / ref_rejected_logps: the training reference's
log-probs of chosen and rejected under the training prompt. They are taken from the version's
scores, which is right only when the version was scored with the training prompt (native mode)
and its scoring reference is the training reference, and when the scored span is TRL's (the
end-of-turn token counted, and that token is the tokenizer's EOS, which TRL appends). Anything
else is refused with the reason. The rows are then written in TRL's standard text format
(prompt = the rendered chat prompt, chosen/rejected = response + end-of-turn token) so TRL
tokenizes exactly the span these numbers cover; TRL's conversational format would also count
what the template emits after the end-of-turn token.

Each format is one `Format` object (TRL, LLAMAFACTORY, JSONL below), named in
base.registry.EXPORT_FORMATS; `export` checks what every format shares (the version, --out, the
files it would write, --ref-logps) and hands the format a `Job`. A new format is one object plus
one registry line (docs/export.md, "Adding a format").
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from icr_data.base.errors import IcrError
from icr_data.base.files import atomic_write, atomic_write_text
from icr_data.base.registry import EXPORT_FORMATS, RegistryError
from icr_data.store import store, version_ref
from icr_data.store.integrity import require_whole

FORMATS = EXPORT_FORMATS  # the format names, iterated (the registry is the one list)


class ExportError(IcrError):
    """An export that cannot be written as asked; the message says why."""


def _text(messages) -> str:
    return messages[-1]["content"]


def ref_logps_refusal(manifest: dict) -> str | None:
    """Why the version's reference scores are not the training reference's (the one its recipe
    names, recorded in the manifest), or None if they are."""
    template = ((manifest.get("recipe") or {}).get("models") or {}).get("chat_template")
    return version_ref.refusal(
        manifest, (manifest.get("training") or {}).get("reference"), template
    )


def _eot_text(recipe: dict) -> tuple[object, str]:
    """The training tokenizer and its end-of-turn token text; it must be the EOS token TRL adds."""
    from icr_data.stages.chat import ChatEncoder
    from icr_data.stages.models import ModelError, load_tokenizer, resolve

    try:
        tok = load_tokenizer(resolve(recipe["models"]["reference"], "reference"),
                             recipe["models"].get("chat_template"))  # fmt: skip
    except (ModelError, OSError) as e:
        raise ExportError(f"--ref-logps needs the reference's tokenizer: {e}") from None
    eot = tok.convert_ids_to_tokens(ChatEncoder(tok).encode("x", "").response_ids[-1])
    if eot != tok.eos_token:
        raise ExportError(
            f"--ref-logps: the template ends a turn with {eot!r} but TRL appends the EOS token "
            f"{tok.eos_token!r}, so TRL would score a different span"
        )
    return tok, eot


# What json.dumps(ensure_ascii=False) writes for each character it escapes.
_ESCAPED = ["\\", '"', *map(chr, range(32))]
_ESCAPES = [json.dumps(c)[1:-1] for c in _ESCAPED]
BATCH_ROWS = 4096  # pairs per batch: ~10 MB of text; 1M pairs export in ~0.4 GB peak RSS


def _json_value(col):
    """A polars expression for `col` written as json.dumps(value, ensure_ascii=False) writes it."""
    import polars as pl

    quoted = pl.concat_str(pl.lit('"'), col.str.replace_many(_ESCAPED, _ESCAPES), pl.lit('"'))
    return pl.when(col.is_null()).then(pl.lit("null")).otherwise(quoted)


def _json_scalars(values: list) -> list[str]:
    """Numbers (any non-string column) as json.dumps writes them: floats by their repr."""
    out = []
    for v in values:
        if v.__class__ is float and v - v == 0:  # finite
            out.append(float.__repr__(v))
        else:
            out.append(json.dumps(v, ensure_ascii=False))
    return out


def _json_lines(batch, fields: dict[str, str | None]):
    """One JSON object per row of `batch` (a polars frame), newline-terminated, as one Arrow
    string array: `fields` maps each output key to a column (None: the empty string); keys are
    written in its order, with json.dumps's separators. Strings are escaped vectorised, other
    values (numbers) through json.dumps."""
    import polars as pl

    text = {c for c in fields.values() if c and batch.schema[c] == pl.String}
    frame = batch.select(
        pl.col(c) if c in text else pl.Series(c, _json_scalars(batch[c].to_list()))
        for c in dict.fromkeys(fields.values()) if c
    )  # fmt: skip
    parts = []
    for i, (key, c) in enumerate(fields.items()):
        parts.append(pl.lit(("{" if i == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": "))
        parts.append(
            pl.lit('""') if c is None else _json_value(pl.col(c)) if c in text else pl.col(c)
        )
    parts.append(pl.lit("}\n"))
    return frame.select(pl.concat_str(parts).alias("line")).to_series().to_arrow()


def _write_lines(f, lines) -> None:
    """Write a string array's text at once: its values buffer holds every line, back to back."""
    import numpy as np
    import pyarrow as pa

    lines = lines.cast(pa.large_string())
    for chunk in lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]:
        if len(chunk):
            _, offsets, data = chunk.buffers()
            at = np.frombuffer(offsets, dtype=np.int64)[
                chunk.offset : chunk.offset + len(chunk) + 1
            ]
            f.write(memoryview(data)[at[0] : at[-1]])


def _copy_row_groups(files: list[Path], target: str) -> None:
    """One Parquet file holding `files`' rows, schema and metadata (the datasets features), read
    and written a row group at a time."""
    import pyarrow.parquet as pq

    sources = [pq.ParquetFile(f) for f in files]
    with pq.ParquetWriter(target, sources[0].schema_arrow) as writer:
        for source in sources:
            for g in range(source.num_row_groups):
                writer.write_table(source.read_row_group(g))


def _pair_batches(files: list[Path], columns: list[str], batch_rows: int):
    """The pairs' `columns` as polars frames of at most `batch_rows` rows, the last message's
    content in place of each conversation column (prompt, chosen, rejected)."""
    import polars as pl
    import pyarrow.parquet as pq

    for path in files:  # pre_buffer would keep every column chunk read so far (memory grows)
        reader = pq.ParquetFile(path, pre_buffer=False)
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            frame = pl.from_arrow(batch)
            yield frame.with_columns(
                pl.col(c).list.last().struct.field("content").alias(c)
                for c in ("prompt", "chosen", "rejected") if c in columns
            )  # fmt: skip


def _write_jsonl(path: Path, files: list[Path], fields: dict, batch_rows: int) -> None:
    """Stream the pairs in `files` to `path` as JSON lines (see `_json_lines`), atomically: the
    lines go to a temporary file beside `path`, renamed over it once complete."""
    columns = [c for c in dict.fromkeys(fields.values()) if c]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for frame in _pair_batches(files, columns, batch_rows):
                _write_lines(f, _json_lines(frame, fields))

    atomic_write(path, write)


@dataclass(frozen=True)
class Job:
    """What a format writes from: one version's pairs, into one checked folder."""

    version_dir: Path
    manifest: dict
    out: Path
    """--out, existing; none of the format's `writes` files is in it yet."""
    name: str
    """<dataset>_<version>, for file names."""
    files: list[Path]
    """The pairs' Parquet files, in order."""
    ref_logps: bool = False
    """--ref-logps was given (only to a format with `ref_logps`, for a version it is right for)."""
    batch_rows: int = BATCH_ROWS

    def jsonl(self, file_name: str, fields: dict[str, str | None]) -> Path:
        """Stream the pairs to out/file_name as JSON lines, `batch_rows` at a time, atomically:
        `fields` maps each key to a pairs column (prompt, chosen, rejected: the last message's
        text) or None (the empty string); bytes as json.dumps(row, ensure_ascii=False)."""
        _write_jsonl(self.out / file_name, self.files, fields, self.batch_rows)
        return self.out / file_name


@dataclass(frozen=True)
class Format:
    """An export format, `icr-data export VERSION --format NAME --out DIR`; its name is an entry
    of base.registry.EXPORT_FORMATS."""

    name: str
    writes: tuple[str, ...]
    """The files it creates in --out ("{name}" stands for <dataset>_<version>); `export` refuses
    to run if one exists."""
    write: Callable[[Job], list[Path]]
    """Writes them (atomically) and returns the paths written."""
    updates: tuple[str, ...] = ()
    """Files it updates in --out, keeping what else they hold (may exist)."""
    ref_logps: bool = False
    """Whether it can carry the reference log-probs (--ref-logps)."""

    def targets(self, name: str) -> tuple[list[str], list[str]]:
        """The file names of `writes` and `updates` for the version named `name`."""
        return ([f.replace("{name}", name) for f in self.writes],
                [f.replace("{name}", name) for f in self.updates])  # fmt: skip


def _write_trl(job: Job) -> list[Path]:
    path = job.out / "train.parquet"
    if not job.ref_logps:  # the pairs as they are, a row group at a time
        atomic_write(path, lambda tmp: _copy_row_groups(job.files, tmp))
        return [path]
    # with --ref-logps: the text TRL tokenizes, and the version's log-probs
    from icr_data.stages.chat import render_prompt

    pairs = store.read_table(job.version_dir, "pairs")
    tok, eot = _eot_text(store.local_recipe(job.version_dir, job.manifest))  # this machine's paths
    columns = ("prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx")
    found = version_ref.pair_logps(job.version_dir, {c: pairs[c] for c in columns})
    if isinstance(found, str):
        raise ExportError(f"--ref-logps refused: {found}")
    chosen, rejected = found
    table = pairs.map(
        lambda r: {"prompt": render_prompt(tok, _text(r["prompt"])),
                   "chosen": _text(r["chosen"]) + eot, "rejected": _text(r["rejected"]) + eot},
        remove_columns=["prompt", "chosen", "rejected"],
    )  # fmt: skip
    table = table.add_column("ref_chosen_logps", chosen)
    table = table.add_column("ref_rejected_logps", rejected)
    atomic_write(path, lambda tmp: table.to_parquet(tmp))
    return [path]


def _write_llamafactory(job: Job) -> list[Path]:
    fields = {"instruction": "prompt", "input": None, "chosen": "chosen",
              "rejected": "rejected", "lang": "lang", "prompt_id": "prompt_id"}  # fmt: skip
    data = job.jsonl(f"{job.name}.jsonl", fields)
    info_path = job.out / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    except ValueError as e:
        raise ExportError(
            f"{info_path} exists but is not valid JSON ({e}); not touching it"
        ) from None
    info[job.name] = {
        "file_name": data.name,
        "ranking": True,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }  # fmt: skip
    atomic_write_text(info_path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return [data, info_path]


def _write_flat(job: Job) -> list[Path]:
    columns = ("prompt_id", "lang", "prompt", "chosen", "rejected", "chosen_reward",
               "rejected_reward", "margin")  # fmt: skip
    return [job.jsonl("pairs.jsonl", {c: c for c in columns})]


TRL = Format("trl", writes=("train.parquet",), write=_write_trl, ref_logps=True)
LLAMAFACTORY = Format("llamafactory", writes=("{name}.jsonl",), write=_write_llamafactory,
                      updates=("dataset_info.json",))  # fmt: skip
JSONL = Format("jsonl", writes=("pairs.jsonl",), write=_write_flat)


def _format(fmt: str) -> Format:
    try:
        return EXPORT_FORMATS.load(fmt)
    except RegistryError as e:
        raise ExportError(str(e)) from None


def export(
    version: str | Path, fmt: str, out: str | Path, ref_logps: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> list[Path]:  # fmt: skip
    """Write `version`'s pairs to `out` in the registered format `fmt`; return the files written.
    The JSON formats are written `batch_rows` pairs at a time, as json.dumps(row,
    ensure_ascii=False) writes each."""
    form = _format(fmt)
    if ref_logps and not form.ref_logps:
        carry = [n for n in EXPORT_FORMATS if getattr(_format(n), "ref_logps", False)]
        raise ExportError(f"--ref-logps applies to --format {', '.join(carry)} only (the "
                          "formats whose trainers read those columns)")  # fmt: skip
    version_dir = store.resolve_version(version)
    require_whole(version_dir)  # sizes and footers: a damaged file is one line, before any work
    manifest = store.read_manifest(version_dir)
    out = Path(out)
    name = f"{manifest['dataset']}_{manifest['version']}"
    writes, updates = form.targets(name)
    try:
        store.refuse_inside_version(out, "--out")
        for f in (*writes, *updates):  # a manifest's names stay in --out
            store.inside(out / f, out, "--out file")
    except store.StoreError as e:
        raise ExportError(str(e)) from None
    files = store.config_files(version_dir, "pairs")
    if ref_logps and (why := ref_logps_refusal(manifest)):
        raise ExportError(f"--ref-logps refused: {why}")
    existing = [f for f in writes if (out / f).exists()]
    if existing:
        raise ExportError(f"{out / existing[0]} already exists; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out}: {e.strerror}") from None
    try:  # each file is written whole or not at all (atomic_write): a full disk leaves none
        return form.write(Job(version_dir, manifest, out, name, files, ref_logps, batch_rows))
    except OSError as e:
        hint = " (disk full)" if e.errno == errno.ENOSPC else ""
        raise ExportError(f"cannot write the export into {out}: {e.strerror or e}{hint}") from None
