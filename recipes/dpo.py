"""The thin DPO recipe: train on a dataset version with DPO (+ NLL on chosen), LoRA or full.

    python recipes/dpo.py recipes/dpo_demo.yaml
    python recipes/dpo.py recipes/dpo_paper_round1.yaml --set learning_rate=3e-7 --set nll_weight=1.0

The config's keys are the fields of icr_data.train.TrainConfig (data.source, model, reference,
output_dir, finetune, lora.*, beta, nll_weight, learning_rate, epochs, batch_size, grad_accum...).
The loop itself lives in icr_data/train.py, so `icr-data train CONFIG` runs the same thing from an
installed package; this file is the recipe's entry point next to its configs.
"""

from __future__ import annotations

import sys

from icr_data.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
