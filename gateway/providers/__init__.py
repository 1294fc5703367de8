"""Provider adapters: wire formats, usage extraction, error shapes. One module per protocol.

What they share lives here: the usage a response reports, the 4-characters-a-token estimate for
responses that report none, and an incremental reader of server-sent events.
"""

import json
import math
from dataclasses import dataclass


@dataclass
class Usage:
    """Tokens of one request. `input_tokens` counts every prompt token, cached reads and cache
    writes included; `output_tokens` counts every output token, reasoning tokens included."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0


class Unsupported(ValueError):
    """A request the gateway will not forward as it is (a 400 naming `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def estimate_tokens(text: str) -> int:
    """One token per 4 characters, rounded up (no tokenizer download: there is no internet)."""
    return math.ceil(len(text) / 4)


def text_of(value) -> str:
    """The text inside a prompt value: a string, a list of parts with `text`, or nested messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(text_of(item) for item in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return value["text"]
        return text_of(value.get("content", ""))
    return ""


def strict_json(body: bytes):
    """json.loads that refuses NaN and Infinity (Python accepts them by default)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(body, parse_constant=refuse)


def int_field(data, *path) -> int:
    """A non-negative integer at `path` in nested dicts, or 0 if absent or of the wrong type."""
    for key in path:
        if not isinstance(data, dict):
            return 0
        data = data.get(key)
    return data if type(data) is int and data >= 0 else 0


class SSEReader:
    """Splits a byte stream into server-sent events, whatever the chunking. Each event comes back
    as (raw bytes including the blank line that ends it, event name or None, data string)."""

    def __init__(self):
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, str | None, str]]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            events.append(self._parse(raw))
        return events

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    @staticmethod
    def _parse(raw: bytes) -> tuple[bytes, str | None, str]:
        name, data = None, []
        for line in raw.decode("utf-8", errors="replace").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        return raw, name, "\n".join(data)


def rename_model(raw: bytes, upstream: str, public: str) -> bytes:
    """Rewrite `"model":"<upstream>"` to the facade's public name without re-encoding the event."""
    if upstream == public:
        return raw
    old, new = json.dumps(upstream).encode(), json.dumps(public).encode()
    return raw.replace(b'"model":' + old, b'"model":' + new).replace(b'"model": ' + old, b'"model": ' + new)


def renamed_body(raw: bytes, public_model: str) -> tuple[object, bytes]:
    """A whole JSON response, parsed, with its `model` renamed to the facade's public name
    (ValueError if it is not JSON)."""
    body = json.loads(raw)
    if isinstance(body, dict) and "model" in body:
        body["model"] = public_model
        raw = json.dumps(body, separators=(",", ":")).encode()
    return body, raw
