"""Small settings of the Hugging Face libraries that several modules share; imports no icr_data
module, so anything may import it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


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


def unreachable_dataset(repo_id: str) -> str | None:
    """Why the Hub dataset `repo_id` cannot be loaded now, in a few words, or None when it can
    (its files are in the local Hub cache, or the Hub answers for it). Asked before
    `datasets.load_dataset`, whose own retries take 20-30 s offline before a traceback."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if Path(repo_id).exists():  # a local folder in a Hub layout: load_dataset reads it
        return None
    try:
        if isinstance(try_to_load_from_cache(repo_id, "README.md", repo_type="dataset"), str):
            return None
    except ValueError:  # not a valid repo id (HFValidationError): load_dataset says what it says
        return None
    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if flag or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local Hub cache"
    try:
        HfApi().dataset_info(repo_id, timeout=15)
    except (GatedRepoError, HfHubHTTPError) as e:
        if isinstance(e, RepositoryNotFoundError):
            return "no such dataset on the Hub (or it is private and no token is set)"
        return None  # the Hub answered: loading says what it says
    except Exception as e:  # noqa: BLE001 - connection errors of whichever HTTP client
        return f"the Hub cannot be reached ({type(e).__name__}: {str(e)[:120]})"
    return None
