"""Which tokens are the response: the assistant turn through its end-of-turn token, first included."""

import pytest

from icr_data.base.languages import DIRECTIVE, scoring_prompt
from icr_data.stages.chat import ChatEncoder, TemplateError, eot_token_ids


def test_response_span_is_assistant_turn_through_eot(tokenizer):
    enc = ChatEncoder(tokenizer, count_eot=True).encode("Hello", "World is big")
    prompt = tokenizer.decode(enc.prompt_ids)
    assert prompt == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(enc.response_ids) == "World is big<|im_end|>"
    assert enc.response_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # nothing after the end-of-turn token: ChatML's trailing newline is not scored
    assert enc.response_ids == tokenizer("World is big<|im_end|>")["input_ids"]


def test_eot_excluded_and_empty_response(tokenizer):
    enc = ChatEncoder(tokenizer, count_eot=False)
    assert tokenizer.decode(enc.encode("Hello", "World").response_ids) == "World"
    assert enc.encode("Hello", "").response_ids == []
    assert ChatEncoder(tokenizer).encode("Hello", "").response_ids == [eot_token_ids(tokenizer)[0]]


def test_template_that_trims_the_response_is_refused(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'] | trim")
    with pytest.raises(TemplateError, match="changes the assistant text.*row-7"):
        ChatEncoder(tok).encode("Hi", "  padded  ", row="row-7")


def test_missing_chat_template_is_refused(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        ChatEncoder(tok).encode("Hi", "there")


def test_scoring_prompt_modes():
    assert (
        scoring_prompt("Name a fruit.", "Nenne eine Frucht.", "en", "cross_lingual")
        == "Name a fruit."
    )
    de = scoring_prompt("Name a fruit.", "Nenne eine Frucht.", "de", "cross_lingual")
    assert de == (
        "Please answer the following instruction using only German, unless explicitly "
        "instructed to respond in a different language.\n\nName a fruit."
    )
    assert de == DIRECTIVE.format(language="German") + "Name a fruit."
    assert (
        scoring_prompt("Name a fruit.", "Nenne eine Frucht.", "de", "native")
        == "Nenne eine Frucht."
    )
