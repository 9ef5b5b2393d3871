"""`openai`: a judge model behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, …).

Standard library only. Requests run `max_concurrency` at a time; HTTP 429 and 5xx, timeouts and connection
errors are retried with bounded, jittered exponential backoff (longer where the server's Retry-After asks);
replies are cached on disk by request (see `cache`), so a re-run over the same inputs sends nothing. A judgment that cannot be obtained after the retries
raises `JudgeError`; the replies obtained before it stay cached, so a re-run resumes.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from vlguard_jax.evaluate.judges.base import Item, Judgment, JudgeError, register
from vlguard_jax.evaluate.judges.cache import ReplyCache, request_key
from vlguard_jax.evaluate.judges.rubrics import RUBRICS

RETRY_AFTER_MAX = 120.0
_TRANSIENT = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


@register("openai")
class OpenAIJudge:
    def __init__(self, base_url: str, model: str, rubric: str = "harmful", api_key_env: str = "OPENAI_API_KEY",
                 cache_dir: str | os.PathLike | None = None, max_concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 6, backoff_base: float = 1.0, backoff_max: float = 30.0):
        if rubric not in RUBRICS:
            raise JudgeError(f"unknown rubric {rubric!r}; known: {', '.join(RUBRICS)}")
        if max_concurrency < 1:
            raise JudgeError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.name = "openai"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.rubric = model, RUBRICS[rubric]
        self.api_key = os.environ.get(api_key_env)  # absent: fine for a local server
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens",
                                      "unparseable"), 0)

    def judge(self, items: Sequence[Item]) -> list[Judgment]:
        """Items that make the same request (the same text: the image is not sent) share one request and one
        cache entry."""
        bodies = [{"model": self.model, "messages": self.rubric.messages(item), "temperature": 0,
                   "max_tokens": self.rubric.max_tokens} for item in items]
        keys = [request_key(body) for body in bodies]
        unique = dict(zip(keys, bodies))
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            replies = dict(zip(unique, pool.map(self._reply, unique, unique.values())))
        return [self._judgment(replies[key], item) for key, item in zip(keys, items)]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                self._counts[name] += value

    def _reply(self, key: str, body: dict) -> dict:
        """The reply to `body`: cached, or posted and cached."""
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self._count(cache_hits=1)
            return cached
        reply = self._post(body)
        tokens = _tokens(reply)
        self._count(prompt_tokens=tokens[0], completion_tokens=tokens[1])
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply

    def _judgment(self, reply: dict, item: Item) -> Judgment:
        try:
            content = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url}: a reply without choices[0].message.content: {reply!r:.300}") from None
        judgment = self.rubric.parse(content, item)
        if judgment.label == "unparseable":
            self._count(unparseable=1)
        return dataclasses.replace(judgment, tokens=_tokens(reply))

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        wait = None  # the server's Retry-After, when it sent one
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
                time.sleep(self.delay(attempt, wait))
            self._count(requests=1)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"{self.url}: HTTP {e.code}: {e.read()[:300]!r}") from None
                error, wait = f"HTTP {e.code}", _seconds(e.headers.get("Retry-After"))
            except json.JSONDecodeError as e:
                raise JudgeError(f"{self.url}: a reply that is not json: {e}") from None
            except _TRANSIENT as e:
                error, wait = f"{type(e).__name__}: {e}", None
        raise JudgeError(f"{self.url}: no reply after {self.max_retries + 1} attempts; last: {error}")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry `attempt` (1, 2, …): jittered exponential backoff, but at least what the server
        asked for in Retry-After (capped at `RETRY_AFTER_MAX`: a server asking for hours gets the error instead)."""
        backoff = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        return backoff if retry_after is None else max(backoff, min(retry_after, RETRY_AFTER_MAX))


def _tokens(reply) -> tuple[int, int]:
    """(prompt, completion) tokens of a reply's usage; 0 where it reports none."""
    usage = (reply.get("usage") if isinstance(reply, dict) else None) or {}
    return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (HTTP allows a number of seconds or a date); None when absent or unreadable."""
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
