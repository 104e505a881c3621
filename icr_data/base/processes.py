"""Stopping this process's children: an inference engine's processes must not outlive a Ctrl-C.

    stop_children()        # terminate, then kill what is left after `grace` seconds

vLLM starts its engine core (and workers) as multiprocessing children. A Ctrl-C in a terminal
reaches them too, but one that was still starting may linger, and Python's exit joins every
non-daemon child: the command then hangs on it. The CLI calls this on KeyboardInterrupt, and the
engine's start-up calls it when interrupted (generate.open_engine), inside `interruptible`, which
also stops a main thread that waits in C code deaf to the signal.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def stop_children(grace: float = 3.0) -> int:
    """Terminate every live multiprocessing child, kill those alive `grace` seconds later, and
    reap them all; the number stopped."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1.0)
    return len(children)


INTERRUPTED = ("interrupted: finished shards and versions are kept; run the same command again "
               "to resume")  # fmt: skip


@contextmanager
def interruptible(grace: float = 3.0, settle: float = 2.0) -> Iterator[None]:
    """Meanwhile, one Ctrl-C stops this process in seconds even when its main thread waits in C
    code that never returns to Python on a signal (vLLM's start-up waits for its engine in one
    long zmq poll, up to VLLM_ENGINE_READY_TIMEOUT_S; the engine, which got the Ctrl-C too, is
    gone). The signal's wakeup byte wakes a watcher thread: unless the main thread takes the
    KeyboardInterrupt itself within `settle` seconds, the watcher stops the children, says so
    and exits with 130. Nothing is being written while an engine starts."""
    import socket

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = socket.socketpair()
    w.setblocking(False)
    previous = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        while True:
            try:
                data = r.recv(64)
            except OSError:
                return
            if done.is_set() or not data:
                return
            if signal.SIGINT in data and not done.wait(settle):
                stop_children(grace)
                _say(INTERRUPTED)
                os._exit(130)

    watcher = threading.Thread(target=watch, name="icr-data interrupt watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        with suppress(OSError):
            w.send(b"\0")  # wakes the watcher, which sees `done` and returns
        watcher.join(1.0)
        r.close()
        w.close()


def _say(message: str) -> None:
    """The message on the terminal: through the live progress consoles (which keep to the
    terminal while an engine's output goes to the log file), else on file descriptor 2."""
    from icr_data.base.console import LIVE

    if LIVE:
        for console in LIVE:
            console.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)
            console.file.flush()
    else:
        os.write(2, (message + "\n").encode())
