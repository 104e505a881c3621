"""The extension points: scorer backends, pairing rules, export formats and eval judges by name.

    from icr_data.base.registry import SCORERS
    SCORERS.names()                     # ['transformers', 'vllm', 'reward_model']
    SCORERS.check("transfomers", "recipe.yaml")   # RegistryError: ... did you mean ...?
    scorer_class = SCORERS.load("transformers")       # imported only now

Each registry maps a name to "module:attribute" and imports the module only when the entry is
loaded, so recipe validation and the CLI's option lists read the names from here at no cost and
without importing a layer above this one. Adding an extension is one file (the implementation)
plus one line in the registry below; `register` adds one at run time (a plugin, a test).
docs/extending.md shows one of each kind.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator

from icr_data.base.errors import IcrError


class RegistryError(IcrError):
    """A name no registry entry has."""


class Registry:
    """Names -> "module:attribute" (or the object itself), loaded on first use."""

    def __init__(self, kind: str, option: str, entries: dict[str, object]):
        self.kind = kind
        """What an entry is, in words (for messages): 'rule', 'format' ..."""
        self.option = option
        """The recipe key or CLI option that names an entry (for messages)."""
        self._entries: dict[str, object] = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(self, name: str, target: object) -> None:
        """Add (or replace) an entry: "module:attribute" or the object itself."""
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def check(self, name: object, where: str = "") -> None:
        """A RegistryError naming the option, the close match and every known name, unless
        `name` is registered."""
        if name in self._entries:
            return
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        prefix = f"{where}: " if where else ""
        named = (f"'{name}' ({self.option})" if self.option.startswith("-") or " " in self.option
                 else f"'{self.option}: {name}'")  # fmt: skip
        raise RegistryError(f"{prefix}unknown {self.kind} {named}{hint}; known: "
                            f"{', '.join(self.names())}")  # fmt: skip

    def load(self, name: str) -> object:
        """The registered object, importing its module now."""
        self.check(name)
        target = self._entries[name]
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


SCORERS = Registry("scorer backend", "scoring.backend", {
    "transformers": "icr_data.stages.score:TransformersScorer",
    "vllm": "icr_data.stages.score_vllm:VllmScorer",
    "reward_model": "icr_data.stages.score:RewardModelScorer",
})  # fmt: skip
"""How a scoring stage turns rows into numbers: a class taking the stage, with
`score(rows, advance) -> (Dataset, stats)` and `close()` (stages.score)."""

REWARD_MODEL_BACKENDS = ("reward_model",)
"""The SCORERS entries that score with a sequence classifier (scoring.judge), not log-probs."""


def logprob_backends() -> list[str]:
    """The names scoring.backend accepts: the SCORERS that compute log-probs."""
    return [n for n in SCORERS if n not in REWARD_MODEL_BACKENDS]


PAIRING_RULES = Registry("rule", "pairing.rule", {
    "max_min": "icr_data.pairing.pairing_rules:MAX_MIN",
    "max_random": "icr_data.pairing.pairing_rules:MAX_RANDOM",
    "top_bottom": "icr_data.pairing.pairing_rules:TOP_BOTTOM",
    "threshold": "icr_data.pairing.pairing_rules:THRESHOLD",
})  # fmt: skip
"""Which candidates of a prompt are paired: a pairing_rules.Rule (pairing.pairing_rules)."""

EXPORT_FORMATS = Registry("format", "export --format", {
    "trl": "icr_data.commands.export:TRL",
    "llamafactory": "icr_data.commands.export:LLAMAFACTORY",
    "jsonl": "icr_data.commands.export:JSONL",
})  # fmt: skip
"""Files for other trainers: an export.Format (commands.export)."""

JUDGES = Registry("judge kind", "judges", {
    "llm": "icr_data.commands.judges:LlmJudge",
    "reward": "icr_data.commands.judges:RewardJudge",
    "implicit": "icr_data.commands.judges:ImplicitJudge",
    "llm:openai": "icr_data.commands.api_judge:OpenAIJudge",
})  # fmt: skip
"""How an eval compares two answers: a judge kind (commands.judges)."""
