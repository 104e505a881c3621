"""A DPO training config (the YAML that recipes/dpo.py and `train:CONFIG` model strings name):
its settings and how it is read. No icr_data module it imports imports models or train, so
models.py can read a config to name the model it trains (models.trained_path) without importing
the training code; train.py re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from icr_data.errors import IcrError


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
    """Pairs per micro-batch."""
    grad_accum: int = 8
    """Micro-batches per optimizer step: global batch = batch_size x grad_accum (32 by default)."""
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None
    """Drop (and count) pairs whose prompt + longer response exceeds this many tokens."""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    """Weights of the trained model and the reference: auto = float32 (on CUDA the forward passes,
    reference and policy alike, run under bf16 autocast); or float32, bfloat16, float16."""
    log_every: int = 1
    save_every: int | None = None
    """Write a checkpoint every this many optimizer steps; None: only the final model."""

    @property
    def adapter_only(self) -> bool:
        """LoRA without merge: the output is an adapter, no model vLLM or the scorer can load."""
        return self.finetune == "lora" and not self.lora.merge


def load_train_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), need_output: bool = True
) -> TrainConfig:
    import yaml

    from icr_data.config import RecipeError, apply_override, from_dict, resolve_relative

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for o in overrides:
            apply_override(data, o)
        cfg = from_dict(TrainConfig, data, where=str(path))
    except OSError:
        raise TrainError(f"training config not found: {path}") from None
    except (yaml.YAMLError, RecipeError) as e:
        raise TrainError(str(e)) from None
    base = path.resolve().parent
    cfg.data.source = resolve_relative(cfg.data.source, base)
    for name in ("model", "reference", "chat_template", "output_dir"):
        value = getattr(cfg, name)
        if value and name in ("model", "reference") and value.startswith("train:"):
            # a model another config trains: its config is named relative to this one
            setattr(cfg, name, "train:" + resolve_relative(value.removeprefix("train:"), base))
        elif value:
            setattr(cfg, name, resolve_relative(value, base))
    if not cfg.data.source or not cfg.model or (need_output and not cfg.output_dir):
        raise TrainError(f"{path}: 'data.source', 'model' and 'output_dir' are required")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.epochs < 1:
        raise TrainError(f"{path}: 'batch_size', 'grad_accum' and 'epochs' must be >= 1")
    return cfg
