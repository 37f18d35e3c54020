"""An OpenAI-compatible chat-completions client (OpenAI, vLLM, any ``/v1/chat/completions`` server).

Usage::

    config = ClientConfig.from_mapping({"base_url": "http://127.0.0.1:8000/v1", "model": "gpt-4o",
                                        "api_key_env": "OPENAI_API_KEY", "concurrency": 8,
                                        "prices": {"prompt_per_1m": 2.5, "completion_per_1m": 10.0}})
    with ChatClient(config) as client:
        image = check_image(image_root, "img.png")                                  # the path policy
        result = client.chat([user_message("Describe it.", images=[image])])         # -> ChatResult
        for index, outcome in client.chat_many([messages_a, messages_b]):           # as completed
            ...   # outcome is a ChatResult, or an ApiError once retries are exhausted
        client.usage.metrics()   # {"llm_requests", "llm_calls", "llm_retries", "llm_failures",
                                 #  "llm_prompt_tokens", "llm_completion_tokens", "llm_cost_usd"}

- *Images* pass the path policy (:mod:`silkfire.images`) before a byte is read, and go as base64 data URLs (``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``).
- *Concurrency*: :meth:`ChatClient.chat_many` runs at most ``concurrency`` requests at once (threads; one
  pooled ``httpx.Client``, thread-safe) and yields results in the calling thread, so callers can write caches
  without locks.
- *Retries* (``max_retries`` after the first try): on HTTP 408/409/429/5xx, timeouts, connection errors and
  malformed bodies (not JSON, or no ``choices[0].message.content`` string). Delay = ``min(backoff_max_s,
  backoff_base_s * 2**attempt)`` with equal jitter (half fixed, half uniform random); a ``Retry-After`` header
  (seconds or HTTP date) raises the delay to at least its value (capped at ``max_retry_after_s``). Other 4xx
  (400, 401, 403, 404, ...) are not retried.
- *Accounting* (:class:`Usage`, thread-safe): ``requests`` = HTTP attempts, ``calls`` = successful replies,
  ``retries``, ``failures`` (gave up), token counts from the replies' ``usage``, cost from ``prices`` (USD per
  million tokens).
- *Secrets*: the key is read from the environment variable named by ``api_key_env`` (``null`` = no key, e.g. a
  local vLLM). It lives only in the HTTP client's headers: not in the config, ``repr``, metrics or errors
  (error texts quoting a server body are scrubbed of it).
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

from silkfire.images import CheckedImage

RETRY_STATUS = frozenset({408, 409, 429})


class ApiError(RuntimeError):
    """A chat request failed for good (non-retryable status, or retries exhausted). Never holds the key."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class ClientConfig:
    """Connection and accounting settings (Hydra: ``silkie.judge`` of kind ``api``, FIRE's teacher, ...)."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 4
    max_retries: int = 6
    timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int | None = 2048
    prompt_price_per_1m: float = 0.0
    completion_price_per_1m: float = 0.0

    KEYS = ("base_url", "model", "api_key_env", "concurrency", "max_retries", "timeout_s", "backoff_base_s",
            "backoff_max_s", "max_retry_after_s", "temperature", "max_tokens", "prices")

    def __post_init__(self) -> None:
        problems = []
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1:
            problems.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_base_s < 0:
            problems.append("max_retries >= 0, timeout_s > 0 and backoff_base_s >= 0 are required")
        if problems:
            raise ValueError("llm client config: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ClientConfig:
        """From a dict / DictConfig with the keys of :attr:`KEYS`; ``prices: {prompt_per_1m,
        completion_per_1m}`` in USD per million tokens. Unknown keys raise, naming the allowed ones."""
        data = dict(cfg)
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"llm client config: unknown key(s) {unknown}; allowed: {list(cls.KEYS)}")
        prices = dict(data.pop("prices", None) or {})
        bad = sorted(set(prices) - {"prompt_per_1m", "completion_per_1m"})
        if bad:
            raise ValueError(f"llm client config: unknown price key(s) {bad}; use prompt_per_1m, completion_per_1m")
        kwargs: dict[str, Any] = {key: value for key, value in data.items() if value is not None or key in
                                  ("api_key_env", "max_tokens")}
        for key in ("concurrency", "max_retries"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        for key in ("timeout_s", "backoff_base_s", "backoff_max_s", "max_retry_after_s", "temperature"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs, prompt_price_per_1m=float(prices.get("prompt_per_1m", 0.0)),
                   completion_price_per_1m=float(prices.get("completion_per_1m", 0.0)))

    def params(self) -> dict[str, Any]:
        """Loggable settings (MLflow params): no key, only the variable's name."""
        return {"llm_base_url": self.base_url, "llm_model": self.model, "llm_api_key_env": self.api_key_env,
                "llm_concurrency": self.concurrency, "llm_max_retries": self.max_retries,
                "llm_timeout_s": self.timeout_s, "llm_temperature": self.temperature}


@dataclass
class Usage:
    """Counters over a client's life (thread-safe updates)."""

    prompt_price_per_1m: float = 0.0
    completion_price_per_1m: float = 0.0
    requests: int = 0
    calls: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    @property
    def cost_usd(self) -> float:
        return (self.prompt_tokens * self.prompt_price_per_1m
                + self.completion_tokens * self.completion_price_per_1m) / 1e6

    def metrics(self, prefix: str = "llm_") -> dict[str, float]:
        """Flat numbers for MLflow / metrics JSON."""
        with self._lock:
            values = {"requests": self.requests, "calls": self.calls, "retries": self.retries,
                      "failures": self.failures, "prompt_tokens": self.prompt_tokens,
                      "completion_tokens": self.completion_tokens}
        values["cost_usd"] = round(self.cost_usd, 6)
        return {prefix + key: value for key, value in values.items()}


@dataclass(frozen=True)
class ChatResult:
    """One reply: its text, its token usage and how many HTTP attempts it took."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    model: str = ""


def image_data_url(image: CheckedImage | bytes, mime: str | None = None) -> str:
    """A ``data:<mime>;base64,...`` URL for an image that passed the path policy, or for bytes (PNG assumed).

    Never a bare path: a record's path reaches a server only through :func:`silkfire.images.check_image`."""
    if isinstance(image, bytes):
        data, kind = image, mime or "image/png"
    elif isinstance(image, CheckedImage):
        data, kind = image.read_bytes(), mime or image.mime
    else:
        raise TypeError(f"image_data_url takes bytes or a silkfire.images.CheckedImage, not {type(image).__name__} "
                        "(check paths with silkfire.images.check_image first)")
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def user_message(text: str, images: Sequence[CheckedImage | bytes] = ()) -> dict[str, Any]:
    """A user message: plain text, or (with images) the content-parts form with images first."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}
                                   for image in images]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Thread-safe chat-completions client; use as a context manager (closes the connection pool)."""

    def __init__(self, config: ClientConfig, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.usage = Usage(config.prompt_price_per_1m, config.completion_price_per_1m)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        self._secret: str | None = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"llm client: the environment variable {config.api_key_env!r} (api_key_env) is "
                                 "not set; export the API key there, or set api_key_env: null for a server "
                                 "without authentication")
            self._secret = key
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        self._http = httpx.Client(base_url=config.base_url.rstrip("/") + "/", headers=headers,
                                  timeout=httpx.Timeout(config.timeout_s), limits=limits, transport=transport)

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- one request ------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> ChatResult:
        """One completion, with retries; raises :class:`ApiError` when it fails for good."""
        body: dict[str, Any] = {"model": self.config.model, "messages": list(messages),
                                "temperature": self.config.temperature}
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        body.update(params)
        attempts = 0
        while True:
            attempts += 1
            self.usage.add(requests=1)
            try:
                result = self._attempt(body, attempts)
            except _Retryable as error:
                if attempts > self.config.max_retries:
                    self.usage.add(failures=1)
                    raise ApiError(f"chat completion failed after {attempts} attempt(s): {error}",
                                   error.status, attempts) from None
                self.usage.add(retries=1)
                self._sleep(self._delay(attempts - 1, error.retry_after))
                continue
            except ApiError:
                self.usage.add(failures=1)
                raise
            self.usage.add(calls=1, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
            return result

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** attempt)
        with self._rng_lock:
            delay = cap / 2 + self._rng.uniform(0, cap / 2)  # equal jitter: spreads synchronized retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_retry_after_s))
        return delay

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _attempt(self, body: dict[str, Any], attempts: int) -> ChatResult:
        try:
            response = self._http.post("chat/completions", json=body)
        except httpx.TimeoutException as error:
            raise _Retryable(f"timeout ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _Retryable(f"connection error ({type(error).__name__})") from None
        status = response.status_code
        if status in RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")), status)
        if status >= 400:
            excerpt = self._scrub(response.text[:300])
            raise ApiError(f"chat completion refused: HTTP {status}: {excerpt}", status, attempts)
        try:
            payload = response.json()
            choice = payload["choices"][0]["message"]
            text = choice["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _Retryable(f"malformed response body ({type(error).__name__})", status=status) from None
        usage = payload.get("usage") or {}
        return ChatResult(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), attempts=attempts,
                          model=str(payload.get("model") or ""))

    # ---- many requests ----------------------------------------------------------------------------------
    def chat_many(self, requests: Sequence[Sequence[Mapping[str, Any]]],
                  **params: Any) -> Iterator[tuple[int, ChatResult | ApiError]]:
        """Run message lists with at most ``concurrency`` in flight; yield ``(index, result or ApiError)`` in
        completion order, in the calling thread. Stopping the iteration early cancels the requests not started."""
        if not requests:
            return
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="llm") as pool:
            pending: dict[Future[ChatResult], int] = {}
            queue = iter(enumerate(requests))

            def submit() -> None:
                for index, messages in queue:
                    pending[pool.submit(self.chat, messages, **params)] = index
                    if len(pending) >= self.config.concurrency:
                        return

            submit()
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        error = future.exception()
                        if error is not None and not isinstance(error, ApiError):
                            error = ApiError(self._scrub(f"{type(error).__name__}: {error}"))
                        yield index, (error if error is not None else future.result())
                    submit()
            finally:
                for future in pending:
                    future.cancel()


def json_dumps(value: Any) -> str:
    """Compact, key-sorted JSON (hash inputs)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
