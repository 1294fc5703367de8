"""Anthropic wire format: messages, models list, errors, usage.

Input tokens here are `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`;
cache reads are cached input and cache creations are cache writes, of which
`cache_creation.ephemeral_1h_input_tokens` were written for an hour (the extended retention).
Billed web searches are `server_tool_use.web_search_requests` (web fetches are billed as tokens);
reasoning is `output_tokens_details.thinking_tokens`; `service_tier` and `speed` select the price
variant. In a stream, `message_start` carries the first counts and `message_delta` cumulative ones
(repeating input and cache counts in the current API): the latest value of each field wins, the
two are never added. `message_delta` carries no `cache_creation`, `service_tier` or `speed`, so
`message_start`'s stand.
"""

import json
from datetime import UTC, datetime

from gateway.providers import (UntrustedUsage, Usage, estimate_tokens, event_of, int_field, rename_model, renamed_body,
                                str_field, text_of, trusted)

NAME = "anthropic"
VERSION = "2023-06-01"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
USAGE_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")
# Nested counts, under the name they are kept by: (key, path in `usage`).
NESTED_FIELDS = (("cache_write_1h", ("cache_creation", "ephemeral_1h_input_tokens")),
                 ("web_search_requests", ("server_tool_use", "web_search_requests")),
                 ("thinking_tokens", ("output_tokens_details", "thinking_tokens")))
LABELS = ("service_tier", "speed")


def error_body(status: int, message: str, *, type: str | None = None, **_) -> bytes:
    return json.dumps({"type": "error", "error": {"type": type or ERROR_TYPES.get(status, "api_error"),
                                                  "message": message}}).encode()


def auth_headers(credential: str | None) -> dict[str, str]:
    return {"x-api-key": credential} if credential else {}


def prepare_request(body: dict, upstream_model: str, stream: bool) -> tuple[dict, bool]:
    return {**body, "model": upstream_model}, False


def prompt_text(body: dict) -> str:
    return text_of(body.get("system", "")) + text_of(body.get("messages", ""))


def _usage(fields: dict, estimated: bool = False) -> Usage:
    cached = fields.get("cache_read_input_tokens", 0)
    writes = fields.get("cache_creation_input_tokens", 0)
    output = fields.get("output_tokens", 0)
    return Usage(input_tokens=fields.get("input_tokens", 0) + cached + writes, cached_input_tokens=cached,
                 cache_write_tokens=writes, cache_write_extended_tokens=min(fields.get("cache_write_1h", 0), writes),
                 output_tokens=output, reasoning_tokens=min(fields.get("thinking_tokens", 0), output),
                 web_search_calls=fields.get("web_search_requests", 0), estimated=estimated,
                 service_tier=fields.get("service_tier"), speed=fields.get("speed"))


def _fields(usage) -> dict:
    """The counts (and labels) a `usage` object reports: only those present, so a later event's
    values replace an earlier one's field by field."""
    if not isinstance(usage, dict):
        return {}
    fields = {name: int_field(usage, name) for name in USAGE_FIELDS if name in usage}
    for name, (parent, child) in NESTED_FIELDS:
        if isinstance(usage.get(parent), dict) and child in usage[parent]:
            fields[name] = int_field(usage, parent, child)
    for name in LABELS:
        if (label := str_field(usage, name)) is not None:
            fields[name] = label
    return fields


def finish_response(raw: bytes, public_model: str, request_body: dict) -> tuple[bytes, Usage]:
    body, raw = renamed_body(raw, public_model)
    fields = trusted(_fields, body.get("usage") if isinstance(body, dict) else None, public_model)
    if fields and any(name in fields for name in USAGE_FIELDS):
        return raw, _usage(fields)
    output = text_of(body.get("content", "")) if isinstance(body, dict) else ""
    return raw, Usage(input_tokens=estimate_tokens(prompt_text(request_body)), output_tokens=estimate_tokens(output),
                      estimated=True)


class StreamState:
    def __init__(self, public_model: str, caller_wants_usage: bool, request_body: dict):
        self.public_model = public_model
        self.request_body = request_body
        self.fields: dict = {}
        self.untrusted = False  # a count not believed: the stream is estimated from its text
        self.text = []
        self.error = False
        self.done = False

    def process(self, raw: bytes, name: str | None, data: str) -> bytes | None:
        event = event_of(data)
        if event is None:
            return raw
        kind = event.get("type") or name
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            self._take(message.get("usage"))
            if isinstance(message.get("model"), str):
                raw = rename_model(raw, message["model"], self.public_model)
        elif kind == "message_delta":
            self._take(event.get("usage"))  # cumulative: the latest value wins
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            self.text.append(delta.get("text", "") if isinstance(delta.get("text"), str) else "")
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = True
        return raw

    def _take(self, usage) -> None:
        try:
            fields = _fields(usage)
        except UntrustedUsage as exc:
            if not self.untrusted:
                exc.log(self.public_model)
            self.untrusted = True
            return
        self.fields.update(fields)

    def usage(self) -> Usage:
        if self.untrusted:  # none of the upstream's counts: the prompt and the text streamed
            return Usage(input_tokens=estimate_tokens(prompt_text(self.request_body)),
                         output_tokens=estimate_tokens("".join(self.text)), estimated=True)
        if "output_tokens" in self.fields and "input_tokens" in self.fields and not self.error and self.done:
            return _usage(self.fields)
        # Cut short (a disconnect, an error event): the counts known so far, estimated where missing.
        fields = dict(self.fields)
        if "input_tokens" not in fields:
            fields["input_tokens"] = estimate_tokens(prompt_text(self.request_body))
        fields["output_tokens"] = max(fields.get("output_tokens", 0), estimate_tokens("".join(self.text)))
        return _usage(fields, estimated=True)


def models_list(facades, created: int) -> dict:
    created_at = datetime.fromtimestamp(created, tz=UTC).isoformat().replace("+00:00", "Z")
    data = [{"type": "model", "id": f.name, "display_name": f.name, "created_at": created_at} for f in facades]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
