"""OpenAI wire format: chat completions, embeddings, models list, errors, usage."""

import json

from gateway.providers import (ReportedUsageStream, Usage, estimate_tokens, event_of, int_field, rename_model, renamed_body,
                                str_field, text_of, trusted)

NAME = "openai"

# The `type` the OpenAI SDK and its users expect for each status we answer ourselves.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


def error_body(status: int, message: str, *, type: str | None = None, code: str | None = None,
               param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type or ERROR_TYPES.get(status, "api_error"),
                                 "param": param, "code": code}}).encode()


def auth_headers(credential: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"} if credential else {}


def prepare_request(body: dict, upstream_model: str, stream: bool) -> tuple[dict, bool]:
    """The body to send upstream, and whether the caller asked for the usage chunk itself."""
    outgoing = {**body, "model": upstream_model}
    caller_wants_usage = False
    if stream:
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        caller_wants_usage = options.get("include_usage") is True
        outgoing["stream_options"] = {**options, "include_usage": True}
    return outgoing, caller_wants_usage


def prompt_text(body: dict) -> str:
    return text_of(body.get("messages", "")) + text_of(body.get("input", "")) + text_of(body.get("prompt", ""))


def usage_from(usage) -> Usage | None:
    """Usage from an OpenAI `usage` object; None when the upstream reported none. Chat Completions
    reports no retention split: its cache writes are the default retention's."""
    if not isinstance(usage, dict):
        return None
    prompt = int_field(usage, "prompt_tokens")
    cached = min(int_field(usage, "prompt_tokens_details", "cached_tokens"), prompt)
    writes = min(int_field(usage, "prompt_tokens_details", "cache_write_tokens"), prompt - cached)
    completion = int_field(usage, "completion_tokens")
    reasoning = min(int_field(usage, "completion_tokens_details", "reasoning_tokens"), completion)
    return Usage(input_tokens=prompt, cached_input_tokens=cached, cache_write_tokens=writes, output_tokens=completion,
                 reasoning_tokens=reasoning)


def completion_text(body: dict) -> str:
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    return "".join(text_of((c.get("message") or {}).get("content", "")) for c in choices if isinstance(c, dict))


def finish_response(raw: bytes, public_model: str, request_body: dict) -> tuple[bytes, Usage]:
    """Rename the model in a whole (non-streamed) response and read its usage, estimated if absent."""
    body, raw = renamed_body(raw, public_model)
    usage = trusted(usage_from, body.get("usage") if isinstance(body, dict) else None, public_model)
    if usage is None:
        usage = Usage(input_tokens=estimate_tokens(prompt_text(request_body)),
                      output_tokens=estimate_tokens(completion_text(body) if isinstance(body, dict) else ""),
                      estimated=True)
    usage.service_tier = str_field(body, "service_tier")  # the tier that served it, not the one asked for
    return raw, usage


class StreamState(ReportedUsageStream):
    """Follows an OpenAI chat stream event by event: usage, text so far, errors, the end."""

    prompt_text = staticmethod(prompt_text)

    def process(self, raw: bytes, name: str | None, data: str) -> bytes | None:
        """The bytes to send the caller for this event (None to hide it)."""
        if data.strip() == "[DONE]":
            self.done = True
            return raw
        event = event_of(data)
        if event is None:
            return raw
        if "error" in event:
            self.error = True
            return raw
        self.service_tier = str_field(event, "service_tier") or self.service_tier
        reports = isinstance(event.get("usage"), dict)
        if reports:
            self.report(usage_from, event["usage"])
        for choice in event.get("choices") or []:
            if isinstance(choice, dict):
                self.text.append(text_of((choice.get("delta") or {}).get("content", "")))
        if reports and not event.get("choices") and not self.caller_wants_usage:
            return None  # the usage chunk we asked for on the caller's behalf
        if isinstance(event.get("model"), str):
            raw = rename_model(raw, event["model"], self.public_model)
        return raw


def models_list(facades, created: int) -> dict:
    return {"object": "list", "data": [{"id": f.name, "object": "model", "created": created, "owned_by": "codevector"}
                                       for f in facades]}
