"""Small settings of the Hugging Face libraries that several modules share; imports no icr_data
module, so anything may import it."""

from __future__ import annotations

import os
from contextlib import contextmanager


def quiet_transformers() -> None:
    """Switch off transformers' own tqdm bars (loading weights, writing shards): our rich
    progress reports the work, and hundreds of carriage-return updates clutter logs. Hub
    download bars (huggingface_hub's) are left on."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextmanager
def library_bars_off():
    """Meanwhile, the libraries' own bars are off: transformers', datasets' (map, writing) and any
    tqdm (TRL's reference pass); our rich progress shows the work. Restored after."""
    import datasets

    quiet_transformers()
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved
        if bars:
            datasets.enable_progress_bars()
