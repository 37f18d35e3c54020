"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: scripted replies, fault injection, call counts.

    def reply(request: dict) -> str:            # the parsed JSON body of the POST
        return "Rating: 4"

    with FakeChatServer(reply, fault_rate=0.3, seed=1) as server:
        config = ClientConfig(base_url=server.url, model="judge", api_key_env=None, timeout_s=0.5)
        ...
        server.calls, server.served, server.faults        # counters (thread-safe)
        server.requests                                   # bodies of the requests that were answered

``reply`` is a string (always the same), a list of strings (served in turn, the last repeated) or a callable
``(body) -> str | dict``; a dict is sent as the whole JSON response (``usage`` added when absent).
Usage is ``prompt_tokens`` = words of all text parts + 85 per image part, ``completion_tokens`` = words of the
reply (deterministic, so tests can check accounting).

Faults: with probability ``fault_rate`` (seeded ``random.Random(seed)``) a request gets one of ``fault_kinds``
chosen uniformly: ``"500"`` / ``"503"`` (server error), ``"429"`` (with ``Retry-After: <retry_after>``),
``"hang"`` (no reply for ``hang_s`` seconds -- set it above the client timeout), ``"malformed"`` (HTTP 200 with a
truncated JSON body), ``"no_choices"`` (HTTP 200, valid JSON without ``choices``). ``script`` forces the fault of
the first requests (``["429", None, "hang"]``: None = serve normally). ``fault_by_content=True`` draws each
request's fault from its body and how many times that body came before (seeded), not from arrival order: the
same requests meet the same faults whatever order they come in or however many clients send them (a sharded and
a one-process run). ``api_key``: requests without ``Authorization: Bearer <api_key>`` get HTTP 401 (the key is
never stored elsewhere or printed).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = ("500", "503", "429", "hang", "malformed", "no_choices")
Reply = str | Sequence[str] | Callable[[dict[str, Any]], "str | dict[str, Any]"]


def _text_parts(messages: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    texts, images = [], 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images += 1
    return texts, images


class FakeChatServer:
    """``/v1/chat/completions`` on 127.0.0.1 (random free port) in a background thread."""

    def __init__(self, reply: Reply = "OK", *, fault_rate: float = 0.0, fault_kinds: Sequence[str] = FAULT_KINDS,
                 script: Sequence[str | None] = (), retry_after: float = 0.05, hang_s: float = 2.0, seed: int = 0,
                 api_key: str | None = None, model: str = "fake-model", fault_by_content: bool = False) -> None:
        unknown = sorted(set(fault_kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {list(FAULT_KINDS)}")
        self.reply, self.fault_rate, self.fault_kinds = reply, fault_rate, tuple(fault_kinds)
        self.script, self.retry_after, self.hang_s = list(script), retry_after, hang_s
        self.model = model
        self.fault_by_content = fault_by_content
        self._seed = seed
        self._seen: Counter[str] = Counter()
        self._api_key = api_key
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._turn = 0
        self.calls = 0
        self.served = 0
        self.faults: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL for :class:`silkfire.llm.client.ClientConfig` (ends in ``/v1``)."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeChatServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-chat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- behaviour --------------------------------------------------------------------------------------
    def _next_fault(self, body: dict[str, Any] | None = None) -> str | None:
        with self._lock:
            self.calls += 1
            rng = self._rng
            if self.fault_by_content:
                digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
                rng = random.Random(f"{self._seed}/{digest}/{self._seen[digest]}")
                self._seen[digest] += 1
            if self.script:
                fault = self.script.pop(0)
            elif self.fault_rate and rng.random() < self.fault_rate:
                fault = rng.choice(self.fault_kinds)
            else:
                fault = None
            if fault is not None:
                self.faults[fault] += 1
            return fault

    def _reply_for(self, body: dict[str, Any]) -> str | dict[str, Any]:
        if callable(self.reply):
            return self.reply(body)
        if isinstance(self.reply, str):
            return self.reply
        with self._lock:
            index = min(self._turn, len(self.reply) - 1)
            self._turn += 1
        return self.reply[index]

    def authorised(self, header: str | None) -> bool:
        return self._api_key is None or header == f"Bearer {self._api_key}"

    def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self._reply_for(body)
        texts, images = _text_parts(body.get("messages") or [])
        prompt_tokens = sum(len(text.split()) for text in texts) + 85 * images
        if isinstance(reply, dict):
            payload = dict(reply)
            content = str(payload.get("choices", [{}])[0].get("message", {}).get("content", ""))
        else:
            content = reply
            payload = {"id": f"chatcmpl-{self.calls}", "object": "chat.completion",
                       "model": body.get("model", self.model),
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}
        payload.setdefault("usage", {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                                     "total_tokens": prompt_tokens + len(content.split())})
        with self._lock:
            self.served += 1
            self.requests.append(body)
        return payload


class _Handler(BaseHTTPRequestHandler):
    owner: FakeChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters, not logs
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        if not owner.authorised(self.headers.get("Authorization")):
            self._send(401, b'{"error": {"message": "invalid api key"}}')
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error": {"message": "body is not JSON"}}')
            return
        fault = owner._next_fault(body)
        if fault in ("500", "503"):
            self._send(int(fault), b'{"error": {"message": "server error"}}')
        elif fault == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": f"{owner.retry_after:g}"})
        elif fault == "hang":
            owner._stop.wait(owner.hang_s)
            self._send(503, b'{"error": {"message": "too late"}}')
        elif fault == "malformed":
            self._send(200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
        elif fault == "no_choices":
            self._send(200, b'{"id": "x", "object": "chat.completion"}')
        else:
            self._send(200, json.dumps(owner.respond(body)).encode("utf-8"))
