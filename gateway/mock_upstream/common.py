"""What the mock upstream's protocols share: the failure models, the deterministic counts."""

import math

FAILURES = ("fail-500", "fail-429", "fail-timeout", "fail-drop", "no-usage", "stream-error", "incomplete",
            "huge-usage")
# The `billed*` models report every quantity billed apart (issue #28), as the providers do:
# Anthropic's 5-minute and 1-hour cache writes, web searches, thinking tokens, service tier and
# speed (`billed`, `billed-priority`, `billed-fast`); OpenAI's served service tier (chat
# `billed-flex`, `billed-priority`); the Responses API's 30-minute and 12-hour writes and web and
# file search calls (`billed`, served on the priority tier).
BILLED_WRITES_5M, BILLED_WRITES_1H = 8, 16
BILLED_WEB_SEARCHES, BILLED_FILE_SEARCHES = 2, 1


def served_tier(model: str) -> str | None:
    """The service tier a `billed-<tier>` model answers with (None for any other model)."""
    return model.removeprefix("billed-") if model.startswith("billed-") and model != "billed-fast" else None


# What the `huge-usage` model reports as its prompt's tokens: past 64 bits, as a broken (or
# hostile) upstream might; the gateway must not believe it.
HUGE_TOKENS = 2**63 + 7
REASONING_TOKENS = 16  # reported by the Responses API mock, part of its output tokens
# Chat completions answers carry a cookie, as real upstreams behind a load balancer may (the
# gateway must never pass it on to its callers), and rate-limit and processing headers spelt as
# upstreams spell them (the gateway passes those on).
CHAT_HEADERS = {"set-cookie": "mock_session=abc; Path=/", "X-Ratelimit-Remaining-Requests": "499",
                "OpenAI-Processing-MS": "7"}


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict):
        return value["text"] if isinstance(value.get("text"), str) else _text(value.get("content", ""))
    return ""


def counts(prompt: str, model: str) -> tuple[int, int, str]:
    prompt_tokens = 10 + math.ceil(len(prompt) / 4)
    reply = f"Mock reply from {model}: {prompt[:40]}"
    return prompt_tokens, math.ceil(len(reply) / 4), reply


def words(reply: str) -> list[str]:
    parts = reply.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]
