"""Honest progress and a quiet terminal: generation advances per finished prompt, and what an
engine's processes print goes to the run's log file, not to our stdout or stderr."""

import os
import subprocess
import sys

from datasets import Dataset

from icr_data.base import logs
from icr_data.base.config import SamplingConfig
from icr_data.stages.generate import RequestProgress, open_backend, sample


def test_generation_advances_per_prompt_not_per_chunk(tiny_pair):
    cfg = SamplingConfig(backend="transformers", n=2, max_tokens=4, chunk_prompts=256)
    prompts = Dataset.from_list([{"prompt_id": f"p{i}", "lang": "en", "instruction": f"Say {i}"}
                                 for i in range(5)])  # fmt: skip
    steps = []
    backend = open_backend(str(tiny_pair[0]), cfg)
    try:
        out = sample(backend, prompts, cfg, advance=lambda k, **_: steps.append(k))
    finally:
        backend.close()
    assert steps == [1, 1, 1, 1, 1] and len(out) == 10  # one chunk of 5, five moves of the bar


def test_vllm_progress_hook_counts_requests():
    seen = []
    make = RequestProgress.hook(lambda k: seen.append(k))
    prompts = ["a", "b", "c"]
    assert make(prompts, desc="Adding requests") is prompts  # the prompts pass through
    bar = make(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="")
    for _ in range(3):
        bar.update(4)  # vLLM counts the 4 samples of each finished request
        assert bar.format_dict["elapsed"] > 0
    bar.refresh()
    bar.close()
    assert seen == [1, 1, 1] and bar.n == 12


def test_engine_processes_print_to_the_log_file(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    log = tmp_path / "logs" / "third_party.log"
    monkeypatch.setenv(logs.LOG_FILE_ENV, str(log))
    child = "import sys; print('NUMA binding warning'); print('Triton notice', file=sys.stderr)"
    with logs.engine_output_to_file():
        engine = subprocess.Popen([sys.executable, "-c", child])  # inherits the redirected fds
    engine.wait()
    print("our result")
    out, err = capfd.readouterr()
    assert out == "our result\n" and "Triton" not in err and "NUMA" not in out
    assert "NUMA binding warning" in log.read_text() and "Triton notice" in log.read_text()


def test_verbose_leaves_the_terminal_alone(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    monkeypatch.setenv(logs.LOG_FILE_ENV, str(tmp_path / "third_party.log"))
    with logs.engine_output_to_file():
        subprocess.run([sys.executable, "-c", "import sys; print('engine says', file=sys.stderr)"])
    assert "engine says" in capfd.readouterr().err and not (tmp_path / "third_party.log").exists()
    monkeypatch.setenv("VLLM_LOGGING_STREAM", "ext://sys.stdout")  # vLLM's own default
    assert logs.quiet_vllm() is None
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # never stdout


def test_a_librarys_own_bar_goes_to_the_log_file(tmp_path, monkeypatch, capsys):
    from tqdm.auto import tqdm

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    monkeypatch.setenv(logs.LOG_FILE_ENV, str(tmp_path / "third_party.log"))
    with logs.third_party_stderr():
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "Converting" not in capsys.readouterr().err
    assert "Converting and de-quantizing" in (tmp_path / "third_party.log").read_text()
