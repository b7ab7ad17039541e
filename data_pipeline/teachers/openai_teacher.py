"""Teacher behind any OpenAI-compatible /v1/chat/completions server (vLLM, TGI, SGLang, llama.cpp, hosted).

Requests run concurrently (asyncio + aiohttp, at most `concurrency` in flight) on one event loop and one
keep-alive connection pool kept for the teacher's life. httpx's async client (its pool scans every connection
for every request) managed 68 requests/s with 64 in flight against a local server answering instantly, where
aiohttp managed 1,242 in the same run (bench/README.md, "generation_scale.py"). A 429, a 5xx, a timeout
or a connection error is retried with exponential backoff and full jitter (AWS Architecture Blog,
"Exponential Backoff And Jitter"), moving to the next base URL, so one dead server of a fleet only
costs a retry. A prompt that still fails is returned with finish_reason="error" and the last error:
the runner records it, nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp

from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher
from stagekit.io import StageError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay  # from Retry-After; None: exponential backoff


class _BadStatus(Exception):
    """A 4xx other than the retryable ones: the request itself is bad, retrying cannot help."""


class OpenAITeacher(Teacher):
    def __init__(
        self,
        base_urls: list[str],
        *,
        model: str = "",
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not base_urls:
            raise StageError("openai teacher: no server given (data.generation.teacher.base_urls)")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._jitter = random.Random()  # jitter only spreads load; it never changes what is generated
        self._next = 0  # round-robin position, carried across batches
        # One loop and one session for the teacher's life: connections are reused across batches.
        self._loop: asyncio.Runner | None = None
        self._session: aiohttp.ClientSession | None = None
        # Servers behind these URLs are interchangeable, so the name (which resume checks) omits them.
        self.name = f"openai:{model or 'server-default'}"

    def complete(self, batch: list[Messages], sampling: Sampling) -> list[Completion]:
        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop.run(self._complete_all(batch, sampling))

    def close(self) -> None:
        if self._loop is not None:
            if self._session is not None:
                self._loop.run(self._session.close())
            self._loop.close()
        self._loop = self._session = None

    async def _complete_all(self, batch: list[Messages], sampling: Sampling) -> list[Completion]:
        if self._session is None:
            # `limit` caps open connections at the requests allowed in flight, so each stays busy and alive.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=self.headers,
            )
        if not self.model:
            self.model = await self._server_model()
        gate = asyncio.Semaphore(self.concurrency)
        start, self._next = self._next, self._next + len(batch)
        jobs = [self._one(gate, m, sampling, start + i) for i, m in enumerate(batch)]
        return list(await asyncio.gather(*jobs))

    async def _server_model(self) -> str:
        """The model id the server lists first (used when the recipe names none)."""
        errors = []
        for url in self.base_urls:
            try:
                async with self._session.get(f"{url}/models") as r:
                    r.raise_for_status()
                    return (await r.json(content_type=None))["data"][0]["id"]
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError, ValueError) as e:
                errors.append(f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise StageError(
            "openai teacher: could not read the model id from GET /models ("
            + "; ".join(errors)
            + "); set data.generation.teacher.model"
        )

    async def _one(
        self, gate: asyncio.Semaphore, messages: Messages, sampling: Sampling, slot: int
    ) -> Completion:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        last_error = ""
        for attempt in range(self.retries + 1):
            url = self.base_urls[(slot + attempt) % len(self.base_urls)]
            try:
                async with gate:
                    return self._parse(await self._post(url, body), attempt + 1)
            except _Retryable as e:
                last_error, delay = str(e), e.delay
            except _BadStatus as e:
                return Completion("", "error", error=str(e), attempts=attempt + 1)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                return Completion(
                    "",
                    "error",
                    error=f"{url}: unexpected response ({type(e).__name__}: {e})",
                    attempts=attempt + 1,
                )
            if attempt < self.retries:
                cap = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                await asyncio.sleep(delay if delay is not None else self._jitter.uniform(0, cap))
        return Completion(
            "",
            "error",
            error=f"failed after {self.retries + 1} attempts: {last_error}",
            attempts=self.retries + 1,
        )

    async def _post(self, url: str, body: dict) -> dict:
        try:
            async with self._session.post(f"{url}/chat/completions", json=body) as r:
                data = await r.read()
                status, retry_after = r.status, r.headers.get("retry-after")
        except asyncio.TimeoutError as e:
            raise _Retryable(f"{url}: timeout after {self.timeout_s}s ({type(e).__name__})") from e
        except aiohttp.ClientError as e:  # connection refused/reset, server died mid-response
            raise _Retryable(f"{url}: {type(e).__name__}: {e}") from e
        if status >= 400:
            text = data.decode("utf-8", "replace")
            if status in RETRYABLE_STATUS:
                delay = _retry_after(retry_after, self.max_backoff_s)
                raise _Retryable(f"{url}: HTTP {status}: {text[:200]}", delay)
            raise _BadStatus(f"{url}: HTTP {status}: {text[:300]}")
        return json.loads(data)

    @staticmethod
    def _parse(data: dict, attempts: int) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(
            text=choice["message"]["content"] or "",
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            attempts=attempts,
        )


def _retry_after(header: str | None, cap: float) -> float | None:
    """Seconds from a Retry-After header (429/503), capped; None when absent or not a number."""
    try:
        return min(cap, float(header))
    except (TypeError, ValueError):
        return None
