"""One Ctrl-C stops a command within seconds, the engine's processes included, while vLLM starts
(issue 32): the terminal's SIGINT reaches the whole process group, as it does here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.vllm
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_one_ctrl_c_while_the_engine_starts_stops_everything(tiny_pair, tmp_path):
    policy, reference = tiny_pair
    args = [sys.executable, "-m", "icr_data.cli", "build", str(ROOT / "recipes" / "demo_tiny.yaml"),
            "--store", str(tmp_path), "--set", f"models.generator={policy}",
            "--set", f"models.policy={policy}", "--set", f"models.reference={reference}",
            "--set", "prompts.limit=2"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(group(proc.pid)) < 2:  # the engine's first process has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        time.sleep(1.0)  # well inside its start-up (13 s or more here)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert took < 15, took
    assert "interrupted:" in err and "Traceback" not in err, err[-2000:]
    time.sleep(0.5)
    assert group(proc.pid) == []  # no engine process left behind
