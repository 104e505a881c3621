"""Third-party logs off the terminal: a newcomer sees our progress and our messages only.

vLLM logs through its own handler to stdout (where our results go: a version path), and its
engine processes warn about Triton, NUMA, LD_PRELOAD and more on every start. Before an engine
opens, `quiet_vllm()` points vLLM's logging config (an environment variable, so the engine's own
processes inherit it) at a log file: the run's work folder names it with `log_to(path)`, else
`<cache>/logs/third_party.log`. `icr-data -v ...` (ICR_DATA_VERBOSE=1) shows them instead, on
stderr, never on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

LOG_FILE_ENV = "ICR_DATA_LOG_FILE"
VERBOSE_ENV = "ICR_DATA_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def log_to(path: str | Path) -> Path:
    """Third-party logs of this run (and of the processes it starts) go to `path`."""
    os.environ[LOG_FILE_ENV] = str(path)
    return Path(path)


def log_file() -> Path:
    """The log file third-party output goes to now; its folder is created."""
    if os.environ.get(LOG_FILE_ENV):
        path = Path(os.environ[LOG_FILE_ENV])
    else:
        from icr_data.base.files import cache_dir as builtin_cache

        path = builtin_cache() / "logs" / "third_party.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def quiet_vllm() -> Path | None:
    """Route vLLM's loggers (this process's, if vLLM is not imported yet, and its engine
    processes') to the log file; with -v to stderr. Returns the file, or None when verbose."""
    if verbose():
        os.environ["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
        return None
    path = log_file()
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path),
                              "formatter": "plain", "level": "DEBUG"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }  # fmt: skip
    config_file = path.with_name(path.name + ".logging.json")
    config_file.write_text(json.dumps(config), encoding="utf-8")
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    return path


@contextmanager
def engine_output_to_file():
    """While an engine is imported and started: this process's stdout and stderr file
    descriptors point at the log file, so the engine's processes (which inherit them) print
    there for their whole life: C++ warnings (NUMA), Triton notices, their own progress bars.
    Our live progress keeps drawing on the terminal meanwhile (console.keep_on_terminal), so its
    clock moves while the engine starts. Restored when the engine is up; with -v nothing is
    redirected."""
    if verbose():
        yield None
        return
    from icr_data.base.console import keep_on_terminal

    path = log_file()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", encoding="utf-8", errors="replace")
    with open(path, "ab") as log, terminal, keep_on_terminal(terminal):
        try:
            for fd in saved:
                os.dup2(log.fileno(), fd)
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@contextmanager
def third_party_stderr():
    """Python-level writes to stderr (a library's own tqdm bar) go to the log file meanwhile;
    with -v they stay on the terminal."""
    if verbose():
        yield
        return
    path = log_file()
    with open(path, "a", encoding="utf-8") as log, redirect_stderr(log):
        yield
