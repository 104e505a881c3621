"""The thin DPO recipe: train a model on a version's pairs (DPO sigmoid loss + optional NLL).

    python recipes/dpo.py recipes/dpo_demo.yaml [--set key=value ...]

Consumes a version (a local version folder, a Hub dataset at a revision, or an exported JSONL /
Parquet file) with TRL's conversational pair format. The training prompt is the pair's own
(native-language) instruction, rendered with the model's chat template; the response span is the
one the scorer counts (chat.py), so log-probs come from `score.response_logps`, the scorer's
own code. Reference log-probs are computed once, before training, under the training prompt.
Full fine-tune or LoRA (peft); gradient accumulation; bf16 autocast on CUDA; checkpoints; a rich
log of loss, rewards/chosen, rewards/rejected, margins and accuracy. Writes the trained model
(merged, loadable by transformers and vLLM), the LoRA adapter when there is one, and
training.json: what it trained on (dataset, version, revision, manifest digest) and how.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from icr_data import models
from icr_data.chat import ChatEncoder
from icr_data.console import progress_bar, stderr_console

# the config's settings live in train_config.py, so models.py can read a config; re-exported here
from icr_data.train_config import DataConfig, TrainConfig, TrainError, load_train_config


# ---------------------------------------------------------------------------------------- data
def load_pairs(cfg: DataConfig) -> tuple[list[dict], dict]:
    """(rows of instruction/chosen/rejected/lang, what the data is: source, version, revision)."""
    from datasets import load_dataset

    src = Path(cfg.source).expanduser()
    info: dict = {"source": cfg.source, "revision": cfg.revision}
    try:
        if src.is_dir():
            from icr_data import store

            manifest = store.read_manifest(src)
            ds = load_dataset(str(src), cfg.config, split=cfg.split)
            info.update(dataset=manifest.get("dataset"), version=manifest.get("version"),
                        manifest_sha256=store.sha256_file(src / "manifest.json"),
                        rounds=manifest.get("rounds"))  # fmt: skip
        elif src.is_file():
            kind = "parquet" if src.suffix == ".parquet" else "json"
            ds = load_dataset(kind, data_files=str(src), split="train")
        elif cfg.source.count("/") == 1 and not cfg.source.startswith((".", "/", "~")):
            ds = load_dataset(cfg.source, cfg.config, revision=cfg.revision, split=cfg.split)
        else:
            raise TrainError(f"data.source not found: {cfg.source}")
    except TrainError:
        raise
    except Exception as e:  # datasets raises many types; name the source
        raise TrainError(f"data.source {cfg.source}: cannot load pairs ({e})") from None
    if "prompt" not in ds.column_names and "instruction" in ds.column_names:
        ds = ds.rename_column("instruction", "prompt")  # labelled sets such as the seed pairs
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise TrainError(f"data.source {cfg.source}: no column(s) {', '.join(sorted(missing))}")
    rows = []
    for i, r in enumerate(ds):
        lang = r.get("lang")
        if cfg.languages and lang not in cfg.languages:
            continue
        rows.append({"instruction": _text(r["prompt"], "user", cfg.source, i), "lang": lang,
                     "chosen": _text(r["chosen"], "assistant", cfg.source, i),
                     "rejected": _text(r["rejected"], "assistant", cfg.source, i)})  # fmt: skip
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


# ---------------------------------------------------------------------------------------- loop
LOGRATIO_ATOL = 1e-4
"""Logged accuracy counts a pair as ranked right only when its chosen log-ratio beats the rejected
one by more than this (in nats; times beta in reward units). A model equal to its reference has
rewards of exactly zero in exact arithmetic, but the reference pass and a training step batch the
rows differently, and float rounding then differs by about 1e-7 per sum on some CPUs: without the
tolerance, an unchanged model could log a step-0 accuracy of 0.25."""


def ranked_right(chosen_rewards, rejected_rewards, beta: float):
    """Which pairs the implicit reward ranks right, beyond float rounding (LOGRATIO_ATOL)."""
    return (chosen_rewards - rejected_rewards) > beta * LOGRATIO_ATOL


def dpo_loss(pc, pr, rc, rr, beta: float):
    """DPO sigmoid loss and the logged rewards, from policy/reference chosen/rejected log-probs."""
    import torch.nn.functional as F

    chosen_r, rejected_r = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen_r - rejected_r), chosen_r.detach(), rejected_r.detach()


def weights_dtype(cfg: TrainConfig, device: str):
    """The dtype the trained model and the reference are loaded in (float32 unless `dtype` says)."""
    import torch

    return torch.float32 if cfg.dtype == "auto" else models.pick_dtype(cfg.dtype, device)


def autocast(device: str):
    """bf16 autocast on CUDA (off elsewhere): the reference pass runs under the same precision
    as the policy's forward passes, so the step-0 implicit rewards are exactly zero."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def reference_logps(cfg: TrainConfig, start: str, ref: str, rows: list[dict], device: str,
                    console=None, progress=None):  # fmt: skip
    """The reference's summed log-probs of each kept pair's chosen and rejected response (under
    the training prompt), computed once before training by the scorer's own log-prob stage, in
    the trained model's weights dtype and autocast: a float64 tensor [2 * pairs], chosen first."""
    import torch
    from datasets import Dataset

    from icr_data.executor import LocalExecutor, MemoryWork, tasks
    from icr_data.stages import LogprobStage, Shard, model_key

    cands = Dataset.from_list([
        {"prompt_id": str(i), "lang": r["lang"] or "", "sample_idx": k, "scoring_prompt": r["instruction"],
         "response": r[side]}
        for i, r in enumerate(rows) for k, side in enumerate(("chosen", "rejected"))
    ])  # fmt: skip
    ident = models.identity(cfg.reference or cfg.model, ref)
    stage = LogprobStage(role="reference", model=ref, model_key=model_key(ident),
                         tokenizer_from=(start, ref), chat_template=cfg.chat_template,
                         count_eot=True, device=device,
                         dtype="float32" if cfg.dtype == "auto" else cfg.dtype, autocast=True,
                         model_id=ident)  # fmt: skip
    ex = LocalExecutor(MemoryWork(), console, progress)
    todo = tasks(stage, [Shard(0, cands)])
    ex.run(stage, todo, "reference log-probs")
    return torch.tensor(ex.load(stage, todo[0])["logp"], dtype=torch.float64)


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=lc.target_modules, task_type="CAUSAL_LM"))  # fmt: skip


def _save(model, tok, dest: Path, cfg: TrainConfig, final: bool) -> None:
    """Write the adapter (LoRA) and/or the plain model to `dest` via a temporary folder. A final
    LoRA save also merges the adapter into the model (in place: training is over)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.finetune == "lora":
        model.save_pretrained(tmp / "adapter")
        if final and cfg.lora.merge:
            model.merge_and_unload().save_pretrained(tmp)
    else:
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        target = dest / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


def train(cfg: TrainConfig, console: Console | None = None) -> dict:
    """Train; return (and write to output_dir/training.json) the training record."""
    import torch
    from transformers import get_scheduler

    from icr_data.score import response_logps

    console = console or stderr_console()
    out = Path(cfg.output_dir)
    if (out / "training.json").exists():
        raise TrainError(f"output_dir {out} already holds a trained model; choose another")
    rows, data_info = load_pairs(cfg.data)
    start = models.resolve(cfg.model, "model")
    ref = models.resolve(cfg.reference, "reference") if cfg.reference else start
    tok = models.load_tokenizer(start, cfg.chat_template)
    if ref != start:
        models.check_same_tokenizer(tok, models.load_tokenizer(ref, cfg.chat_template),
                                    ("model", "reference"))  # fmt: skip
    enc = ChatEncoder(tok, count_eot=True)
    pairs, kept, too_long = [], [], 0
    for i, r in enumerate(rows):
        c = enc.encode(r["instruction"], r["chosen"], row=f"pair {i}")
        j = enc.encode(r["instruction"], r["rejected"], row=f"pair {i}")
        longest = len(c.prompt_ids) + max(len(c.response_ids), len(j.response_ids))
        if cfg.max_length and longest > cfg.max_length:
            too_long += 1
            continue
        pairs.append((c, j))
        kept.append(r)
    if not pairs:
        raise TrainError(f"every pair is longer than max_length={cfg.max_length} tokens")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = models.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    t0 = time.perf_counter()
    console.print(f"[bold]dpo[/]: {len(pairs)} pairs from {cfg.data.source}"
                  + (f" ({too_long} longer than max_length left out)" if too_long else ""))  # fmt: skip
    with progress_bar(console) as progress:
        ref_logps = reference_logps(cfg, start, ref, kept, device, console, progress)
        model = models.load_causal_lm(start, device, weights_dtype(cfg, device))
        ref_c, ref_r = ref_logps[0::2], ref_logps[1::2]
        console.print(f"reference log-probs computed once ({time.perf_counter() - t0:.1f}s)")

        if cfg.finetune == "lora":
            model = _wrap_lora(model, cfg)
        model.train()
        lm = model.get_base_model() if cfg.finetune == "lora" else model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        per_step = cfg.batch_size * cfg.grad_accum
        steps = cfg.max_steps or math.ceil(len(pairs) / per_step) * cfg.epochs
        sched = get_scheduler("linear", opt, num_warmup_steps=round(cfg.warmup_ratio * steps),
                              num_training_steps=steps)  # fmt: skip
        rng = random.Random(cfg.seed)
        order: list[int] = []
        log: list[dict] = []
        table = Table("step", "loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "lr",
                      title="DPO training")  # fmt: skip
        task = progress.add_task("dpo steps", total=steps, rate="")
        for step in range(1, steps + 1):
            sums = {"loss": 0.0, "dpo": 0.0, "nll": 0.0, "chosen": 0.0, "rejected": 0.0, "acc": 0.0}
            n_seen = 0
            for _ in range(cfg.grad_accum):
                if len(order) < cfg.batch_size:
                    fresh = list(range(len(pairs)))
                    rng.shuffle(fresh)
                    order += fresh
                idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
                batch = [x for i in idx for x in pairs[i]]
                with autocast(device):
                    logps = response_logps(lm, batch, pad_id, device)
                pc, pr = logps[0::2], logps[1::2]
                losses, cr, rr = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], cfg.beta)
                n_tok = torch.tensor([len(pairs[i][0].response_ids) for i in idx],
                                     dtype=torch.float64)  # fmt: skip
                nll = (-pc / n_tok.clamp(min=1)).mean()
                loss = losses.mean() + cfg.nll_weight * nll
                (loss / cfg.grad_accum).float().backward()
                k = len(idx)
                n_seen += k
                sums["loss"] += loss.item() * k
                sums["dpo"] += losses.sum().item()
                sums["nll"] += nll.item() * k
                sums["chosen"] += cr.sum().item()
                sums["rejected"] += rr.sum().item()
                sums["acc"] += ranked_right(cr, rr, cfg.beta).double().sum().item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            m = {k: v / n_seen for k, v in sums.items()}
            rec = {"step": step, "loss": m["loss"], "dpo_loss": m["dpo"], "nll": m["nll"],
                   "rewards/chosen": m["chosen"], "rewards/rejected": m["rejected"],
                   "margins": m["chosen"] - m["rejected"], "accuracy": m["acc"],
                   "lr": sched.get_last_lr()[0], "grad_norm": grad_norm}  # fmt: skip
            log.append(rec)
            progress.update(task, advance=1, rate=f"loss {rec['loss']:.4f}")
            if step % cfg.log_every == 0 or step == steps:
                console.print(
                    f"step {step}/{steps}  loss {rec['loss']:.4f}  rewards/chosen {rec['rewards/chosen']:+.4f}"
                    f"  rewards/rejected {rec['rewards/rejected']:+.4f}  margins {rec['margins']:+.4f}"
                    f"  accuracy {rec['accuracy']:.2f}",
                    soft_wrap=True,
                )
                table.add_row(str(step), f"{rec['loss']:.4f}", f"{rec['rewards/chosen']:+.4f}",
                              f"{rec['rewards/rejected']:+.4f}", f"{rec['margins']:+.4f}",
                              f"{rec['accuracy']:.2f}", f"{rec['lr']:.2e}")  # fmt: skip
            if cfg.save_every and step % cfg.save_every == 0 and step < steps:
                _save(model, tok, out / f"checkpoint-{step}", cfg, final=False)
    console.print(table)
    model.eval()
    _save(model, tok, out, cfg, final=True)
    record = {
        "round": None,
        "output": {"model": None if cfg.adapter_only else ".",
                   "adapter": "adapter" if cfg.finetune == "lora" else None},
        "output_model": models.identity(str(out), str(out)),
        "start_model": models.identity(cfg.model, start),
        "reference": models.identity(cfg.reference or cfg.model, ref),
        "data": {**{k: v for k, v in data_info.items() if k != "rounds"}, "pairs": len(pairs),
                 "left_out_too_long": too_long, "config": cfg.data.config, "split": cfg.data.split},
        "rounds": data_info.get("rounds"),
        "method": {"loss": "dpo sigmoid" + (f" + {cfg.nll_weight} * nll(chosen)" if cfg.nll_weight else ""),
                   "beta": cfg.beta, "training_prompt": "native instruction, model chat template"},
        "config": dataclasses.asdict(cfg),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "log": log,
    }  # fmt: skip
    if record["rounds"]:
        record["round"] = record["rounds"][-1].get("round")
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / "training.json")
    return record


def trained_model(config: str | Path, console: Console | None = None) -> Path:
    """Train the model a training config produces (recipes name it `train:CONFIG`) into its cache
    folder, models.trained_path (keyed by content: the config, the data file or version manifest,
    the starting model, the training code), unless it is there; returns that folder. The config's
    own output_dir is not used. Its starting model and reference must be prepared already:
    prepare.run (which calls this) prepares them first. Atomic in effect: training.json, which
    marks the model as complete, is written last, and what a killed run left is cleared first."""
    cfg = load_train_config(config, need_output=False)
    out = models.trained_path(config)
    if models.is_prepared(f"train:{config}", out):
        return out
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted run left
    cfg.output_dir = str(out)
    console = console or stderr_console()
    console.print(f"[bold]training[/] {Path(config).name} once (cached in {out})")
    train(cfg, console)
    return out
