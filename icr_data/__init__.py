"""icr_data: multilingual preference datasets from an English implicit reward.

Stages (one module each, each a function from a datasets.Dataset to a datasets.Dataset):
prompts -> generate -> score -> pairs, then store (versions) and card. `icr-data --help`.
"""

__version__ = "0.1.0"
