"""The thin DPO recipe on TRL: train a model on a version's pairs (DPO sigmoid + optional NLL).

Over 400 lines, one job: a training run end to end, with the TRL surface it relies on (guarded).

    python recipes/dpo.py recipes/dpo_demo.yaml [--set key=value ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu_ddp.yaml recipes/dpo.py CONFIG

Ours: reading the pairs (a version folder, read from its Parquet files; a Hub dataset; an exported
JSONL/Parquet file) and building the training rows: each pair's own native-language instruction
under the model's chat template, tokenized by the scorer's ChatEncoder, so the trained span is
exactly the one the scorer counts (the rows reach TRL tokenized: prompt_ids, chosen_ids,
rejected_ids). The reference log-probs come from the version when they are the training
reference's under the training prompt (TRL's precompute pass then reads them through its public
`compute_ref_log_probs` and runs no model); otherwise TRL computes them once before training.
Then the config is mapped onto TRL's DPOConfig, progress and a step log are reported, the model
is saved (LoRA merged in, or the adapter), and training.json records what was trained on and how.

TRL's DPOTrainer (and transformers' Trainer under it): the loss (loss_type [sigmoid, sft] with
loss_weights [1, nll_weight]), the optimizer and schedule, LoRA through peft, mixed precision,
gradient checkpointing, checkpoints and resume, trackers, and the launch on one GPU or many
(accelerate: DDP, DeepSpeed ZeRO, FSDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from icr_data.base.console import progress_bar, stderr_console
from icr_data.base.hf import library_bars_off
from icr_data.base.train_config import DataConfig, TrainConfig, TrainError, validate_train
from icr_data.stages import models
from icr_data.stages.architecture import check_lora_targets
from icr_data.stages.chat import ChatEncoder
from icr_data.store import store, version_ref
from icr_data.store.integrity import require_whole

TRL_MIN = (1, 16)
"""loss_type as a list with 'sft' and loss_weights, and the reference cache columns, as used here."""

TRL_SURFACE = (
    ("_prepare_dataset", ("dataset", "processing_class", "args", "dataset_name"), True,
     "the rows arrive tokenized by the scorer's encoder; TRL has no public way to skip its own"),
    ("_save_checkpoint", ("model", "trial"), True,
     "transformers' Trainer's (TRL overrides it): a checkpoint that cannot be written is removed "
     "whole; no public hook wraps the write"),
    ("compute_ref_log_probs", ("model", "inputs"), False,
     "the precompute pass's per-batch hook: reads the version's reference log-probs"),
    ("compute_loss", ("model", "inputs", "return_outputs", "num_items_in_batch"), False,
     "the step log's accuracy, dpo_loss and nll from the policy forward's log_probs"),
    ("log", ("logs", "start_time"), False, "adds those to each logged step"),
)  # fmt: skip
"""The DPOTrainer methods the recipe overrides: (name, leading parameters, private, why). The
private ones are TRL / transformers internals: why TRL is pinned to its minor version
(docs/training.md); `trl_surface_problems` checks them all (at training start, and in
tests/test_trl.py). Also relied on: the policy forward returns TRL's FusedCausalLMOutput with
per-token `log_probs` (checked there too), and TRL_ATTRIBUTES."""

TRL_ATTRIBUTES = (
    ("_precompute_engine", "__init__",
     "TRL's DeepSpeed inference engine for its reference pass, destroyed once the pass is done: "
     "under ZeRO-3 its hooks stay on the policy and break the training engine's first forward"),
)  # fmt: skip
"""DPOTrainer attributes the recipe reads: (name, the method that sets it, why); checked, as
TRL_SURFACE is, by `trl_surface_problems` (the method's source still sets `self.<name>`)."""


# ---------------------------------------------------------------------------------------- data
def load_pairs(cfg: DataConfig) -> tuple[list[dict], dict]:
    """(rows of instruction/chosen/rejected/lang (+ the version's ids and token counts), what the
    data is: source, version, revision; for a version folder also its manifest, under _manifest)."""
    src = Path(cfg.source).expanduser()
    info: dict = {"source": cfg.source, "revision": cfg.revision}
    try:
        if src.is_dir():
            manifest = store.read_manifest(src)
            require_whole(src)  # sizes, footers, row counts: a damaged file is named, no model
            info.update(dataset=manifest.get("dataset"), version=manifest.get("version"),
                        manifest_sha256=store.sha256_file(src / "manifest.json"),
                        rounds=manifest.get("rounds"), _manifest=manifest)  # fmt: skip
            try:  # the Parquet files themselves: load_dataset's cache can mix up two versions
                ds = store.read_table(src, cfg.config)
            except store.StoreError:
                raise TrainError(f"data.source {cfg.source}: the version has no '{cfg.config}' "
                                 "table (no pairs were made)") from None  # fmt: skip
            if not len(ds):
                raise TrainError(f"data.source {cfg.source}: the version has no pairs "
                                 "(see its card's funnel for why)")  # fmt: skip
        elif src.is_file():
            from datasets import load_dataset

            kind = "parquet" if src.suffix == ".parquet" else "json"
            ds = load_dataset(kind, data_files=str(src), split="train")
        elif cfg.source.count("/") == 1 and not cfg.source.startswith((".", "/", "~")):
            from datasets import load_dataset

            from icr_data.base.hf import unreachable_dataset

            if why := unreachable_dataset(cfg.source):
                raise TrainError(f"data.source {cfg.source}: not a local folder or file, and "
                                 f"not loadable from the Hub: {why}")  # fmt: skip
            ds = load_dataset(cfg.source, cfg.config, revision=cfg.revision, split=cfg.split)
        else:
            raise TrainError(f"data.source not found: {cfg.source}")
    except TrainError:
        raise
    except store.StoreError as e:  # a damaged version: the file, in one line
        raise TrainError(f"data.source {cfg.source}: {e}") from None
    except Exception as e:  # datasets raises many types; name the source
        raise TrainError(f"data.source {cfg.source}: cannot load pairs ({e})") from None
    if "prompt" not in ds.column_names and "instruction" in ds.column_names:
        ds = ds.rename_column("instruction", "prompt")  # labelled sets such as the seed pairs
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise TrainError(f"data.source {cfg.source}: no column(s) {', '.join(sorted(missing))}")
    extra = [c for c in ("prompt_id", "chosen_sample_idx", "rejected_sample_idx", "chosen_tokens",
                         "rejected_tokens") if c in ds.column_names]  # fmt: skip
    rows = []
    for i, r in enumerate(ds):
        lang = r.get("lang")
        if cfg.languages and lang not in cfg.languages:
            continue
        rows.append({"instruction": _text(r["prompt"], "user", cfg.source, i), "lang": lang,
                     "chosen": _text(r["chosen"], "assistant", cfg.source, i),
                     "rejected": _text(r["rejected"], "assistant", cfg.source, i),
                     **{c: r[c] for c in extra}})  # fmt: skip
        if cfg.limit and len(rows) >= cfg.limit:
            break
    if not rows:
        raise TrainError(f"data.source {cfg.source}: no pairs to train on")
    return rows, info


def _text(value, role: str, source: str, i: int) -> str:
    """A single-turn message's text from the conversational ([{role, content}]) or text format."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and value[0].get("role") == role:
        return value[0]["content"]
    raise TrainError(
        f"{source}, row {i}: expected one '{role}' message or a string, got {value!r:.80}"
    )


def encode_pairs(cfg: TrainConfig, rows: list[dict], tok, info: dict):
    """The training rows, tokenized as the scorer tokenizes (ChatEncoder, end-of-turn counted):
    (kept rows, their encodings, how many were longer than max_length). For a version, a model
    whose tokenizer counts the responses differently from the version's scorer is refused."""
    manifest = info.get("_manifest")
    scored_eot = (manifest or {}).get("scoring", {}).get("count_eot", True)
    enc = ChatEncoder(tok, count_eot=True)
    kept, encoded, too_long = [], [], 0
    for i, r in enumerate(rows):
        c = enc.encode(r["instruction"], r["chosen"], row=f"pair {i}")
        j = enc.encode(r["instruction"], r["rejected"], row=f"pair {i}")
        for side, e in (("chosen", c), ("rejected", j)):
            theirs = r.get(f"{side}_tokens")
            ours = len(e.response_ids) - (0 if scored_eot else 1)
            if manifest is not None and theirs is not None and theirs != ours:
                raise TrainError(
                    f"model {cfg.model}: its tokenizer differs from the one that scored "
                    f"{info.get('dataset')} {info.get('version')} (pair {i} {side}: {ours} response "
                    f"tokens here, {theirs} in the version); train a model of the scorer's family, "
                    "or export the pairs (icr-data export) to train another"
                )
        longest = len(c.prompt_ids) + max(len(c.response_ids), len(j.response_ids))
        if cfg.max_length and longest > cfg.max_length:
            too_long += 1
            continue
        kept.append(r)
        encoded.append((c, j))
    if not kept:
        raise TrainError(f"every pair is longer than max_length={cfg.max_length} tokens")
    return kept, encoded, too_long


# ------------------------------------------------------------------ reference log-probs
def version_ref_logps(cfg: TrainConfig, info: dict, rows: list[dict], reference: dict):
    """The training reference's log-probs of each row's chosen and rejected response, taken from
    the version's own scores: ([chosen], [rejected]), or a str saying why they cannot be used
    (version_ref: the checks `export --ref-logps` makes, against this config's reference)."""
    if cfg.ref_logps == "compute":
        return "the config says ref_logps: compute"
    manifest = info.get("_manifest")
    if manifest is None:
        return "the data is not a version folder (no manifest to check its scores against)"
    why = version_ref.refusal(manifest, reference, cfg.chat_template)
    if why:
        return why
    columns = ("prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx")
    if not all(c in r for r in rows for c in columns):
        return "the version's pairs do not name their candidates (chosen_sample_idx)"
    return version_ref.pair_logps(cfg.data.source, {c: [r[c] for r in rows] for c in columns})


# ------------------------------------------------------------------------ step statistics
LOGRATIO_ATOL = 1e-4
"""Logged accuracy counts a pair as ranked right only when its chosen log-ratio beats the rejected
one by more than this (in nats; times beta in reward units). A model equal to its reference has
rewards of exactly zero in exact arithmetic, but reference log-probs from the version (the
scorer's batching) or from TRL's precompute pass (other padding) differ from a training step's by
float rounding, about 1e-7 per sum on some CPUs: without the tolerance an unchanged model could
log a step-0 accuracy of 0.25. TRL's own `rewards/accuracies` (strict) is kept in the log's `trl`."""


def ranked_right(chosen_rewards, rejected_rewards, beta: float):
    """Which pairs the implicit reward ranks right, beyond float rounding (LOGRATIO_ATOL)."""
    return (chosen_rewards - rejected_rewards) > beta * LOGRATIO_ATOL


def trl_surface_problems() -> list[str]:
    """One line per piece of TRL_SURFACE the installed TRL changed: a method gone, or its leading
    parameters renamed or reordered (inspect.signature); empty when all is as the recipe needs."""
    import inspect

    import transformers
    import trl
    from trl import DPOTrainer

    where = f"TRL {trl.__version__} (transformers {transformers.__version__})"
    problems = []
    for name, params, private, why in TRL_SURFACE:
        kind = "internal" if private else "method"
        fn = getattr(DPOTrainer, name, None)
        if not callable(fn):
            problems.append(f"{where}: DPOTrainer.{name}, a {kind} the recipe overrides ({why}), "
                            "is gone")  # fmt: skip
            continue
        have = [p for p in inspect.signature(fn).parameters if p != "self"]
        if have[: len(params)] != list(params):
            problems.append(f"{where}: DPOTrainer.{name}, a {kind} the recipe overrides ({why}), "
                            f"takes ({', '.join(have)}), not ({', '.join(params)}, ...)")  # fmt: skip
    for name, setter, why in TRL_ATTRIBUTES:
        try:
            source = inspect.getsource(getattr(DPOTrainer, setter))
        except (OSError, TypeError, AttributeError):
            source = ""
        if f"self.{name} =" not in source:
            problems.append(f"{where}: DPOTrainer.{name}, an internal the recipe reads ({why}), "
                            f"is no longer set in DPOTrainer.{setter}")  # fmt: skip
    try:
        from trl.trainer.utils import FusedCausalLMOutput

        fields = getattr(FusedCausalLMOutput, "__dataclass_fields__", {})
    except ImportError:
        fields = {}
    if "log_probs" not in fields:
        problems.append(f"{where}: trl.trainer.utils.FusedCausalLMOutput.log_probs (the policy "
                        "forward's per-token log-probs, read for the step log) is gone")  # fmt: skip
    return problems


def _trl_version() -> str:
    try:
        import trl
    except ImportError:
        raise TrainError("training needs TRL: pip install 'trl>=1.16' accelerate") from None
    if tuple(int(x) for x in trl.__version__.split(".")[:2]) < TRL_MIN:
        raise TrainError(f"training needs trl>=1.16 (loss_type [sigmoid, sft]); "
                         f"installed: {trl.__version__}")  # fmt: skip
    problems = trl_surface_problems()
    if problems:
        raise TrainError(
            "the DPO recipe is tested with TRL 1.16 (docs/training.md, 'The TRL surface'); this "
            "TRL changed what it relies on:\n  " + "\n  ".join(problems)
        )
    return trl.__version__


SET_BY_RECIPE = {
    "output_dir": "output_dir", "learning_rate": "learning_rate", "num_train_epochs": "epochs",
    "max_steps": "max_steps", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "seed": "seed", "beta": "beta", "loss_type": "nll_weight",
    "loss_weights": "nll_weight", "max_length": "max_length", "save_steps": "save_every",
    "save_strategy": "save_every", "logging_steps": "log_every",
    "precompute_ref_log_probs": "ref_logps", "use_cpu": "device", "model_init_kwargs": "dtype",
}  # fmt: skip
"""TRL / transformers arguments the recipe sets from its own keys: refused under `trainer:`."""


def dpo_args(cfg: TrainConfig):
    """TRL's DPOConfig for this config: the recipe's keys mapped, `trainer:` passed through."""
    import difflib

    import torch
    from trl import DPOConfig

    known = {f.name for f in dataclasses.fields(DPOConfig)}
    for key in cfg.trainer:
        if key in SET_BY_RECIPE:
            raise TrainError(f"'trainer.{key}' is set by the recipe's '{SET_BY_RECIPE[key]}'; "
                             "set that instead")  # fmt: skip
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean 'trainer.{close[0]}'?)" if close else ""
            raise TrainError(f"unknown key 'trainer.{key}': not a TRL DPOConfig argument{hint}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise TrainError(f"'warmup_ratio' must be in [0, 1), got {cfg.warmup_ratio}")
    device = models.pick_device(cfg.device)
    cuda = device.startswith("cuda")
    dtype = torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, "cpu")
    nll = cfg.nll_weight
    args = dict(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, beta=cfg.beta,
        loss_type=["sigmoid", "sft"] if nll else ["sigmoid"], loss_weights=[1.0, nll] if nll else None,
        max_length=None,  # too-long pairs are left out (and counted) before, never truncated
        precompute_ref_log_probs=True, logging_steps=1, lr_scheduler_type="linear",
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 500,
        use_cpu=device == "cpu", model_init_kwargs={"dtype": dtype},
        bf16=cuda and dtype in (torch.float32, torch.bfloat16), fp16=False,
        report_to="none", disable_tqdm=True, log_level="warning", dataloader_pin_memory=cuda,
        gradient_checkpointing=cuda,  # TRL's default on a GPU; on a CPU it only costs time
    )  # fmt: skip
    if "warmup_ratio" in known:  # transformers 4
        args["warmup_ratio"] = cfg.warmup_ratio
    else:  # transformers 5: a float below 1 is a ratio
        args["warmup_steps"] = cfg.warmup_ratio
    try:
        return DPOConfig(**{**args, **cfg.trainer})
    except (ValueError, TypeError) as e:
        raise TrainError(f"trainer: {e}") from None


def resume_point(asked, out: Path) -> str | None:
    """The checkpoint folder `trainer.resume_from_checkpoint` names (true: output_dir's latest
    checkpoint-N), checked before any model loads; None when not resuming."""
    if asked in (None, False, ""):
        return None
    if asked is True or str(asked).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        found = get_last_checkpoint(str(out)) if out.is_dir() else None
        if found is None:
            raise TrainError(f"trainer.resume_from_checkpoint: output_dir {out} holds no "
                             "checkpoint-N folder to resume from")  # fmt: skip
        return found
    if not (Path(asked) / "trainer_state.json").is_file():
        raise TrainError(f"trainer.resume_from_checkpoint: {asked} is not a checkpoint folder "
                         "(no trainer_state.json)")  # fmt: skip
    return str(asked)


def sequence_key(ids) -> bytes:
    """A token sequence's key (prompt + response ids): how the version's reference log-probs are
    found again in TRL's padded batches."""
    import hashlib

    import numpy as np

    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).digest()


def version_logps_table(encoded: list, chosen: list, rejected: list) -> dict:
    """sequence_key -> the version's reference log-prob, for each kept pair's two sequences (a
    sequence met twice has one log-prob: the same tokens scored by the same reference)."""
    table: dict = {}
    for (c, j), lc, lr in zip(encoded, chosen, rejected, strict=True):
        table.setdefault(sequence_key(c.prompt_ids + c.response_ids), lc)
        table.setdefault(sequence_key(j.prompt_ids + j.response_ids), lr)
    return table


def _trainer_class(version_logps: dict | None = None):
    """DPOTrainer with four changes: rows arrive tokenized (no re-tokenizing); with
    `version_logps` (version_logps_table), TRL's precompute pass takes the reference log-probs
    from it (its public per-batch hook, compute_ref_log_probs) and runs no model; each micro-batch
    also logs `accuracy` (beyond LOGRATIO_ATOL), `dpo_loss` and `nll`; a checkpoint that cannot be
    written is removed whole. The methods overridden are TRL_SURFACE."""
    from collections import defaultdict

    import torch
    import torch.nn.functional as F
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl import DPOTrainer

    class RecipeTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            self.lost_checkpoints: list = []
            self.recipe_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
            super().__init__(*args, **kwargs)
            # TRL's reference pass (it runs in __init__) ran the policy through a DeepSpeed
            # inference engine of its own (trl.models.utils.prepare_deepspeed); under ZeRO-3 that
            # engine's parameter hooks stay on the policy, and the training engine's first
            # forward fails (IndexError: pop from an empty deque). The pass is done: remove them.
            engine = getattr(self, "_precompute_engine", None)  # TRL_ATTRIBUTES
            if engine is not None:
                engine.destroy()
                self._precompute_engine = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids from the scorer's encoder

        def compute_ref_log_probs(self, model, inputs):
            if version_logps is None:
                return super().compute_ref_log_probs(model, inputs)
            ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu().bool()
            found = [version_logps.get(sequence_key(row[m].numpy())) for row, m in zip(ids, mask)]
            if None in found:  # every sequence was encoded from the same rows
                raise TrainError("a training sequence has no reference log-prob in the version")
            logps = torch.tensor(found, dtype=torch.float32, device=inputs["input_ids"].device)
            return logps.chunk(2, dim=0)  # the batch is [chosen, rejected]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen: list = []
            handle = self.accelerator.unwrap_model(model).register_forward_hook(
                lambda _m, _a, out: seen.append(out)
            )
            try:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                handle.remove()
            if seen and self.args.ld_alpha is None:  # LD-DPO's weighted sums are not ours
                if getattr(seen[0], "log_probs", None) is None:
                    raise TrainError(f"TRL {_trl_version()}: the policy forward returned no "
                                     "per-token log_probs (FusedCausalLMOutput), which the step "
                                     "log reads; see docs/training.md, the TRL surface")  # fmt: skip
                self._our_metrics(inputs, seen[0].log_probs.detach())
            return result

        def _our_metrics(self, inputs, log_probs) -> None:
            mask = inputs["completion_mask"][:, 1:]
            per_token = log_probs[:, -mask.size(1) :] * mask
            pc, pr = per_token.sum(1).chunk(2)
            beta = self.args.beta
            cr = beta * (pc - inputs["ref_chosen_logps"].to(pc))
            rr = beta * (pr - inputs["ref_rejected_logps"].to(pr))
            gather = self.accelerator.gather
            metrics = self.recipe_metrics["train" if self.model.training else "eval"]
            right = gather(ranked_right(cr, rr, beta).float())
            metrics["accuracy"].append(right.mean().item())
            metrics["dpo_loss"].append(gather(-F.logsigmoid(cr - rr)).mean().item())
            chosen_mask = mask.chunk(2)[0]
            nll_sum = gather(-per_token.chunk(2)[0].sum().reshape(1)).sum()
            n_tok = gather(chosen_mask.sum().reshape(1)).sum()
            metrics["nll"].append((nll_sum / n_tok.clamp(min=1)).item())

        def log(self, logs, start_time=None):
            mode = "train" if self.model.training else "eval"
            prefix = "" if mode == "train" else "eval_"
            ours = self.recipe_metrics[mode]
            logs.update({prefix + k: sum(v) / len(v) for k, v in ours.items() if v})
            ours.clear()
            super().log(logs, start_time)

        def _save_checkpoint(self, model, trial):
            step = self.state.global_step  # the recipe runs no hyperparameter search: no trial
            folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
            try:
                super()._save_checkpoint(model, trial)
            except OSError as e:  # a full disk: lose this checkpoint, not the run or older ones
                if self.args.should_save:
                    shutil.rmtree(folder, ignore_errors=True)
                self.lost_checkpoints.append({"step": self.state.global_step, "error": str(e)})

    return RecipeTrainer


def _reporter(console: Console, progress, cfg: TrainConfig, log: list, table: Table):
    """A TrainerCallback: our progress bar, the step log (training.json), the console lines;
    `progress` is None on the processes other than the main one, which report nothing."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        task = None

        def on_train_begin(self, args, state, control, **kw):
            if progress is not None:
                self.task = progress.add_task("dpo steps", total=state.max_steps, rate="")

        def on_log(self, args, state, control, logs=None, **kw):
            if progress is None or not logs or "loss" not in logs:
                return
            g = logs.get
            rec = {"step": state.global_step, "loss": g("loss"), "dpo_loss": g("dpo_loss"),
                   "nll": g("nll"), "rewards/chosen": g("rewards/chosen"),
                   "rewards/rejected": g("rewards/rejected"), "margins": g("rewards/margins"),
                   "accuracy": g("accuracy"), "lr": g("learning_rate"), "grad_norm": g("grad_norm"),
                   "trl": dict(logs)}  # fmt: skip
            log.append(rec)
            progress.update(self.task, completed=state.global_step, rate=f"loss {rec['loss']:.4f}")
            step, last = state.global_step, state.max_steps
            if step % cfg.log_every == 0 or step == last:
                console.print(
                    f"step {step}/{last}  loss {rec['loss']:.4f}  rewards/chosen {rec['rewards/chosen']:+.4f}"
                    f"  rewards/rejected {rec['rewards/rejected']:+.4f}  margins {rec['margins']:+.4f}"
                    f"  accuracy {rec['accuracy']:.2f}",
                    soft_wrap=True,
                )
                table.add_row(str(step), f"{rec['loss']:.4f}", f"{rec['rewards/chosen']:+.4f}",
                              f"{rec['rewards/rejected']:+.4f}", f"{rec['margins']:+.4f}",
                              f"{rec['accuracy']:.2f}", f"{rec['lr']:.2e}")  # fmt: skip

    return Report()


ROWS = ".dpo_rows"
"""The training rows on disk, in output_dir while training (removed after): every process reads
the same files, and TRL's reference pass caches its columns next to them, where all can read."""


def _shared_rows(columns: dict, out: Path, main: bool, args):
    from datasets import Dataset, load_from_disk

    if main:
        shutil.rmtree(out / ROWS, ignore_errors=True)
        Dataset.from_dict(columns).save_to_disk(str(out / ROWS))
    args.distributed_state.wait_for_everyone()
    return load_from_disk(str(out / ROWS))


def _save(trainer, tok, dest: Path, cfg: TrainConfig, start: str, main: bool) -> None:
    """Write the model (full) or the adapter and, with lora.merge, the merged model to `dest`
    through a temporary folder. Every process calls it (DeepSpeed / FSDP gather the weights);
    the main process writes. The merge loads the base model and the saved adapter on the CPU."""
    tmp = dest.with_name(dest.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp / "adapter" if cfg.finetune == "lora" else tmp))
    if not main:
        trainer.accelerator.wait_for_everyone()
        return
    if cfg.finetune == "lora" and cfg.lora.merge:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dtype = trainer.args.model_init_kwargs["dtype"]
        base = AutoModelForCausalLM.from_pretrained(start, dtype=dtype)
        PeftModel.from_pretrained(base, tmp / "adapter").merge_and_unload().save_pretrained(tmp)
    tok.save_pretrained(tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        target = dest / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()
    trainer.accelerator.wait_for_everyone()


def check_output_dir(cfg: TrainConfig) -> Path:
    """output_dir, refused inside a version (the model and its checkpoints never go into one:
    versions are immutable) or where a trained model already is; the CLI asks before it
    prepares any model, train() again."""
    out = Path(cfg.output_dir)
    try:
        store.refuse_inside_version(out, "output_dir", "the trained model ")
    except store.StoreError as e:
        raise TrainError(str(e)) from None
    if (out / "training.json").exists():
        raise TrainError(f"output_dir {out} already holds a trained model; choose another")
    return out


def train(cfg: TrainConfig, console: Console | None = None) -> dict:
    """Train; return (and write to output_dir/training.json) the training record. Under
    `accelerate launch` every process calls this; the main one reports and writes."""
    console = console or stderr_console()
    validate_train(cfg, "training config")  # a config built in code is checked as a file's is
    main = int(os.environ.get("RANK", "0")) == 0
    out = check_output_dir(cfg)
    # bad input is named before any model is loaded (tokenizers only)
    rows, data_info = load_pairs(cfg.data)
    start = models.resolve(cfg.model, key="model")
    ref = models.resolve(cfg.reference, key="reference") if cfg.reference else start
    if cfg.finetune == "lora":  # the module names, from the config on the meta device
        try:
            check_lora_targets(start, cfg.lora.target_modules, f"'lora.target_modules' (model "
                               f"{cfg.model})")  # fmt: skip
        except models.ModelError as e:
            raise TrainError(str(e)) from None
    tok = models.load_tokenizer(start, cfg.chat_template)
    if ref != start:
        models.check_same_tokenizer(tok, models.load_tokenizer(ref, cfg.chat_template),
                                    ("model", "reference"))  # fmt: skip
    kept, encoded, too_long = encode_pairs(cfg, rows, tok, data_info)
    reference = models.identity(cfg.reference or cfg.model, ref)
    from_version = version_ref_logps(cfg, data_info, kept, reference)
    if isinstance(from_version, tuple) and cfg.trainer.get("ld_alpha") is not None:
        from_version = "trainer.ld_alpha weights the log-probs (LD-DPO); the version's are sums"
    if isinstance(from_version, str) and cfg.ref_logps == "version":
        raise TrainError(f"ref_logps: version refused: {from_version}")
    trl_version = _trl_version()
    args = dpo_args(cfg)
    resume = resume_point(args.resume_from_checkpoint, out)

    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback

    columns = {"prompt_ids": [c.prompt_ids for c, _ in encoded],
               "chosen_ids": [c.response_ids for c, _ in encoded],
               "rejected_ids": [j.response_ids for _, j in encoded]}  # fmt: skip
    version_logps = None  # TRL's pass adds them as columns, from the version or computed
    if isinstance(from_version, tuple):
        version_logps = version_logps_table(encoded, *from_version)
        ref_record = {"source": "version", "reason": None}
    else:
        ref_record = {"source": "trl", "reason": from_version}
    peft_config = None
    if cfg.finetune == "lora":
        from peft import LoraConfig

        lc = cfg.lora
        peft_config = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                 target_modules=lc.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    ref_model = None
    if ref != start and ref_record["source"] == "trl":
        ref_model = AutoModelForCausalLM.from_pretrained(ref, **args.model_init_kwargs)

    t0 = time.perf_counter()
    if main:
        console.print(f"[bold]dpo[/] (TRL {trl_version}): {len(kept)} pairs from {cfg.data.source}"
                      + (f" ({too_long} longer than max_length left out)" if too_long else ""))  # fmt: skip
        console.print("reference log-probs: " + ("from the version's scores" if ref_record["source"]
                      == "version" else f"computed by TRL before training ({from_version})"),
                      soft_wrap=True)  # fmt: skip
    log: list[dict] = []
    table = Table("step", "loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "lr",
                  title="DPO training")  # fmt: skip
    with (
        library_bars_off(),
        progress_bar(console) if main else contextlib.nullcontext() as progress,
    ):
        rows_ds = _shared_rows(columns, out, main, args)
        trainer = _trainer_class(version_logps)(model=start, ref_model=ref_model, args=args,
                                                train_dataset=rows_ds, processing_class=tok,
                                                peft_config=peft_config)  # fmt: skip
        trainer.ref_model = ref_model = None  # its log-probs are precomputed: free it for training
        trainer.remove_callback(PrinterCallback)  # it prints each log dict to stdout
        trainer.add_callback(_reporter(console, progress, cfg, log, table))
        trainer.train(resume_from_checkpoint=resume)
    if main:
        console.print(table)
        for lost in trainer.lost_checkpoints:
            console.print(f"[yellow]warning:[/] checkpoint-{lost['step']} could not be written "
                          f"and was removed ({lost['error']})", soft_wrap=True)  # fmt: skip
    if main:
        shutil.rmtree(out / ROWS, ignore_errors=True)
    _save(trainer, tok, out, cfg, start, main)
    loss = "dpo sigmoid" + (
        f" + {cfg.nll_weight} * nll(chosen; mean over the micro-batch's chosen tokens)"
        if cfg.nll_weight else ""
    )  # fmt: skip
    record = {
        "round": None,
        "output": {"model": None if cfg.adapter_only else ".",
                   "adapter": "adapter" if cfg.finetune == "lora" else None},
        "output_model": models.identity(str(out), str(out)) if main else None,
        "start_model": models.identity(cfg.model, start),
        "reference": reference,
        "data": {**{k: v for k, v in data_info.items() if k not in ("rounds", "_manifest")},
                 "pairs": len(kept), "left_out_too_long": too_long, "config": cfg.data.config,
                 "split": cfg.data.split},
        "rounds": data_info.get("rounds"),
        "method": {"loss": loss, "beta": cfg.beta,
                   "training_prompt": "native instruction, model chat template",
                   "trainer": f"trl {trl_version} DPOTrainer", "loss_type": args.loss_type,
                   "loss_weights": args.loss_weights},
        "reference_logps": ref_record,
        "config": dataclasses.asdict(cfg),
        "processes": args.world_size,
        "global_batch": cfg.batch_size * cfg.grad_accum * args.world_size,
        "steps": trainer.state.global_step,
        "resumed_from": Path(resume).name if resume else None,
        "checkpoints_lost": trainer.lost_checkpoints,
        "seconds": round(time.perf_counter() - t0, 2),
        "log": log,
    }  # fmt: skip
    if record["rounds"]:
        record["round"] = record["rounds"][-1].get("round")
    if main:
        tmp = out / "training.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, out / "training.json")
    return record
