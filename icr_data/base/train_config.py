"""A DPO training config (the YAML that recipes/dpo.py and `train:CONFIG` model strings name):
its settings and how it is read. No icr_data module it imports imports models or train, so
models.py can read a config to name the model it trains (models.trained_path) without importing
the training code; train.py re-exports these names.

The top-level keys are the recipe's own (they map onto TRL's DPOConfig in train.dpo_args); any
other TRL / transformers training argument passes through, under its own name, in `trainer:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from icr_data.base.errors import IcrError
from icr_data.base.yamlconf import load, non_finite, shown


class TrainError(IcrError):
    """A training run that cannot start; the message names the file, row or option."""


@dataclass
class DataConfig:
    source: str = ""
    """A version folder (<store>/<dataset>/vN), a Hub dataset id, or a JSONL/Parquet file of pairs."""
    revision: str | None = None
    """Hub sources: the revision (a version tag such as v3, a branch or a commit)."""
    config: str = "pairs"
    split: str = "train"
    languages: list[str] | None = None
    """Train on these languages only; None: all."""
    limit: int | None = None
    """At most this many pairs (the first ones); None: all."""


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    merge: bool = True
    """Also write the merged model (what vLLM and the scorer load); the adapter is always kept."""


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: str = ""
    """The model to train (its starting weights): a folder, a Hub id or builtin:*."""
    reference: str | None = None
    """The DPO reference; None: the starting model (the usual choice)."""
    chat_template: str | None = None
    output_dir: str = ""
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    beta: float = 0.1
    nll_weight: float = 0.0
    """Weight of the NLL term on chosen (mean per token); the paper trains DPO+NLL (e.g. 1.0)."""
    learning_rate: float = 5e-7
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 4
    """Pairs per micro-batch, per process (TRL's per_device_train_batch_size)."""
    grad_accum: int = 8
    """Micro-batches per optimizer step: global batch = batch_size x grad_accum x processes (32
    by default on one process; divide grad_accum by the number of GPUs to keep it)."""
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None
    """Drop (and count) pairs whose prompt + longer response exceeds this many tokens."""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    """Weights of the trained model: auto or float32 = float32 weights (on CUDA, bf16 mixed
    precision: TRL's `bf16`); bfloat16 or float16 = weights in that dtype."""
    log_every: int = 1
    """Print the step log every this many steps (every step is recorded in training.json)."""
    save_every: int | None = None
    """Write a checkpoint (output_dir/checkpoint-N, TRL's) every this many optimizer steps;
    None: only the final model."""
    ref_logps: Literal["auto", "version", "compute"] = "auto"
    """Where the reference log-probs come from. auto: from the version's own scores when they are
    the training reference's under the training prompt (native scoring, the same reference and
    tokenizer, the end-of-turn token counted), else TRL computes them once before training;
    version: from the version or refuse with the reason; compute: TRL computes them."""
    trainer: dict = field(default_factory=dict)
    """Other TRL DPOConfig / transformers TrainingArguments, under their own names (e.g.
    gradient_checkpointing, optim, lr_scheduler_type, save_total_limit, report_to, deepspeed,
    fsdp). A name the recipe sets from a key above is refused with that key's name."""

    @property
    def adapter_only(self) -> bool:
        """LoRA without merge: the output is an adapter, no model vLLM or the scorer can load."""
        return self.finetune == "lora" and not self.lora.merge


TRAIN_PATHS = ("data.source", "model", "reference", "chat_template", "output_dir")
"""Fields resolved against the config's folder; `train:CONFIG` keeps its prefix."""


def load_train_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), need_output: bool = True
) -> TrainConfig:
    """A training config (yamlconf.load), relative paths resolved against its folder."""
    cfg = load(path, TrainConfig, overrides, what="training config", error=TrainError,
               paths=TRAIN_PATHS)  # fmt: skip
    if not cfg.data.source or not cfg.model or (need_output and not cfg.output_dir):
        raise TrainError(f"{path}: 'data.source', 'model' and 'output_dir' are required")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.epochs < 1:
        raise TrainError(f"{path}: 'batch_size', 'grad_accum' and 'epochs' must be >= 1")
    validate_train(cfg, str(path))
    return cfg


def validate_train(cfg: TrainConfig, where: str) -> None:
    """Every number of a training config in its range, before any model loads: one TrainError
    naming the key (NaN and infinities refused wherever a finite number is meant)."""
    import math

    def bad(key: str, value, rule: str) -> None:
        raise TrainError(f"{where}: '{key}' must be {rule}, got {shown(value)}")

    finite = {"beta": cfg.beta, "learning_rate": cfg.learning_rate,
              "nll_weight": cfg.nll_weight, "warmup_ratio": cfg.warmup_ratio,
              "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
              "lora.dropout": cfg.lora.dropout}  # fmt: skip
    for key, value in finite.items():
        if not math.isfinite(value):
            bad(key, value, "a finite number")
    if (passed := non_finite(cfg.trainer, "trainer")) is not None:  # what goes to TRL as it is
        bad(*passed, "a finite number")
    if cfg.beta <= 0:
        bad("beta", cfg.beta, "> 0 (the DPO loss scales the log-ratio by it)")
    if cfg.learning_rate <= 0:
        bad("learning_rate", cfg.learning_rate, "> 0")
    for key in ("nll_weight", "weight_decay"):
        if getattr(cfg, key) < 0:
            bad(key, getattr(cfg, key), ">= 0")
    if cfg.max_grad_norm <= 0:
        bad("max_grad_norm", cfg.max_grad_norm, "> 0")
    if not 0 <= cfg.warmup_ratio <= 1:
        bad("warmup_ratio", cfg.warmup_ratio, "in [0, 1]")
    for key in ("max_steps", "max_length", "save_every"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            bad(key, getattr(cfg, key), ">= 1 (or null)")
    if cfg.log_every < 1:
        bad("log_every", cfg.log_every, ">= 1")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        bad("data.limit", cfg.data.limit, ">= 1 (or null for all)")
    if cfg.finetune == "lora":
        if cfg.lora.r < 1:
            bad("lora.r", cfg.lora.r, ">= 1 (the adapter's rank)")
        if cfg.lora.alpha <= 0:
            bad("lora.alpha", cfg.lora.alpha, "> 0")
        if not 0 <= cfg.lora.dropout < 1:
            bad("lora.dropout", cfg.lora.dropout, "in [0, 1)")
        targets = cfg.lora.target_modules
        if isinstance(targets, list) and (not targets or not all(isinstance(m, str) and m
                                                                 for m in targets)):  # fmt: skip
            bad("lora.target_modules", targets, "'all-linear' or a list of module names")
