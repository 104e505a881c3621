"""Small settings of the Hugging Face libraries that several modules share; imports no icr_data
module, so anything may import it."""

from __future__ import annotations


def quiet_transformers() -> None:
    """Switch off transformers' own tqdm bars (loading weights, writing shards): our rich
    progress reports the work, and hundreds of carriage-return updates clutter logs. Hub
    download bars (huggingface_hub's) are left on."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
