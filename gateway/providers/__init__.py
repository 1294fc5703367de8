"""Provider adapters: wire formats, usage extraction, error shapes. One module per protocol.

What they share lives here: the usage a response reports, the 4-characters-a-token estimate for
responses that report none, and an incremental reader of server-sent events.
"""

import functools
import json
import logging
import math
import re
from dataclasses import dataclass

import orjson

logger = logging.getLogger("codevector.gateway")

# The largest token count an upstream may report and be believed (GATEWAY_MAX_REPORTED_TOKENS;
# gateway.app sets it at start). A module global: int_field reads it for every field of every answer.
MAX_REPORTED_TOKENS = 2**32
# The longest line a stream may send (SSEReader); longer ends the request as an upstream error.
MAX_SSE_LINE_BYTES = 1024 * 1024


@dataclass
class Usage:
    """What one request is billed for. `input_tokens` counts every prompt token, cached reads and
    cache writes included; `cache_write_extended_tokens` is the part of the writes kept for the
    longer retention; `output_tokens` counts every output token, reasoning tokens included;
    server-side tool calls are counted per call. `service_tier` and `speed` are what the answer
    reports (they select the facade's price variant)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0
    cache_write_extended_tokens: int = 0
    web_search_calls: int = 0
    file_search_calls: int = 0
    service_tier: str | None = None
    speed: str | None = None


class Unsupported(ValueError):
    """A request the gateway will not forward as it is (a 400 naming `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def event_of(data: str) -> dict | None:
    """A stream event's JSON object, or None for anything else (a `[DONE]`, a comment, garbage)."""
    try:
        event = orjson.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class ReportedUsageStream:
    """What the OpenAI streams share: usage reported whole (the latest report wins), else estimated
    from the prompt and the text streamed so far; `done` at a normal end, `error` after an error."""

    @staticmethod
    def prompt_text(request_body: dict) -> str:
        raise NotImplementedError

    def __init__(self, public_model: str, caller_wants_usage: bool, request_body: dict):
        self.public_model = public_model
        self.caller_wants_usage = caller_wants_usage
        self.request_body = request_body
        self.reported: Usage | None = None
        self.service_tier: str | None = None  # the latest the stream's events report
        self.untrusted = False  # a report not believed (UntrustedUsage): the whole stream is estimated
        self.text: list[str] = []
        self.error = False
        self.done = False

    def report(self, read, usage) -> Usage | None:
        """`read(usage)` (the protocol's usage_from), kept as the latest report; None when the
        event reports none or reports what cannot be believed (logged once, then estimated)."""
        try:
            reported = read(usage)
        except UntrustedUsage as exc:
            if not self.untrusted:
                exc.log(self.public_model)
            self.untrusted, self.reported = True, None
            return None
        if reported is not None and not self.untrusted:
            self.reported = reported
        return reported

    def usage(self) -> Usage:
        usage = self.reported if self.reported is not None else Usage(
            input_tokens=estimate_tokens(self.prompt_text(self.request_body)),
            output_tokens=estimate_tokens("".join(self.text)), estimated=True)
        if usage.service_tier is None:
            usage.service_tier = self.service_tier
        return usage


def trusted(read, usage, public_model: str) -> Usage | None:
    """`read(usage)`, or None (to be estimated) when it reports what cannot be believed."""
    try:
        return read(usage)
    except UntrustedUsage as exc:
        exc.log(public_model)
        return None


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
    """Parse JSON, refusing NaN and Infinity. orjson first (several times faster, and it refuses
    them itself); what it refuses goes through the standard library again, so the error names what
    is wrong ("NaN is not valid JSON") and a lone surrogate in a string is still accepted as
    before. One difference stays: an integer beyond 64 bits arrives as a float (README)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(body, parse_constant=refuse)


class UntrustedUsage(ValueError):
    """An upstream reported a count that cannot be a token count: above MAX_REPORTED_TOKENS,
    negative, fractional or not a number. Its request is counted as estimated from its text."""

    def __init__(self, field: str, value):
        super().__init__(f"{field} = {repr(value)[:40]}")
        self.field, self.value = field, value

    def log(self, public_model: str) -> None:
        logger.warning("facade %s: the upstream reported %s, which is not a token count (at most %d); the "
                       "request is counted as estimated from its text", public_model, self, MAX_REPORTED_TOKENS)


def str_field(data, key: str) -> str | None:
    """A short label (a service tier, a speed) at `key`, or None: anything else is not a label."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if type(value) is str and 0 < len(value) <= 40 else None


def int_field(data, *path) -> int:
    """The token count at `path` in nested dicts: 0 if absent or null; UntrustedUsage if it is
    there but not a whole number from 0 to MAX_REPORTED_TOKENS."""
    for key in path:
        if not isinstance(data, dict):
            return 0
        data = data.get(key)
    if type(data) is int and 0 <= data <= MAX_REPORTED_TOKENS:
        return data
    if data is None:
        return 0
    if type(data) is float and data.is_integer() and 0 <= data <= MAX_REPORTED_TOKENS:
        return int(data)  # 12.0: a whole number written as a float
    raise UntrustedUsage(".".join(path), data)


class SSETooLong(ValueError):
    """A stream event (or line) longer than the reader's bound: the upstream is broken or hostile."""


class SSEReader:
    """Splits a byte stream into server-sent events, whatever the chunking. Each event comes back
    as (raw bytes including the blank line that ends it, event name or None, data string)."""

    def __init__(self, max_line_bytes: int | None = None):
        self._buffer = b""
        self._searched = 0  # the buffer's bytes already searched for an event's end
        self._line_start = 0  # where the buffer's last, unfinished line starts
        self._max = max_line_bytes or MAX_SSE_LINE_BYTES

    def feed(self, chunk: bytes) -> list[tuple[bytes, str | None, str]]:
        """The events `chunk` completes; SSETooLong once a line grows past the bound. Each search
        starts where the last one stopped, so bytes without a blank line cost linear time, never
        quadratic."""
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        start = max(self._searched - 1, 0)  # a "\n" at the old end may pair with one at the new start
        while (end := self._buffer.find(b"\n\n", start)) >= 0:
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            events.append(self._parse(raw))
            start = self._line_start = 0
        newline = self._buffer.rfind(b"\n", start)
        if newline >= 0:
            self._line_start = newline + 1
        self._searched = len(self._buffer)
        if self._searched - self._line_start > self._max:
            raise SSETooLong(f"a line of the stream passed {self._max} bytes")
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


@functools.lru_cache(maxsize=256)
def _model_keys(upstream: str, public: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """`"model":<upstream>` with and without a space after the colon, each with its renamed form
    (worked out once per pair of names: a whole answer and every event of a stream ask)."""
    old, new = json.dumps(upstream).encode(), json.dumps(public).encode()
    return (b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new)


def rename_model(raw: bytes, upstream: str, public: str) -> bytes:
    """Rewrite `"model":"<upstream>"` to the facade's public name without re-encoding the event."""
    if upstream == public:
        return raw
    for old, new in _model_keys(upstream, public):
        raw = raw.replace(old, new)
    return raw


# A JSON string or a bracket, to tell how deep a `"model":` key sits when there are several.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]', re.DOTALL)


def _depths(raw: bytes, positions: set[int]) -> dict[int, int]:
    """How many objects and arrays enclose each string starting at one of `positions`."""
    depth, found = 0, {}
    for match in _TOKEN.finditer(raw):
        char = raw[match.start()]
        if char == 0x22:  # a string
            if match.start() in positions:
                found[match.start()] = depth
                if len(found) == len(positions):
                    break
        elif char in b"{[":
            depth += 1
        else:
            depth -= 1
    return found


def rename_top_model(raw: bytes, upstream: str, public: str, depth: int) -> bytes:
    """Rewrite the one `"model":"<upstream>"` key `depth` objects deep (1: a whole answer, 2: the
    `response` or `message` object of an event) to the facade's public name, without re-encoding
    anything else (the upstream's bytes go out as they came). The same pair elsewhere (in
    `metadata`, say) stays; with a single occurrence, no scan is needed."""
    if upstream == public:
        return raw
    hits = []
    for pattern, renamed in _model_keys(upstream, public):
        start = raw.find(pattern)
        while start >= 0:
            hits.append((start, pattern, renamed))
            start = raw.find(pattern, start + len(pattern))
    if len(hits) > 1:
        depths = _depths(raw, {hit[0] for hit in hits})
        hits = [hit for hit in hits if depths.get(hit[0]) == depth]
    if not hits:
        return raw
    start, pattern, renamed = min(hits)
    return raw[:start] + renamed + raw[start + len(pattern):]


def renamed_body(raw: bytes, public_model: str) -> tuple[object, bytes]:
    """A whole JSON answer, parsed (to read its usage), and its bytes with the top-level `model`
    renamed to the facade's public name — not re-encoded (ValueError if it is not JSON)."""
    body = orjson.loads(raw)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        raw = rename_top_model(raw, body["model"], public_model, depth=1)
    return body, raw
