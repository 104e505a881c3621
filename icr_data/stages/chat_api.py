"""Chat completions from an OpenAI-compatible server, as a stage: each row's `instruction` sent as
one user turn, the server's answer kept as `response`.

    stage = ChatApiStage(model="gpt-4-turbo", url="https://api.openai.com/v1", max_tokens=64)
    out, _ = run_rows(executor, stage, rows, shard_prompts)       # core/runner.py

The eval's `llm:openai:MODEL@URL` judge runs through it (commands/api_judge.py), shard by shard
like every stage, so a killed eval resumes without paying for the shards it finished. The server
is OpenAI's API, a vLLM server (`vllm serve MODEL`) or any other that answers
`POST {URL}/chat/completions`.

The key is read from the environment variable `key_env` (OPENAI_API_KEY) when the stage opens,
sent as `Authorization: Bearer ...`, and kept nowhere else: not in the stage's fields (which
are pickled, printed and digested), not in its key or markers (they hold the model and host),
not in a message. No key: no header (a local server needs none). Each request is bounded: a
timeout, a few retries with exponential backoff on 408/409/429/5xx and transport errors
(honouring a short Retry-After), then one error line naming the host and the status.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from icr_data.base.errors import IcrError
from icr_data.core.stage import Advance, Shard, Stage

API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 30.0
"""Seconds: a longer Retry-After is not waited for (the tries are bounded)."""


class ApiError(IcrError):
    """A server that cannot answer; the message names its host and the HTTP status."""


def endpoint(url: str, where: str = "url") -> tuple[str, str]:
    """(the base URL as requests use it, its host) from an http(s) URL; user names, passwords,
    queries and fragments are refused (a secret belongs in the environment, not in a spec)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"{where}: {url[:80]!r} is not an http(s) URL such as "
                       "https://api.openai.com/v1 or http://127.0.0.1:8000/v1")  # fmt: skip
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ApiError(f"{where}: give the server's URL without user, password, query or "
                       f"fragment (host {parts.hostname}); a key goes in ${API_KEY_ENV}")  # fmt: skip
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}", host


@dataclass
class ChatApiStage(Stage):
    """One answer per row from a chat-completions server (greedy unless `temperature`)."""

    name: ClassVar[str] = "chat_api"
    inputs: ClassVar[tuple[str, ...]] = ("prompt_id", "lang", "instruction")
    outputs: ClassVar[tuple[str, ...]] = ("prompt_id", "lang", "response")

    model: str
    url: str
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    key_env: str = API_KEY_ENV
    timeout: float = 60.0
    """Seconds to wait for one answer (connecting: at most 10)."""
    tries: int = 4
    backoff: float = 1.0
    """Seconds before the second try; doubled before each next one."""
    concurrency: int = 8
    """Requests in flight at once."""
    _client: object = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        base, _ = endpoint(self.url)
        return {"api": "openai-chat", "model": self.model, "url": base,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}  # fmt: skip

    def made_of(self, shard: Shard) -> dict:
        return {"shard": shard.index, "model": self.model, "host": endpoint(self.url)[1]}

    def open(self) -> None:
        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # no request lines in any log
        base, _ = endpoint(self.url)
        key = os.environ.get(self.key_env, "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=base + "/", headers=headers,
                                    timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)))  # fmt: skip

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, rows, advance: Advance | None = None):
        """The shard's answers: the first request alone (a refused key or a wrong model fails
        after one request), then `concurrency` at once; after an error no new request starts."""
        import threading
        from concurrent.futures import ThreadPoolExecutor, as_completed

        from datasets import Dataset

        texts = list(rows["instruction"])
        answers: list[str] = [""] * len(texts)
        failed = threading.Event()

        def one(i: int) -> None:
            if failed.is_set():
                return
            try:
                answers[i] = self.complete(texts[i])
            except BaseException:
                failed.set()
                raise
            if advance is not None:
                advance(1)

        if texts:
            one(0)
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            for fut in as_completed([pool.submit(one, i) for i in range(1, len(texts))]):
                fut.result()  # the first error ends the shard
        return Dataset.from_dict({"prompt_id": list(rows["prompt_id"]),
                                  "lang": list(rows["lang"]), "response": answers})  # fmt: skip

    def complete(self, prompt: str) -> str:
        """The server's answer to one user turn, with bounded retries."""
        import httpx

        _, host = endpoint(self.url)
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}  # fmt: skip
        if self.seed is not None:
            body["seed"] = self.seed
        last, wait = "", 0.0
        for attempt in range(self.tries):
            if attempt:
                time.sleep(wait)
            wait = self.backoff * 2**attempt
            try:
                r = self._client.post("chat/completions", json=body)
            except httpx.HTTPError as e:  # timeouts, refused connections, broken streams
                last = type(e).__name__
                continue
            if r.status_code == 200:
                return self.content(r, host)
            last = f"HTTP {r.status_code} {r.reason_phrase}".strip()
            if r.status_code not in RETRY_STATUS:
                raise ApiError(f"{host}: {last}{self.detail(r)}")
            after = r.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit() and float(after) <= MAX_RETRY_AFTER:
                wait = max(wait, float(after))
        raise ApiError(f"{host}: {last} after {self.tries} tries")

    def content(self, r, host: str) -> str:
        try:
            message = r.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(f"{host}: an answer without choices[0].message "
                           f"(is {self.url} an OpenAI-compatible chat server?)") from None  # fmt: skip
        return (message.get("content") if isinstance(message, dict) else None) or ""

    def detail(self, r) -> str:
        """What the server says went wrong, short, never the key (401/403: only a hint)."""
        if r.status_code in (401, 403):
            return f" (is ${self.key_env} set to a key this server accepts?)"
        try:
            said = r.json().get("error", {})
            said = said.get("message", "") if isinstance(said, dict) else str(said)
        except (ValueError, AttributeError):
            said = ""
        key = os.environ.get(self.key_env, "").strip()
        said = " ".join(str(said).split())[:160]
        return f" ({said.replace(key, '***') if key else said})" if said else ""
