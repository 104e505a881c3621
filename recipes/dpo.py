"""The thin DPO recipe: train on a dataset version with TRL's DPOTrainer (DPO + NLL on chosen),
LoRA or full, on one GPU or many.

    python recipes/dpo.py recipes/dpo_demo.yaml
    python recipes/dpo.py recipes/dpo_paper_round1.yaml --set learning_rate=3e-7 --set nll_weight=1.0
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml \
        recipes/dpo.py recipes/dpo_paper_round1.yaml --set grad_accum=1

The config's keys are the fields of icr_data.base.train_config.TrainConfig (data.source, model,
reference, output_dir, finetune, lora.*, beta, nll_weight, learning_rate, epochs, batch_size,
grad_accum, ref_logps...); any other TRL DPOConfig argument goes under `trainer:` with its own
name. What the recipe does (read the version, build the rows, build the trainer, write
training.json) lives in icr_data/commands/train.py, so `icr-data train CONFIG` runs the same thing from an
installed package; this file is the entry point next to the configs (see docs/training.md).
"""

from __future__ import annotations

import sys

from icr_data.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
