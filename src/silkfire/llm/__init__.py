"""Silkfire: llm -- an OpenAI-compatible chat-completions client and a local test server that speaks the API.

- :mod:`silkfire.llm.client`: :class:`ChatClient` (bounded concurrency, retries with backoff, token/cost
  accounting, API key from an environment variable only), :func:`user_message` (text + base64 images).
- :mod:`silkfire.llm.testing`: :class:`FakeChatServer`, a real HTTP server on 127.0.0.1 with scripted replies
  and fault injection (5xx, 429 + Retry-After, hangs, malformed bodies), for tests.
"""

from silkfire.llm.client import ApiError, ChatClient, ChatResult, ClientConfig, Usage, image_data_url, user_message

__all__ = ["ApiError", "ChatClient", "ChatResult", "ClientConfig", "Usage", "image_data_url", "user_message"]
