"""What the mock upstream's protocols report, deterministically: a prompt's counts and reply, and the
quantities the `billed*` models add."""

import math

# The `billed*` models report every quantity billed apart (issue #28), as the providers do:
# Anthropic's 5-minute and 1-hour cache writes, web searches, thinking tokens, service tier and
# speed (`billed`, `billed-priority`, `billed-fast`); OpenAI's served service tier (chat
# `billed-flex`, `billed-priority`); the Responses API's 30-minute and 12-hour writes and web and
# file search calls (`billed`, served on the priority tier).
BILLED_WRITES_5M, BILLED_WRITES_1H = 8, 16
BILLED_WEB_SEARCHES, BILLED_FILE_SEARCHES = 2, 1


def counts(prompt: str, model: str) -> tuple[int, int, str]:
    prompt_tokens = 10 + math.ceil(len(prompt) / 4)
    reply = f"Mock reply from {model}: {prompt[:40]}"
    return prompt_tokens, math.ceil(len(reply) / 4), reply


def words(reply: str) -> list[str]:
    parts = reply.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]
