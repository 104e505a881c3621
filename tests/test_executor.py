"""The executor knows keys, markers, progress and resume, and nothing of a stage's insides: shown
with a stage written here (docs/extending.md's example), which no executor was told about."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from datasets import Dataset
from rich.console import Console
from rich.progress import Progress

from icr_data.core.executor import LocalExecutor, MemoryWork, run_once, tasks
from icr_data.core.runner import candidate_shards
from icr_data.core.stage import Shard, Stage
from icr_data.store.shards import WorkDir


@dataclass
class WordCount(Stage):
    name: ClassVar[str] = "words"
    inputs: ClassVar[tuple[str, ...]] = ("prompt_id", "response")
    outputs: ClassVar[tuple[str, ...]] = ("words",)

    fail_on: str | None = None
    log: list = field(default_factory=list)

    def identity(self) -> dict:
        return {"rule": "str.split"}

    def open(self):
        self.log.append("open")

    def run(self, rows, advance=None):
        if self.fail_on in rows["prompt_id"]:
            raise RuntimeError(f"boom on {self.fail_on}")
        self.log.append(f"run {rows['prompt_id'][0]}")
        if advance:
            advance(len(rows))
        self._n = len(rows)
        return Dataset.from_dict({"words": [len(r.split()) for r in rows["response"]]})

    def close(self):
        self.log.append("close")

    def stats(self):
        return {"rows": self._n}

    @staticmethod
    def summarize(per_shard):
        return {"rows": sum(s["rows"] for s in per_shard)}


def candidates():
    rows = [("a", "one two"), ("b", "three"), ("a", "four five six"), ("c", "")]
    return Dataset.from_list([{"prompt_id": p, "response": r} for p, r in rows])


def test_runs_resumes_and_reports(tmp_path):
    shards, positions = candidate_shards(candidates(), shard_prompts=1)
    assert positions == [[0, 2], [1], [3]]  # blocks of prompt_ids, in order of first appearance
    stage = WordCount()
    todo = tasks(stage, shards)
    with Progress(console=Console(file=open(tmp_path / "bar", "w"))) as progress:  # noqa: SIM115
        report = LocalExecutor(WorkDir(tmp_path / ".work"), None, progress).run(stage, todo)
        assert [t.total for t in progress.tasks] == [4]  # a total, never "?"
    assert report == {"done": 3, "skipped": 0, "stats": {"rows": 4}}
    assert stage.log == ["open", "run a", "run b", "run c", "close"]
    ex = LocalExecutor(WorkDir(tmp_path / ".work"))
    assert [ex.load(stage, t)["words"] for t in todo] == [[2, 3], [1], [0]]
    again = WordCount()
    assert ex.run(again, tasks(again, shards)) == {"done": 0, "skipped": 3}
    assert again.log == []  # nothing opened when nothing is left


def test_a_failure_keeps_finished_shards_and_closes_the_stage(tmp_path):
    shards, _ = candidate_shards(candidates(), shard_prompts=1)
    work = WorkDir(tmp_path / ".work")
    broken = WordCount(fail_on="c")
    with pytest.raises(RuntimeError, match="boom on c"):
        LocalExecutor(work).run(broken, tasks(broken, shards))
    assert broken.log[-1] == "close"
    fixed = WordCount()
    assert LocalExecutor(work).run(fixed, tasks(fixed, shards))["skipped"] == 2
    assert fixed.log == ["open", "run c", "close"]


def test_keys_follow_inputs_and_identity():
    rows = candidates()
    base = WordCount().key(Shard(0, rows))
    assert WordCount().key(Shard(7, rows)) == base  # the index is not content
    assert WordCount().key(Shard(0, rows.select([0, 1]))) != base
    assert WordCount().key(Shard(0, rows, upstream="gen-key")) != base


def test_a_log_prob_key_sees_every_scoring_prompt():
    """Two shards of the same samples whose scoring prompts differ only in their last row (a
    column's str() shows its first five values: a key made from it would not see the row)."""
    from icr_data.stages.stages import LogprobStage
    from icr_data.store.shards import digest

    stage = LogprobStage(role="policy", model="m", model_key="k", tokenizer_from=("m",))
    rows = Dataset.from_dict({"prompt_id": ["p"] * 8, "lang": ["de"] * 8,
                              "sample_idx": list(range(8)), "response": ["r"] * 8,
                              "scoring_prompt": ["x"] * 8})  # fmt: skip
    other = rows.map(lambda r, i: {"scoring_prompt": "y" if i == 7 else "x"}, with_indices=True)
    assert stage.key(Shard(0, rows, "gen")) != stage.key(Shard(0, other, "gen"))
    assert digest({"c": rows["scoring_prompt"]}) == digest({"c": ["x"] * 8})


def test_in_memory_runs_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outs, report = run_once(WordCount(), [Shard(0, candidates())])
    assert outs[0]["words"] == [2, 1, 3, 0] and report["done"] == 1
    assert list(tmp_path.iterdir()) == []
    assert not MemoryWork().done("words", "k")


def test_language_id_reports_its_rate():
    from icr_data.stages.stages import LangIdStage

    rows = Dataset.from_list([{"lang": "de", "response": "Das ist ein ganz normaler Satz."},
                              {"lang": "de", "response": "This one is written in English."},
                              {"lang": "en", "response": ""}])  # fmt: skip
    outs, report = run_once(LangIdStage(languages=("en", "de")), [Shard(0, rows)])
    assert outs[0]["lid_lang"] == ["de", "en", None]
    assert report["stats"]["texts"] == 3 and report["stats"]["texts_per_s"] > 0


def test_the_bar_says_when_a_model_is_loading_and_keeps_drawing_through_an_engine_start(
    tmp_path, monkeypatch
):
    """While a stage opens, its bar reads '<label> (loading the model)'; an engine started with
    this process's descriptors pointed at the log file (logs.engine_output_to_file) does not
    take the live display with it: it keeps drawing to the terminal's descriptor."""
    import os

    from icr_data.base import logs
    from icr_data.base.console import progress_bar

    seen = []
    drawn = []

    class Loading(WordCount):
        def open(self):
            seen.append(progress.tasks[-1].description)
            with logs.engine_output_to_file():  # what VLLMBackend does around LLM(...)
                console.print("while the engine starts")  # the live display's writes
                drawn.append(console.file.fileno() != 2)  # the terminal's copy, not fd 2

    monkeypatch.setenv(logs.LOG_FILE_ENV, str(tmp_path / "third_party.log"))
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)  # fd 2 is "the terminal" here: a pipe we read back
    try:
        console = Console(file=None, stderr=True, force_terminal=False)
        with progress_bar(console) as progress:
            ex = LocalExecutor(MemoryWork(), console, progress)
            ex.run(Loading(), tasks(Loading(), [Shard(0, candidates())]), "words")
        console.file.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    with open(r, encoding="utf-8") as pipe:
        out = pipe.read()
    assert seen == ["words (loading the model)"] and drawn == [True]
    assert "while the engine starts" in out  # on the terminal, not in the log
    assert "while the engine starts" not in (tmp_path / "third_party.log").read_text()
