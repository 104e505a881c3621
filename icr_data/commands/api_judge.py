"""The eval judge on an OpenAI-compatible server: `llm:openai:MODEL@URL` in an eval recipe.

    judges:
      - llm:openai:gpt-4-turbo@https://api.openai.com/v1     # key in $OPENAI_API_KEY
      - llm:openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1   # vllm serve, no key

The same pairwise judge as `llm:MODEL` (judges.LlmJudge: the shipped or given template, both
orders, the last A / B / tie parsed, an unparseable verdict counted), its model answering
through stages.chat_api.ChatApiStage instead of a local engine: greedy, `judge_max_tokens`
tokens, the recipe's `sampling.seed`. The record names the judge `llm:openai:MODEL@HOST` and
keeps MODEL and HOST only: the URL's path is in no file, the key (read from $OPENAI_API_KEY
when the judge starts) in none at all. Registered as the judge kind `llm:openai`
(base/registry.JUDGES); evaluation.parse_judge matches a kind with a colon before its first word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from icr_data.commands.evaluation import EvalError
from icr_data.commands.judges import LlmJudge
from icr_data.stages.chat_api import API_KEY_ENV, ApiError, ChatApiStage, endpoint

if TYPE_CHECKING:
    from icr_data.commands.evaluation import EvalRun


class OpenAIJudge(LlmJudge):
    """`llm:openai:MODEL@URL`: an LLM judge whose model a chat-completions server runs."""

    kind = "llm:openai"
    models = ("MODEL@URL",)
    remote: ClassVar[bool] = True

    def __init__(self, spec: str, names: list[str]):
        super().__init__(spec, names)
        model, at, url = names[0].partition("@")
        if not model or not at:
            raise EvalError(f"judges: {spec[:120]!r} is not llm:openai:MODEL@URL "
                            "(e.g. llm:openai:gpt-4-turbo@https://api.openai.com/v1)")  # fmt: skip
        try:
            self.url, self.host = endpoint(url, f"judges: llm:openai:{model}")
        except ApiError as e:
            raise EvalError(str(e)) from None
        self.model = model

    def label(self) -> str:
        return f"{self.kind}:{self.model}@{self.host}"

    def resolve(self) -> None:
        """Nothing to find or prepare: the server holds the model."""
        self.paths = []
        self.ids = [{"name": self.model, "api": "openai-compatible", "host": self.host,
                     "key_env": API_KEY_ENV}]  # fmt: skip

    def outputs(self, run: EvalRun, requests: list[dict]) -> list[str]:
        from datasets import Dataset

        from icr_data.core.runner import run_rows

        cfg = run.cfg
        stage = ChatApiStage(model=self.model, url=self.url, max_tokens=cfg.judge_max_tokens,
                             seed=cfg.sampling.seed)  # fmt: skip
        try:
            out, _ = run_rows(run.executor, stage, Dataset.from_list(requests), cfg.shard_prompts,
                              f"judge {self.label()}")  # fmt: skip
        except ApiError as e:
            raise EvalError(f"judge {self.label()}: {e}") from None
        return list(out["response"])
