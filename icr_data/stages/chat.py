"""Chat-template rendering shared by generation and scoring.

The response tokens of a candidate are those of the assistant turn as the model's chat template
renders [user: x, assistant: y]: from the first response token up to and including the template's
end-of-turn token (`<|im_end|>`, `<|eot_id|>`, `</s>`...), nothing after it. The prompt part is
the template's rendering of [user: x] with the generation prompt. Prompt and response are
tokenized separately, as vLLM generated them and as TRL's DPO tokenizes prompt and completion.
"""

from __future__ import annotations

from dataclasses import dataclass

from icr_data.base.errors import IcrError


class TemplateError(IcrError):
    """The chat template cannot render a conversation the way scoring needs."""


def render_prompt(tokenizer, instruction: str) -> str:
    """[user: instruction] rendered with the generation prompt, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; "
            "use an instruct model or one whose tokenizer_config.json has a chat_template"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


def prompt_token_ids(tokenizer, instruction: str) -> list[int]:
    return tokenizer(render_prompt(tokenizer, instruction), add_special_tokens=False)["input_ids"]


def special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for tid, added in tokenizer.added_tokens_decoder.items():
        if added.special:
            ids.add(tid)
    return ids


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]
    """Response tokens that are scored (end-of-turn token included when counted)."""


class ChatEncoder:
    """Encodes (scoring prompt, response) rows for one tokenizer, caching prompt encodings."""

    def __init__(self, tokenizer, count_eot: bool = True):
        self.tok = tokenizer
        self.count_eot = count_eot
        self.specials = special_token_ids(tokenizer)
        self._prompts: dict[str, tuple[str, list[int]]] = {}

    def _prompt(self, instruction: str) -> tuple[str, list[int]]:
        hit = self._prompts.get(instruction)
        if hit is None:
            text = render_prompt(self.tok, instruction)
            hit = (text, self.tok(text, add_special_tokens=False)["input_ids"])
            self._prompts[instruction] = hit
        return hit

    def encode(self, instruction: str, response: str, row: str = "") -> Encoded:
        prompt_text, prompt_ids = self._prompt(instruction)
        full = self.tok.apply_chat_template(
            [
                {"role": "user", "content": instruction},
                {"role": "assistant", "content": response},
            ],
            tokenize=False,
        )
        where = f" ({row})" if row else ""
        if not full.startswith(prompt_text):
            raise TemplateError(
                "the chat template renders the user turn differently with and without an "
                f"assistant reply, so the response cannot be located{where}"
            )
        rest = full[len(prompt_text) :]
        if not rest.startswith(response):
            raise TemplateError(
                f"the chat template changes the assistant text (e.g. trims it){where}; "
                "responses must be stored as the template renders them"
            )
        enc = self.tok(rest, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        eot = next(
            (i for i, (tid, (s, _)) in enumerate(zip(ids, offsets)) if tid in self.specials
             and s >= len(response)),
            None,
        )  # fmt: skip
        if eot is None:
            raise TemplateError(
                f"the chat template does not close the assistant turn with a special token{where}"
            )
        return Encoded(prompt_ids, ids[: eot + 1] if self.count_eot else ids[:eot])


def eot_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn under this template (stop tokens for generation)."""
    enc = ChatEncoder(tokenizer, count_eot=True).encode("x", "y")
    ids = {enc.response_ids[-1]}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
